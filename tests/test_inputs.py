"""Every input checked where it enters: one schema per settings class (CLI and Python alike), input files
that are regular files of bounded size, model specs that mean what they say, numbers within bounds, and
messages that name the real problem. Each test reproduces a defect a hostile user found."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import typing
from pathlib import Path

import pytest
import torch
from conftest import VIT_SITE, defend_args, run_cli, run_error, run_ok
from PIL import Image

import clipedit
from clipedit.attacks import AttackError
from clipedit.core import RewriteHParams, apply_edit, load_edit
from clipedit.defenses.typographic import text_exemplars
from clipedit.errors import ClipeditError, ModelLoadError, SettingsError, SiteError


def refusal(capsys, *args) -> str:
    """Run ``clipedit ARGS``; expect a refusal (exit 1, or click's 2 for a usage error) whose last line is
    the one ``Error:`` line, with no traceback; return that line."""
    code, _, err = run_cli(args, capsys)
    assert code in (1, 2), err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: "), err
    return last


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of waiting forever) when the block blocks, e.g. on a FIFO with no writer."""
    def timeout(signum, frame):
        raise AssertionError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


# -- settings schemas: one per settings class, for CLI and Python alike ------------------------------------
@pytest.mark.parametrize("method, hparams, message", [
    ("finetune-local", {"steps": -5}, "steps must be >= 1"),
    ("finetune-global", {"steps": 0}, "steps must be >= 1"),
    ("paint", {"epochs": 0}, "epochs must be >= 1"),
    ("dyslexify", {"max_heads": -1}, "max_heads must be >= 1"),
    ("finetune-local", {"steps": "x"}, "steps must be >= 1 and <= 1000000 (a whole number), got 'x'"),
    ("paint", {"alphas": "0.5"}, "alphas must be a non-empty list of finite numbers"),
    ("paint", {"batch_size": 0}, "batch_size must be >= 1"),
    ("dyslexify", {"n_score": 0}, "n_score must be >= 1"),
    ("defense-prefix", {"lrs": [0.1, "x"]}, "lrs must be a non-empty list of finite numbers, each > 0"),
    ("head-ablation-weights", {"tolerance": 2}, "tolerance must be >= 0 and <= 1"),
    ("edit", {"rank": "x"}, "rank must be >= 1"),
    ("edit", {"bogus": 1}, "unknown setting(s) of RewriteHParams: bogus"),
    ("paint", [1], "settings of paint must be a PaintHParams or a dict, got list"),
    ("edit", [1], "settings of edit must be a RewriteHParams or a dict, got list"),
])
def test_defend_refuses_hparams_that_train_nothing_or_are_mistyped(tmp_path, capsys, method, hparams, message):
    out = tmp_path / "run"
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--method", method, "--renders", "2", "--no-eval",
                     "--hparams", write_json(tmp_path / "h.json", hparams), "--out", out)
    assert message in line
    assert not out.exists()


def test_a_flags_default_does_not_hide_the_hparams_file(tmp_path, capsys):
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--no-eval", "--renders", "2", "--out", tmp_path / "o",
                     "--hparams", write_json(tmp_path / "h.json", {"solver": "evil"}))
    assert "solver must be one of 'closed-form', 'optimize'" in line


def test_non_finite_numbers_in_hparams_json_are_refused(tmp_path, capsys):
    path = tmp_path / "h.json"
    for text in ('{"lr": NaN}', '{"eps": Infinity}'):
        path.write_text(text)
        line = run_error(capsys, "defend", "--model", "tiny-vit", "--method", "dyslexify", "--no-eval",
                         "--hparams", path, "--out", tmp_path / "run")
        assert "is not a JSON number" in line


@pytest.mark.parametrize("cls, values, message", [
    ("FinetuneHParams", {"lr": math.nan}, "lr must be > 0 (a finite number), got nan"),
    ("DyslexifyHParams", {"eps": math.nan}, "eps must be >= 0 (a finite number), got nan"),
    ("PaintHParams", {"alphas": (0.5, 1.5)}, "each >= 0 and <= 1"),
    ("PaintHParams", {"supported_classes": "abc"}, "supported_classes must be a non-empty list of strings"),
    ("DefensePrefixHParams", {"seed": -1}, "seed must be >= 0"),
    ("HeadAblationHParams", {"max_heads": True}, "max_heads must be >= 1"),
])
def test_every_settings_class_checks_its_fields_in_python(cls, values, message):
    from clipedit.methods import defense_prefix, dyslexify, finetune, head_ablation, paint

    modules = (defense_prefix, dyslexify, finetune, head_ablation, paint)
    settings = next(getattr(m, cls) for m in modules if hasattr(m, cls))
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(**values)
    with pytest.raises(SettingsError):
        settings.from_dict(values)


def test_every_number_of_every_method_has_a_declared_bound():
    from clipedit.methods.registry import METHODS

    for spec in METHODS.values():
        cls = spec.hparams_cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            text = str(hints[f.name])
            if any(t in text for t in ("int", "float")) and f.name not in cls.BOUNDS:
                raise AssertionError(f"{cls.__name__}.{f.name} has no declared bound")
        default = cls()  # the defaults pass their own schema
        assert cls.from_dict(default.to_dict()) == default


def test_deeply_nested_hparams_is_one_line(tmp_path, capsys):
    path = tmp_path / "h.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--no-eval", "--hparams", path,
                     "--out", tmp_path / "run")
    assert "nested deeper than 64 levels" in line


@pytest.mark.parametrize("overrides, message", [
    ({"renders": "x"}, "renders must be >= 1"), ({"renders": -1}, "renders must be >= 1"),
    ({"renders": 0}, "renders must be >= 1"), ({"seed": "x"}, "seed must be >= 0"),
    ({"mask": "evil"}, "mask must be one of 'text', 'label'"),
    ({"sites": "abc"}, "sites must be a non-empty list of strings"),
    ({"n_reference": 0}, "n_reference must be >= 1"), ({"n_reference": -5}, "n_reference must be >= 1"),
    ({"reference": 5}, "reference must be a path"),
    ({"hparams": {"rank": 0}}, "rank must be >= 1"),
])
def test_resolve_config_and_defend_refuse_invalid_values(tiny_vit, overrides, message):
    from clipedit.settings.resolve import resolve_config

    for call in (lambda: resolve_config(tiny_vit, overrides), lambda: clipedit.defend(tiny_vit, "ipod", overrides)):
        with pytest.raises(ClipeditError, match=message):
            call()


def test_nested_settings_take_a_dict_checked_by_their_own_schema(tiny_vit):
    from clipedit.settings.resolve import resolve_config

    assert resolve_config(tiny_vit, {"method": "finetune-local", "hparams": {"steps": 3}}).hparams.steps == 3
    with pytest.raises(SettingsError, match="FinetuneHParams: steps must be >= 1"):
        resolve_config(tiny_vit, {"method": "finetune-local", "hparams": {"steps": 0}})
    with pytest.raises(SettingsError, match="FinetuneHParams: steps must be >= 1"):
        resolve_config(tiny_vit, {"method": "finetune-local", "steps": 0})  # flat, as the CLI gives it


def test_a_rewrite_layer_and_other_sites_are_refused_not_dropped(tiny_vit):
    from clipedit.settings.config import DefenseConfig
    from clipedit.settings.resolve import resolve_config

    a, b = "visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.mlp.c_proj"
    with pytest.raises(SettingsError, match="is not among the sites"):
        resolve_config(tiny_vit, DefenseConfig(hparams=RewriteHParams(layer=a), sites=(b,)))
    agreed = resolve_config(tiny_vit, DefenseConfig(hparams=RewriteHParams(layer=a), sites=(a,)))
    assert agreed.sites == (a,)
    assert resolve_config(tiny_vit, agreed).sites == (a,)  # a resolved config resolves to itself


def test_the_rewrites_dict_settings_name_its_layer(tiny_vit):
    from clipedit.core.nethook import get_module
    from clipedit.settings.config import DefenseConfig
    from clipedit.settings.resolve import resolve_config

    layer = "visual.transformer.resblocks.0.mlp.c_proj"
    get_module(tiny_vit.model, layer)
    config = resolve_config(tiny_vit, DefenseConfig(method="edit", hparams={"layer": layer, "rank": 2}))
    assert config.sites == (layer,) and config.hparams.rank == 2
    with pytest.raises(SiteError, match="no module named 'nope.layer'"):
        resolve_config(tiny_vit, DefenseConfig(method="edit", hparams={"layer": "nope.layer"}))


def test_compare_refuses_a_bad_edit_layer_as_defend_does(tmp_path, capsys):
    defend_line = run_error(capsys, "defend", "--model", "mini-vit", "--no-eval", "--out", tmp_path / "d",
                            "--hparams", write_json(tmp_path / "d.json", {"layer": "nope.layer"}))
    compare_line = run_error(capsys, "compare", "--model", "mini-vit", "--out", tmp_path / "c",
                             "--hparams", write_json(tmp_path / "c.json", {"edit": {"layer": "nope.layer"}}))
    assert compare_line == defend_line and defend_line.startswith("Error: no module named 'nope.layer' in CLIP")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_load_model_refuses_a_meta_device():
    with pytest.raises(ModelLoadError, match="'meta' is not a device clipedit runs on"):
        clipedit.load_model("tiny-vit", device="meta")


# -- input files: regular files of bounded size -------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("args", [
    ("audit", "--model", "mini", "--font", "{fifo}"),
    ("audit", "--model", "mini", "--templates-file", "{fifo}"),
    ("audit", "--model", "mini", "--classes-file", "{fifo}"),
    ("defend", "--hparams", "{fifo}", "--no-eval"),
    ("compare", "--hparams", "{fifo}"),
    ("defend", "--text", "*", "--vocab", "{fifo}", "--no-eval"),
    ("attack", "{photo}", "--text", "ipod", "--font", "{fifo}"),
])
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_files_as_inputs_are_refused_at_once(tmp_path, capsys, fifo, photo_files, args, special):
    target = str(fifo) if special == "fifo" else special
    argv = [a.format(fifo=target, photo=photo_files["cat"]) for a in args] + ["--out", str(tmp_path / "o")]
    with no_hang(30):
        line = run_error(capsys, *argv)
    assert ("is a FIFO, not a regular file" if special == "fifo" else "is a character device") in line
    assert "not found" not in line
    assert not (tmp_path / "o").exists()


def test_the_library_readers_share_the_check_and_the_bound(tmp_path, fifo):
    from clipedit.data.images import load_image
    from clipedit.data.prepare.vocabulary import read_word_list
    from clipedit.inputs import read_input_json, read_input_text

    big = tmp_path / "big.txt"
    big.write_text("word\n" * 100)
    with pytest.raises(ClipeditError, match="more than the 64 such a file may have"):
        read_input_text(big, "word list", max_bytes=64)
    with no_hang(30):
        for call in (lambda: read_word_list(fifo), lambda: read_input_json(fifo, "settings"),
                     lambda: load_image(fifo)):
            with pytest.raises(ClipeditError, match="FIFO, not a regular file"):
                call()
    with pytest.raises(ClipeditError, match="character device"):
        read_input_text("/dev/zero", "templates")


# -- model specs and what options mean ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["mini-vit:none", "mini:evil", "mini:openai", "mini-vit-deep:openai"])
def test_a_tag_on_a_bundled_mini_is_refused(spec):
    with pytest.raises(ModelLoadError, match="has its bundled weights only"):
        clipedit.load_model(spec, device="cpu")


def test_a_bundled_mini_with_its_own_tag_loads():
    assert clipedit.load_model("mini:bundled", device="cpu").pretrained == "bundled"


def test_train_mini_vit_refuses_warmstart_steps(tmp_path, capsys):
    line = run_error(capsys, "train-mini", "--arch", "vit", "--warmstart-steps", "5", "--out", tmp_path / "m")
    assert "--warmstart-steps is the resnet mini's warm start" in line
    assert not (tmp_path / "m").exists()


def test_compare_refuses_supported_without_paint(tmp_path, image_folder, capsys):
    line = run_error(capsys, "compare", "--model", "mini-vit", "--methods", "edit", "--supported", image_folder,
                     "--out", tmp_path / "c")
    assert "--supported is a supported task (PAINT's), and no method run takes one" in line
    assert not (tmp_path / "c").exists()


def test_a_link_loop_in_data_adds_no_class(image_folder):
    from clipedit.data.folders import load_image_folder

    (image_folder / "self").symlink_to(".")
    with pytest.raises(ClipeditError, match="links back"):
        load_image_folder(image_folder)
    (image_folder / "self").unlink()
    (image_folder / "cat2").mkdir()
    (image_folder / "cat2" / "a.jpg").symlink_to(image_folder / "cat" / "a.jpg")
    with pytest.raises(ClipeditError, match="are the same image file"):
        load_image_folder(image_folder)


# -- numeric bounds ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (("train-mini", "--seed", "-1"), "not in the range"),
    (("train-mini", "--seed", "1e23"), "not a valid integer"),
    (("train-mini", "--seed", str(2**40)), "not in the range"),
    (("train-mini", "--threads", "100000"), "not in the range"),
    (("train-mini", "--pool-size", "1000000000"), "not in the range"),
    (("compare", "--n", "1000000000000"), "n_test must be >= 1 and <= 1000000"),
    (("compare", "--n-train", "10000000000"), "n_train must be >= 1 and <= 1000000"),
    (("compare", "--seeds", "-1"), "seeds must be a non-empty list of whole numbers, each >= 0"),
])
def test_absurd_numbers_are_refused_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert message in refusal(capsys, *args, "--out", out)
    assert not out.exists()


def test_training_options_check_their_schema_in_python(tmp_path):
    from clipedit.mini.training.distill import DistillOptions
    from clipedit.mini.training.train import TrainOptions

    for bad in ({"seed": -1}, {"threads": 100000}, {"pool_size": 10**9}, {"precision": "fp8"}, {"steps": 0}):
        with pytest.raises(SettingsError):
            TrainOptions(out=tmp_path, **bad)
    with pytest.raises(SettingsError, match="arch must be one of"):
        DistillOptions(out=tmp_path, arch="evil")


def test_a_huge_texture_scale_is_refused(photos):
    import numpy as np

    from clipedit.defenses.concept import texture_pair

    mask = np.zeros((96, 96), dtype=bool)
    mask[50:, :] = True
    with pytest.raises(ClipeditError, match="choose a smaller --texture-scale"):
        texture_pair(photos["cat"], mask, photos["coffee"], 1e6)
    assert texture_pair(photos["cat"], mask, photos["coffee"], 0.5).transformed.size == (96, 96)


@pytest.mark.parametrize("command", [
    ("audit", "--model", "mini", "--out", "{long}.json"),
    ("defend", "--no-eval", "--out", "{long}"),
    ("train-mini", "--out", "{long}"),
    ("stats", "--model", "tiny-vit", "--reference", "{data}", "--out", "{long}.pt"),
    ("attack", "{photo}", "--text", "ipod", "--out", "{long}"),
])
def test_an_output_name_over_255_bytes_is_one_line(tmp_path, capsys, image_folder, photo_files, command):
    long = str(tmp_path / ("a" * 300))
    argv = [a.format(long=long, data=image_folder, photo=photo_files["cat"]) for a in command]
    assert "names on this file system are at most 255 bytes" in run_error(capsys, *argv)


def test_an_output_name_leaves_room_for_its_temporary(tmp_path, capsys):
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--no-eval", "--renders", "2",
                     "--out", tmp_path / ("b" * 250))
    assert "an output's at most" in line
    assert not list(tmp_path.iterdir())


# -- messages ---------------------------------------------------------------------------------------------
def test_a_missing_model_is_named(capsys, image_folder):
    """``stats`` needs a model (``audit``, like defend, sweep and compare, defaults to the bundled mini)."""
    line = run_error(capsys, "stats", "--reference", str(image_folder))
    assert "--model is required" in line and "NoneType" not in line


def test_a_fifo_as_reference_folder_is_not_called_missing(capsys, fifo):
    line = run_error(capsys, "stats", "--model", "tiny-vit", "--reference", fifo)
    assert "is not a folder" in line and "not found" not in line


def test_a_missing_input_file_is_not_found_and_a_fifo_is_a_fifo(tmp_path, capsys, fifo):
    missing = run_error(capsys, "audit", "--model", "mini", "--templates-file", tmp_path / "nope.txt")
    assert "--templates-file file not found" in missing
    with no_hang(30):
        assert "FIFO" in run_error(capsys, "audit", "--model", "mini", "--templates-file", fifo)


def test_font_messages_do_not_advise_an_option_the_command_lacks():
    from clipedit.attacks.errors import AttackError
    from clipedit.attacks.fonts import check_glyphs, mpl_font_path

    with pytest.raises(AttackError) as info:  # compare and sweep render with such fonts and have no --font
        check_glyphs("\U0001F600", mpl_font_path("cmr10"))
    assert "(--font)" not in str(info.value) and "attack and audit take one with --font" in str(info.value)


def test_stats_says_not_cached_when_the_cache_write_fails(tmp_path, capsys, image_folder, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CLIPEDIT_CACHE", str(blocker / "cache"))
    out = run_ok(capsys, "stats", "--model", "tiny-vit", "--reference", image_folder)
    assert "not cached" in out and "cached for defend" not in out
    monkeypatch.setenv("CLIPEDIT_CACHE", str(tmp_path / "cache"))
    assert "cached for defend --reference" in run_ok(capsys, "stats", "--model", "tiny-vit", "--reference",
                                                     image_folder)


@pytest.mark.parametrize("model, layer, reason", [
    ("tiny-rn", "visual.attnpool.c_proj", "attention pooling"),
    ("tiny-rn", "visual.attnpool.q_proj", "attention pooling"),
    ("tiny-vit", "visual.transformer.resblocks.0.attn.out_proj", "MultiheadAttention"),
    ("tiny-vit", "transformer.resblocks.0.mlp.c_proj", "never called by the image forward pass"),
])
def test_unsupported_sites_say_which_are_supported(tmp_path, capsys, model, layer, reason):
    out = tmp_path / "run"
    line = run_error(capsys, "defend", "--model", model, "--layer", layer, "--text", "ipod", "--renders", "2",
                     "--rank", "1", "--no-eval", "--out", out)
    assert reason in line and "supported sites are" in line and "mlp.c_proj" in line
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("--keep-blank", "inf"), "'inf' is not a finite number"),
    (("--keep-blank", "nan"), "'nan' is not a finite number"),
    (("--text", "ab\udcff"), "is not valid UTF-8 text"),
    (("--device", "meta"), "'meta' is not a device clipedit runs on"),
    (("--layer", "+++"), "'+++' names no layer"),
    (("--layer", "visual.a++visual.b"), "has an empty layer name"),
    (("--layer", "visual.a,visual.b"), "is written 'visual.a+visual.b'"),
])
def test_defend_refuses_bad_options_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    line = refusal(capsys, "defend", "--model", "tiny-vit", "--renders", "2", "--no-eval", "--out", out, *args)
    assert message in line
    assert not out.exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has mps")
def test_device_mps_is_refused_where_there_is_none(capsys):
    assert "mps is not available" in refusal(capsys, "audit", "--model", "mini", "--device", "mps", "--n", "2")


@pytest.mark.parametrize("n, message", [("1000000000000", "not in the range"), ("1e26", "not a valid integer")])
def test_audit_refuses_absurd_scene_counts(capsys, n, message):
    assert message in refusal(capsys, "audit", "--model", "mini", "--n", n)


@pytest.mark.parametrize("template", ["a photo of {1} {}.", "a {x} photo of a {}.", "{0.__class__} of a {}."])
@pytest.mark.slow
def test_templates_are_filled_by_plain_substitution(tmp_path, capsys, template):
    from clipedit.eval.zeroshot import fill_template

    assert fill_template(template, "cat") == template.replace("{}", "cat")
    path = tmp_path / "templates.txt"
    path.write_text(template + "\n")
    out = run_ok(capsys, "audit", "--model", "mini", "--n", "4", "--templates-file", path)
    assert "attack success" in out


def _disentangling(root: Path, annotations: str) -> Path:
    root.mkdir()
    (root / "annotations.json").write_text(annotations)
    return root


@pytest.mark.parametrize("annotations, message", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
    ('{"a.jpg": {"true object": "cup", "n": ' + "9" * 5001 + "}}", "cannot read"),
])
def test_hostile_annotations_are_one_line(tmp_path, capsys, annotations, message):
    root = _disentangling(tmp_path / "dis", annotations)
    assert message in run_error(capsys, "audit", "--model", "mini", "--dataset", f"disentangling:{root}")


def test_keep_blank_so_large_the_edit_is_a_no_op_is_refused(edit_files, tmp_path, capsys):
    out = tmp_path / "run"
    line = run_error(capsys, *defend_args(edit_files[0], out, "--keep-blank", "1e300"))
    assert "keep_targets 1e+300 is above 1e+06" in line
    assert not out.exists()


def test_hparams_refuse_non_finite_numbers():
    from clipedit.errors import EditError

    for bad in ({"keep_targets": float("nan")}, {"cov_reg": float("inf")}, {"rank": 2.5}, {"layer": ""}):
        with pytest.raises(EditError):
            RewriteHParams(**bad)


def test_sweep_refuses_a_nan_tolerance(capsys, tmp_path):
    assert "not a finite number" in refusal(capsys, "sweep", "--tolerance", "nan", "--out", tmp_path / "s")


def test_finetune_local_refuses_several_layers(edit_files, tmp_path, capsys):
    line = run_error(capsys, *defend_args(edit_files[0], tmp_path / "run", "--method", "finetune-local",
                                           "--layer", f"{VIT_SITE}+visual.transformer.resblocks.0.mlp.c_proj"))
    assert "--method finetune-local trains one layer; --layer names 2" in line


def test_triples_refuse_rta_style_names(tmp_path, capsys):
    folder = tmp_path / "rta"
    folder.mkdir()
    Image.new("RGB", (32, 32), "white").save(folder / "label=cat_text=dog.png")
    line = run_error(capsys, "audit", "--model", "mini", "--dataset", f"triples:{folder}")
    assert "named as RTA-100/PAINT photos are" in line and "rta100:" in line


def test_disentangling_refuses_files_outside_its_folder(tmp_path, capsys):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "red").save(secret)
    root = tmp_path / "dis"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "ok.png")
    annotations = {"ok.png": {"true object": "cup", "typographic attack label": "ipod"},
                   str(secret): {"true object": "cup", "typographic attack label": "ipod"},
                   "../secret.png": {"true object": "cup", "typographic attack label": "ipod"}}
    (root / "annotations.json").write_text(json.dumps(annotations))
    results, report = tmp_path / "r.json", tmp_path / "r.html"
    out = run_ok(capsys, "audit", "--model", "mini", "--dataset", f"disentangling:{root}", "--out", results,
                 "--report", report)
    assert "skipped 2 images" in out
    record = json.loads(results.read_text())
    assert record["metrics"]["n"] == 1 and record["metrics"]["n_skipped"] == 2
    assert {reason for _, reason in record["skipped"]} == {"outside the dataset folder: not read"}
    import base64
    import io

    buffer = io.BytesIO()
    Image.open(secret).save(buffer, format="PNG")
    assert base64.b64encode(buffer.getvalue()).decode()[:200] not in report.read_text()


def test_scam_never_opens_a_row_outside_its_folder(tmp_path, capsys):
    root = tmp_path / "scam"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "a.png")
    (root / "metadata.csv").write_text("file_name,type,object_label,attack_word\n"
                                       "a.png,SCAM,cup,ipod\n/etc/shadow,SCAM,cup,ipod\n")
    from clipedit.data.benchmarks import load_benchmark_images, read_benchmark

    bench = read_benchmark(f"scam:{root}")
    assert [r.path.name for r in bench.records] == ["a.png"] and bench.outside == ["/etc/shadow"]
    loaded = load_benchmark_images(bench)
    assert loaded.n_skipped == 1 and loaded.skipped == [("/etc/shadow", "outside the dataset folder: not read")]


def test_a_long_list_of_missing_files_is_counted_not_listed(tmp_path, capsys):
    root = tmp_path / "m"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "real.png")
    rows = ["image,class,word", "real.png,cup,ipod"] + [f"missing{i}.png,cup,ipod" for i in range(5000)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    results = tmp_path / "r.json"
    run_ok(capsys, "audit", "--model", "mini", "--dataset", f"manifest:{root}", "--out", results)
    record = json.loads(results.read_text())
    assert record["metrics"]["n_skipped"] == 5000 and len(record["skipped"]) == 20
    assert results.stat().st_size < 50_000


def test_an_empty_scam_object_label_is_refused(tmp_path, capsys):
    root = tmp_path / "scam"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "a.png")
    (root / "metadata.csv").write_text("file_name,type,object_label,attack_word\na.png,SCAM, ,ipod\n")
    assert "line 2: empty object_label" in run_error(capsys, "audit", "--model", "mini", "--dataset", f"scam:{root}")


def test_an_rta_set_without_attacked_photos_prints_no_attacked_line(tmp_path, capsys):
    root = tmp_path / "rta"
    root.mkdir()
    for name in ("cup", "dog"):
        Image.new("RGB", (64, 64), "white").save(root / f"label={name}_text=.png")
    out = run_ok(capsys, "audit", "--model", "mini", "--dataset", f"rta100:{root}", "--classes", "cup,dog")
    assert "attacked photos" not in out and "all photos (top-1; none attacked)" in out


def test_the_public_api_checks_its_arguments(tiny_vit, edit_files):
    from clipedit.errors import ArgumentError, RenderError

    for call in (lambda: clipedit.defend(tiny_vit, ""), lambda: clipedit.defend(None, "ipod"),
                 lambda: clipedit.defend(tiny_vit, 5), lambda: clipedit.defend(tiny_vit, ["ipod", None]),
                 lambda: clipedit.load_model(None),
                 lambda: apply_edit(None, load_edit(edit_files[2])),
                 lambda: clipedit.save_edits(tiny_vit.model, "not an edit")):
        with pytest.raises(ArgumentError):
            call()
    with pytest.raises(RenderError) as info:
        text_exemplars(tiny_vit, "", 2)
    assert isinstance(info.value, clipedit.ClipeditError)
    assert isinstance(info.value.__cause__, AttackError)
    assert issubclass(AttackError, clipedit.USER_ERRORS)
