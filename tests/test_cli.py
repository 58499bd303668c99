"""The ``attack`` and ``audit`` commands end to end, and one-line errors for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_error, run_ok
from PIL import Image

from clipedit import cli
from clipedit.models import save_state_dict


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


# --- attack ---

def test_attack_writes_attacked_blank_and_mask(capsys, tmp_path, photo_files):
    out = tmp_path / "out"
    stdout = run_ok(capsys, "attack", photo_files["cat"], photo_files["coffee"], "--text", "iPod",
                    "--text", "big mug", "--out", out, "--kind", "sticker", "--rotation", "10", "--seed", "3")
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(f"{stem}_{word}_{part}.png" for stem in ("cat", "coffee") for word in ("iPod", "big-mug")
                      for part in ("attacked", "blank", "mask"))
    assert names == expected
    assert sorted(Path(line).name for line in stdout.split()) == expected
    clean = np.asarray(Image.open(photo_files["cat"]).convert("RGB")).astype(int)
    attacked = np.asarray(Image.open(out / "cat_iPod_attacked.png")).astype(int)
    blank = np.asarray(Image.open(out / "cat_iPod_blank.png")).astype(int)
    mask = np.asarray(Image.open(out / "cat_iPod_mask.png"))
    assert attacked.shape == clean.shape and mask.shape == clean.shape[:2]
    assert set(np.unique(mask)) == {0, 255}
    label = mask > 0
    assert (np.abs(attacked - clean).max(axis=2) > 0)[~label].sum() == 0  # only the label changed
    assert (attacked != blank).any(axis=2)[label].any()  # the word is written
    assert not (attacked != blank).any(axis=2)[~label].any()


def test_attack_repeats_with_index_and_seed(capsys, tmp_path, photo_files):
    for out in ("a", "b"):
        run_ok(capsys, "attack", photo_files["rocket"], "--text", "cat", "--n", "2", "--out", tmp_path / out)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        f"rocket_cat_{k}_{part}.png" for k in (0, 1) for part in ("attacked", "blank", "mask")]
    first = (tmp_path / "a" / "rocket_cat_0_mask.png").read_bytes()
    assert first == (tmp_path / "b" / "rocket_cat_0_mask.png").read_bytes()  # same seed, same render
    assert first != (tmp_path / "a" / "rocket_cat_1_mask.png").read_bytes()  # another placement


def test_attack_bad_inputs(capsys, tmp_path, photo_files, corrupt_jpg):
    out = tmp_path / "out"
    cat = photo_files["cat"]
    assert "image not found" in run_error(capsys, "attack", tmp_path / "nope.jpg", "--text", "x", "--out", out)
    assert "broken.jpg" in run_error(capsys, "attack", cat, corrupt_jpg, "--text", "x", "--out", out)
    assert "does not fit" in run_error(capsys, "attack", cat, "--text", "iPod", "--font-size", "400",
                                       "--out", out)
    assert "--font file not found" in run_error(capsys, "attack", cat, "--text", "x", "--font", tmp_path / "no.ttf",
                                           "--out", out)
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / cat.name
    twin.write_bytes(cat.read_bytes())
    assert "share the file name 'cat'" in run_error(capsys, "attack", cat, twin, "--text", "x", "--out", out)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "a_file is a file" in run_error(capsys, "attack", cat, "--text", "x", "--out", blocker / "sub")
    assert not out.exists(), "a failed run writes nothing"


def test_attack_usage_error_exits_2(capsys, photo_files):
    with pytest.raises(SystemExit) as info:
        cli.main(["attack", str(photo_files["cat"]), "--out", "x"])  # no --text
    assert info.value.code == 2


# --- audit ---

def test_audit_image_folder(capsys, tmp_path, image_folder):
    out = tmp_path / "res" / "audit.json"
    stdout = run_ok(capsys, "audit", "--model", "tiny-vit", "--data", image_folder, "--out", out,
                    "--batch-size", "5", "--seed", "2")
    rows = {line[:16].strip(): line.split()[-2:] for line in stdout.splitlines()[2:6]}
    assert list(rows) == ["clean", "blank note", "text note", "attack success"]
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert (record["model"], record["pretrained"], record["task"]) == ("tiny-vit", "none", "typographic_audit")
    assert record["classnames"] == ["cat", "coffee", "rocket"] and record["words"] == ["cat", "coffee", "rocket"]
    assert record["n"] == m["n"] == 12 and record["n_photos"] == 6  # 6 photos x the 2 other class names
    assert m["n_text"] == m["n_word_in_classes"] == 12
    assert m["n_clean"] == 6 and rows["clean"] == [f"{100 * m['clean_acc']:.1f}%", "6"]  # each photo once
    assert rows["attack success"] == [f"{100 * m['attack_success_rate']:.1f}%", "12"]
    assert sum(v["n"] for v in record["by_word"].values()) == 12  # breakdowns beside the flat metrics
    assert sum(v["n_text"] for v in record["by_class"].values()) == 12
    assert "predictions" not in m and "predictions" not in record
    assert all(v is None or isinstance(v, (int, float)) for v in m.values())
    assert m["acc1"] is not None and out.with_suffix(".png").is_file()


def test_audit_photos_with_labels_and_words(capsys, tmp_path, photo_files):
    out = tmp_path / "r.json"
    run_ok(capsys, "audit", "--model", "tiny-rn", "--photos", photo_files["cat"], photo_files["rocket"],
           "--labels", "cat", "rocket", "--classes", "cat,coffee,rocket", "--words", "coffee,ipod",
           "--n", "3", "--out", out)
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert record["dataset"] == "photos" and record["n"] == 6 and record["n_photos"] == 2
    assert m["n_text"] == 6
    assert m["n_word_in_classes"] == record["by_word"]["coffee"]["n"] == 3  # every other render writes "coffee"
    assert record["by_word"]["ipod"]["attack_success_rate"] is None


def test_audit_templates_and_classes_files(capsys, tmp_path, image_folder):
    (tmp_path / "classes.txt").write_text("# classes\nrocket\ncoffee\ncat\nmug\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n\na {} on a table.\n")
    out = tmp_path / "r.json"
    run_ok(capsys, "audit", "--model", "tiny-vit", "--data", image_folder, "--classes-file",
           tmp_path / "classes.txt", "--templates-file", tmp_path / "templates.txt", "--out", out)
    record = json.loads(out.read_text())
    assert record["classnames"] == ["rocket", "coffee", "cat", "mug"] and record["templates"] == 2
    assert record["n"] == 6 * 3


@pytest.fixture
def mini_dir(tmp_path, monkeypatch) -> Path:
    """A stand-in for assets/mini: the tiny-vit architecture, random weights, the mini world's classes."""
    import open_clip

    from clipedit.mini.world import CLASSNAMES, TEMPLATES
    from clipedit.models.registry import config_files

    model_cfg = json.loads(config_files()["tiny-vit"].read_text())
    folder = tmp_path / "mini"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_cfg": model_cfg, "classnames": list(CLASSNAMES), "templates": list(TEMPLATES),
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    torch.manual_seed(0)
    save_state_dict(folder / "model.safetensors", open_clip.model.CLIP(**model_cfg).state_dict())
    monkeypatch.setenv("CLIPEDIT_MINI_DIR", str(folder))
    return folder


def test_audit_mini_uses_its_held_out_world(capsys, tmp_path, mini_dir):
    from clipedit.mini.world import CLASSNAMES, TEMPLATES

    out = tmp_path / "mini.json"
    stdout = run_ok(capsys, "audit", "--model", "mini", "--n", "12", "--seed", "1", "--out", out)
    record = json.loads(out.read_text())
    assert record["dataset"] == "mini-world" and record["pretrained"] == "bundled"
    assert record["classnames"] == list(CLASSNAMES) and record["templates"] == len(TEMPLATES)
    assert record["n"] == 12 and record["metrics"]["n_text"] == 12 == record["metrics"]["n_word_in_classes"]
    assert "mini (bundled)" in stdout
    assert set(record["seconds"]) == {"load", "evaluate", "total"} and record["seconds"]["evaluate"] > 0


def test_audit_bad_inputs(capsys, tmp_path, image_folder, photo_files, corrupt_jpg):
    out = tmp_path / "res.json"
    cat = photo_files["cat"]
    assert "--data DIR or --photos" in run_error(capsys, "audit", "--model", "tiny-vit")
    assert "the class list is empty" in run_error(capsys, "audit", "--model", "tiny-vit", "--data", image_folder,
                                                  "--classes", " , ", "--out", out)
    assert "the class list is empty" in run_error(capsys, "audit", "--model", "tiny-vit", "--data", image_folder,
                                                  "--classes", "")
    assert "image not found" in run_error(capsys, "audit", "--model", "tiny-vit", "--photos", tmp_path / "x.jpg",
                                          "--labels", "cat")
    assert "broken.jpg" in run_error(capsys, "audit", "--model", "tiny-vit", "--photos", cat, corrupt_jpg,
                                     "--labels", "cat", "mug")
    assert "2 photos but 1 labels" in run_error(capsys, "audit", "--model", "tiny-vit", "--photos", cat, cat,
                                                "--labels", "cat")
    assert "data directory not found" in run_error(capsys, "audit", "--model", "tiny-vit", "--data",
                                                   tmp_path / "nodata")
    assert "lacks the data's classes: rocket" in run_error(capsys, "audit", "--model", "tiny-vit", "--data",
                                                           image_folder, "--classes", "cat,coffee")
    assert "unknown model 'nosuchmodel'" in run_error(capsys, "audit", "--model", "nosuchmodel", "--data",
                                                      image_folder)
    assert "unknown pretrained tag 'nonexistent'" in run_error(
        capsys, "audit", "--model", "ViT-B-32:nonexistent", "--data", image_folder)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert "a_file is a file" in run_error(capsys, "audit", "--model", "tiny-vit", "--data", image_folder,
                                           "--out", blocker / "sub" / "r.json")
    assert not out.exists(), "a failed run writes nothing"


def test_offline_download_error_points_to_checkpoint(capsys, monkeypatch, image_folder, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    line = run_error(capsys, "audit", "--model", "ViT-B-32:openai", "--data", image_folder,
                     "--out", tmp_path / "r.json")
    assert "could not fetch" in line and "--checkpoint" in line
    assert not (tmp_path / "r.json").exists()


# --- the group: version, model list ---


def test_version_and_models_list(capsys):
    from clipedit.eval.results import clipedit_version

    assert run_ok(capsys, "--version").strip() == f"clipedit {clipedit_version()}"
    listed = run_ok(capsys, "models").split()
    assert {"mini", "mini-vit", "efficientnet-lite0", "timm/NAME", "ViT-B-32", "RN50"} <= set(listed)
    assert "openai," in listed or "[openai," in listed or any("openai" in w for w in listed)


def test_unknown_model_error_points_to_the_list(capsys, tmp_path):
    line = run_error(capsys, "audit", "--model", "nosuchmodel", "--out", tmp_path / "a.json")
    known = line.split("known: ", 1)[1].split(";")[0].split(", ")
    assert {"efficientnet-lite0", "mini", "mini-vit"} <= set(known) and "`clipedit models`" in line


def test_audit_defaults_to_mini_like_the_other_commands():
    from clipedit.commands.audit import audit
    from clipedit.commands.defend import defend_cmd

    default = lambda cmd: next(p.default for p in cmd.params if p.name == "model_spec")  # noqa: E731
    assert default(audit) == default(defend_cmd) == "mini"


def test_attack_help_shows_no_empty_range(capsys):
    code, out, _ = run_cli(["attack", "--help"], capsys)
    assert code == 0 and "--rotation" in out and "None" not in out


@pytest.mark.parametrize("args, message", [
    (["audit", "--font", "no-such.ttf"], "--font file not found: no-such.ttf"),
    (["audit", "--edit", "no-such.safetensors"], "edit file not found"),
    (["defend", "--checkpoint", "no-such.safetensors", "--no-eval"], "checkpoint not found"),
    (["stats", "--model", "mini", "--reference", "no/such/folder"], "reference folder not found"),
    (["compare", "--methods", "bogus"], "unknown method 'bogus'"),
    (["compare", "--seeds", ","], "--seeds is empty"),
])
def test_refusals_come_before_any_model_loads(monkeypatch, tmp_path, capsys, args, message):
    from clipedit.commands.options import ModelOptions

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ModelOptions, "load", lambda self: pytest.fail("the model was loaded before the check"))
    assert message in run_error(capsys, *args)
