"""The bundled mini ViT CLIP (``assets/mini-vit``): it reads and is fooled, the default defense
removes the weakness, its loader fails with one clear line, and ``train-mini --arch vit`` is wired.

The full figures (>= 1000 test scenes) are in ``assets/mini-vit/config.json`` and the README; this
checks a smaller set drawn with another seed, with margins for its sampling noise.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import defend_on_heldout, run_error, run_ok

from clipedit.mini.training.distill import DistillOptions, distill_loss
from clipedit.models import load_model
from clipedit.models.mini_vit import WEIGHTS_FILE, mini_vit_asset_dir, read_mini_vit_config

N = 360  # 30 scenes per class
SEED = 777


@pytest.fixture(scope="module")
def figures() -> dict:
    from clipedit.mini.training.figures import heldout_figures

    bundle = load_model("mini-vit", device="cpu")
    return heldout_figures(bundle.model, bundle.preprocess, bundle.tokenizer, n=N, seed=SEED)


def test_mini_vit_is_an_open_clip_vit_with_the_minis_text_tower():
    import open_clip

    vit, resnet = load_model("mini-vit", device="cpu"), load_model("mini", device="cpu")
    assert isinstance(vit.model, open_clip.model.CLIP)
    assert isinstance(vit.model.visual, open_clip.transformer.VisionTransformer)
    assert all(type(b).__name__ == "ResidualAttentionBlock" for b in vit.model.visual.transformer.resblocks)
    text = {k: v for k, v in resnet.model.state_dict().items() if not k.startswith("visual.")}
    vit_state = vit.model.state_dict()
    assert all(torch.equal(vit_state[k], v) for k, v in text.items())
    assert vit.world is not None and vit.classnames == resnet.classnames and vit.templates == resnet.templates


@pytest.mark.slow
def test_mini_vit_recognises_objects_and_shrugs_off_blank_notes(figures):
    assert figures["clean_acc"] >= 0.85
    assert figures["blank_acc"] >= 0.80


@pytest.mark.slow  # shares the module's figures (hundreds of scenes) with the test above
def test_mini_vit_is_fooled_by_written_words(figures):
    assert figures["text_acc"] <= 0.45
    assert figures["attack_success"] >= 0.42


def test_bundled_config_records_the_full_held_out_figures_and_its_training():
    cfg = read_mini_vit_config(mini_vit_asset_dir())
    heldout = cfg["heldout"]
    assert heldout["n"] >= 1000
    assert heldout["clean_acc"] >= 0.90 and heldout["blank_acc"] >= 0.85
    assert heldout["text_acc"] <= 0.40 and heldout["attack_success"] >= 0.50
    assert cfg["training"]["command"].startswith("clipedit train-mini --arch vit")
    assert cfg["training"]["minutes"] <= 60


@pytest.mark.slow
def test_default_defense_restores_ipod_notes_keeps_reading_and_trades_against_the_previous_default():
    """`defend("ipod")` with mini-vit's defaults (the reading rule's pick: block 2's mlp.c_proj at the class
    token, keep_reading 1), on a held-out set in styles the exemplars never use; the previous default (blocks
    0-2's value projections and block 0's mlp.c_proj at the label's tokens, no reading kept) removes more
    of the attack and blinds reading: the trade the rule makes, measured."""
    from clipedit.core import RewriteHParams
    from clipedit.settings.config import DefenseConfig
    from clipedit.settings.resolve import resolve_config

    base, defense, before, after = defend_on_heldout("mini-vit")
    sites = resolve_config(base).sites
    assert [e.layer for e in defense.edit_set.edits] == list(sites)
    assert defense.config["hparams"]["class_token"] == "only"
    assert before["attack_success_rate"] >= 0.4
    assert after["text_acc"] >= before["text_acc"] + 0.1  # measured: 32.9% -> 49.6%; reading 74.6% -> 71.7%
    assert after["clean_acc"] >= before["clean_acc"] - 0.02 and after["blank_acc"] >= before["blank_acc"] - 0.03
    assert after["reading_acc"] >= before["reading_acc"] - 0.05

    previous = DefenseConfig(sites=tuple(f"visual.transformer.resblocks.{b}.attn.v_proj" for b in range(3))
                             + ("visual.transformer.resblocks.0.mlp.c_proj",),
                             hparams=RewriteHParams(rank=32, keep_targets=3.0), mask="label")
    *_, after_previous = defend_on_heldout("mini-vit", config=previous)
    assert after_previous["text_acc"] >= after["text_acc"] + 0.1  # measured: 72.1% against 49.6%
    assert after_previous["reading_acc"] <= after["reading_acc"] - 0.2  # measured: 22.5% against 71.7%


def test_bundled_assets_fit_the_size_budget():
    assets = mini_vit_asset_dir().parent
    assert sum(p.stat().st_size for p in assets.rglob("*") if p.is_file()) <= 30_000_000
    assert sorted(p.name for p in mini_vit_asset_dir().iterdir()) == ["config.json", WEIGHTS_FILE]


# --- the loader's errors ---------------------------------------------------------------------------------

@pytest.fixture
def vit_dir(tmp_path, monkeypatch) -> Path:
    """A copy of the bundled mini-vit asset folder that a test may break."""
    folder = tmp_path / "mini-vit"
    shutil.copytree(mini_vit_asset_dir(), folder)
    monkeypatch.setenv("CLIPEDIT_MINI_VIT_DIR", str(folder))
    return folder


def test_missing_config_names_the_file_and_the_rebuild_command(capsys, vit_dir):
    (vit_dir / "config.json").unlink()
    line = run_error(capsys, "audit", "--model", "mini-vit", "--n", "12")
    assert str(vit_dir / "config.json") in line and "clipedit train-mini --arch vit" in line


def test_corrupt_config_names_the_file_and_the_rebuild_command(capsys, vit_dir):
    (vit_dir / "config.json").write_text("{not json")
    line = run_error(capsys, "audit", "--model", "mini-vit", "--n", "12")
    assert "corrupt" in line and str(vit_dir / "config.json") in line and "clipedit train-mini --arch vit" in line


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_missing_or_corrupt_weights_name_the_file_and_the_rebuild_command(capsys, vit_dir, damage):
    weights = vit_dir / WEIGHTS_FILE
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(b"\x00" * 64)
    line = run_error(capsys, "audit", "--model", "mini-vit", "--n", "12")
    assert str(weights) in line and "clipedit train-mini --arch vit" in line


def test_a_different_mini_text_tower_is_refused(capsys, vit_dir):
    cfg = json.loads((vit_dir / "config.json").read_text())
    cfg["text_tower"]["sha256"] = "0" * 64
    (vit_dir / "config.json").write_text(json.dumps(cfg))
    line = run_error(capsys, "audit", "--model", "mini-vit", "--n", "12")
    assert "model.safetensors" in line and "sha256" in line and "clipedit train-mini --arch vit" in line


# --- training ------------------------------------------------------------------------------------------

def test_train_mini_arch_vit_runs_the_distillation_with_its_own_defaults(capsys, monkeypatch, tmp_path):
    import clipedit.mini.training.distill as distill_module

    seen = []
    monkeypatch.setattr(distill_module, "distill", lambda opts: seen.append(opts) or {"heldout": {"n": 0}})
    run_ok(capsys, "train-mini", "--arch", "vit", "--steps", "7", "--out", tmp_path / "v")
    assert len(seen) == 1
    assert seen[0] == DistillOptions(out=tmp_path / "v", steps=7)  # unspecified options: the ViT's defaults


def test_distill_loss_is_zero_only_when_the_student_matches_the_teacher():
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(16, 12), dim=0)
    teacher = torch.randn(8, 16)
    assert distill_loss(2 * teacher, teacher, classes, 100.0, 1.0, 1.0).item() == pytest.approx(0, abs=1e-5)
    assert distill_loss(torch.randn(8, 16), teacher, classes, 100.0, 1.0, 1.0).item() > 0.1
