"""`clipedit defend / apply / revert` end to end on a tiny random-init CLIP, and their bad input."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file
from test_benchmarks import triples_dir  # noqa: F401  (fixture)

from clipedit.core import load_edit
from clipedit.models import save_state_dict

LAYER = "visual.transformer.resblocks.1.mlp.c_proj"


@pytest.fixture
def base_ckpt(tiny_vit, tmp_path):
    return save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())


def defend_args(base, out, *extra):
    return ["defend", "--model", "tiny-vit", "--checkpoint", str(base), "--renders", "3", "--rank", "2",
            "--layer", LAYER, "--no-eval", "--out", str(out), *extra]


@pytest.mark.slow
def test_defend_then_revert_and_apply_are_bit_exact(base_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run_cli(defend_args(base_ckpt, out, "--text", "ipod,mug"), capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"edit.safetensors", "model.safetensors", "results.json"}
    edit = load_edit(out / "edit.safetensors")
    assert edit.layer == LAYER and edit.rank == 2 and edit.meta["words"] == ["ipod", "mug"]
    record = json.loads((out / "results.json").read_text())
    assert record["task"] == "typographic_defense" and record["model"] == "tiny-vit"

    code, _, err = run_cli(["revert", str(out / "edit.safetensors"), "--model", "tiny-vit", "--checkpoint",
                        str(out / "model.safetensors"), "--out", str(tmp_path / "restored.safetensors")], capsys)
    assert code == 0, err
    base, restored = load_file(str(base_ckpt)), load_file(str(tmp_path / "restored.safetensors"))
    assert all(np.array_equal(base[k].numpy(), restored[k].numpy()) for k in base)
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert sha(tmp_path / "restored.safetensors") == sha(base_ckpt)  # byte-identical, metadata included

    code, _, err = run_cli(["apply", str(out / "edit.safetensors"), "--model", "tiny-vit", "--checkpoint",
                        str(base_ckpt), "--out", str(tmp_path / "applied.safetensors")], capsys)
    assert code == 0, err
    edited, applied = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "applied.safetensors"))
    assert np.array_equal(edited[f"{LAYER}.weight"].numpy(), applied[f"{LAYER}.weight"].numpy())
    assert not np.array_equal(edited[f"{LAYER}.weight"].numpy(), base[f"{LAYER}.weight"].numpy())


def test_finetune_baseline_writes_no_edit_file(base_ckpt, tmp_path, capsys):
    out = tmp_path / "ft"
    code, _, err = run_cli(defend_args(base_ckpt, out, "--method", "finetune-local", "--steps", "3"), capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "results.json"}


@pytest.mark.parametrize("extra, message", [
    (["--layer", "visual.transformer.resblocks.7.mlp.c_proj"], "no module named"),
    (["--layer", "visual.ln_post"], "Linear or Conv2d"),
])
def test_bad_layer_is_one_line_and_writes_nothing(base_ckpt, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code, _, err = run_cli(defend_args(base_ckpt, out, *extra), capsys)
    assert code == 1
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _photo_pair(tmp_path, blank_size=(96, 96), mask_box=(30, 30, 60, 50)):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    attacked = photo.copy()
    x0, y0, x1, y1 = mask_box
    attacked[y0:y1, x0:x1] = 0
    mask = np.zeros((96, 96), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    paths = {k: tmp_path / f"{k}.png" for k in ("attacked", "blank", "mask")}
    Image.fromarray(attacked).save(paths["attacked"])
    Image.fromarray(photo).resize(blank_size).save(paths["blank"])
    Image.fromarray(mask).save(paths["mask"])
    return paths


def test_real_photo_exemplar(base_ckpt, tmp_path, capsys):
    p = _photo_pair(tmp_path)
    code, stdout, err = run_cli(defend_args(base_ckpt, tmp_path / "run", "--exemplar", str(p["attacked"]), "--blank",
                                        str(p["blank"]), "--mask", str(p["mask"])), capsys)
    assert code == 0, err
    edit = load_edit(tmp_path / "run" / "edit.safetensors")
    assert edit.meta["n_exemplars"] == 1 and edit.meta["n_keys"] > 0  # the one photo pair, not rendered words
    assert f"edit of {LAYER}" in stdout


@pytest.mark.parametrize("kind, message", [("size", "differ in size"), ("empty", "mask is empty")])
def test_bad_photo_exemplar(base_ckpt, tmp_path, capsys, kind, message):
    p = _photo_pair(tmp_path, blank_size=(80, 96)) if kind == "size" else _photo_pair(tmp_path, mask_box=(0, 0, 0, 0))
    code, _, err = run_cli(defend_args(base_ckpt, tmp_path / "run", "--exemplar", str(p["attacked"]), "--blank",
                                   str(p["blank"]), "--mask", str(p["mask"])), capsys)
    assert code == 1 and message in err and "Traceback" not in err


def test_edit_for_another_model_is_refused(base_ckpt, tiny_rn, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(defend_args(base_ckpt, out), capsys)[0] == 0
    rn_ckpt = save_state_dict(tmp_path / "rn.safetensors", tiny_rn.model.state_dict())
    code, _, err = run_cli(["apply", str(out / "edit.safetensors"), "--model", "tiny-rn", "--checkpoint", str(rn_ckpt),
                        "--out", str(tmp_path / "x.safetensors")], capsys)
    assert code == 1 and "tiny-vit" in err and not (tmp_path / "x.safetensors").exists()


def test_output_never_overwrites_the_source_checkpoint(base_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(defend_args(base_ckpt, out), capsys)[0] == 0
    before = base_ckpt.read_bytes()
    code, _, err = run_cli(["apply", str(out / "edit.safetensors"), "--model", "tiny-vit", "--checkpoint",
                        str(base_ckpt), "--out", str(base_ckpt)], capsys)
    assert code == 1 and "--out must differ" in err
    assert base_ckpt.read_bytes() == before


@pytest.mark.slow
def test_results_record_the_seconds_of_each_stage(base_ckpt, tmp_path, capsys, triples_dir):  # noqa: F811
    out = tmp_path / "run"
    args = [a for a in defend_args(base_ckpt, out) if a != "--no-eval"]
    code, _, err = run_cli([*args, "--data", f"triples:{triples_dir}"], capsys)
    assert code == 0, err
    seconds = json.loads((out / "results.json").read_text())["seconds"]
    assert list(seconds) == ["load", "evaluation_sets", "evaluate_before", "defend", "evaluate_after", "total"]
    assert all(v >= 0 for v in seconds.values())
    assert seconds["total"] >= sum(v for k, v in seconds.items() if k != "total") - 0.05
    # the printed seconds are the recorded ones; the writing after the record is said apart
    printed = next(line for line in err.splitlines() if line.startswith("seconds: "))
    assert printed.startswith("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + " (then ")
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values())  # no "figures": "scenes"
    for key in ("acc1", "mean_per_class_recall", "after_acc1", "after_mean_per_class_recall", "n_clean"):
        assert key in metrics


def test_rank_clamp_names_the_limit_that_applied(caplog):
    from clipedit.core.subspace import clamp_rank

    with caplog.at_level("WARNING"):
        assert clamp_rank(1000, 423, 128) == 128
        assert clamp_rank(64, 20, 128) == 20
        assert clamp_rank(8, 20, 128) == 8
    assert [r.getMessage() for r in caplog.records] == ["rank 1000 clamped to 128 (the key dimension is 128)",
                                                      "rank 64 clamped to 20 (only 20 exemplar keys)"]


@pytest.mark.parametrize("extra, message", [
    (["--layer", "auto", "--text", "*"], "do not go with --text '*'"),
    (["--layer", "auto", "--method", "paint"], "go with --method edit"),
    (["--n-val", "50"], "--n-val is the validation size of --layer/--rank auto"),
    (["--exemplar", "x.png"], "needs all of --exemplar, --blank and --mask"),
    (["--data", "no/such/folder"], "not found"),
    (["--reference", "no/such/folder"], "--reference folder not found"),
])
def test_refusals_come_before_the_model_loads(monkeypatch, tmp_path, capsys, extra, message):
    from clipedit.commands.options import ModelOptions

    monkeypatch.setattr(ModelOptions, "load", lambda self: pytest.fail("the model was loaded before the check"))
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save("x.png")  # an exemplar that exists, given without its blank and mask
    code, _, err = run_cli(["defend", "--out", str(tmp_path / "run"), *extra], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
