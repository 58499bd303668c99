"""The deeper bundled ViT mini (``assets/mini-vit-deep``, 6 blocks of 4 heads): it is shaped for head-level
defenses, it reads and is fooled, and its loader fails with one line naming the file and the rebuild command.

The full figures (>= 1000 test scenes) are in its config.json and the README; this checks a smaller set
drawn with another seed, with margins for its sampling noise.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_error

from clipedit.models import load_model
from clipedit.models.mini_vit import WEIGHTS_FILE, mini_vit_asset_dir, read_mini_vit_config

NAME = "mini-vit-deep"
N = 360  # 30 scenes per class
SEED = 777


@pytest.fixture(scope="module")
def deep():
    return load_model(NAME, device="cpu")


@pytest.fixture(scope="module")
def figures(deep) -> dict:
    from clipedit.mini.training.figures import heldout_figures

    return heldout_figures(deep.model, deep.preprocess, deep.tokenizer, n=N, seed=SEED)


def test_it_is_an_open_clip_vit_with_six_blocks_of_four_heads_and_the_minis_text_tower(deep):
    import open_clip

    from clipedit.methods.dyslexify import class_token_sites

    visual = deep.model.visual
    assert isinstance(visual, open_clip.transformer.VisionTransformer)
    blocks = visual.transformer.resblocks
    assert len(blocks) >= 6 and all(type(b).__name__ == "ResidualAttentionBlock" for b in blocks)
    assert all(b.attn.num_heads >= 4 for b in blocks)
    assert sum(n for _, n in class_token_sites(deep)) >= 24  # Dyslexify's candidates
    resnet = load_model("mini", device="cpu")
    text = {k: v for k, v in resnet.model.state_dict().items() if not k.startswith("visual.")}
    state = deep.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in text.items())
    assert deep.name == NAME and deep.classnames == resnet.classnames


@pytest.mark.slow
def test_it_reads_objects_and_is_fooled_by_written_words(figures):
    assert figures["clean_acc"] >= 0.85 and figures["blank_acc"] >= 0.78
    assert figures["text_acc"] <= 0.47 and figures["attack_success"] >= 0.40


def test_bundled_config_records_the_full_figures_and_its_training():
    cfg = read_mini_vit_config(mini_vit_asset_dir(NAME), NAME)
    heldout = cfg["heldout"]
    assert heldout["n"] >= 1000
    assert heldout["clean_acc"] >= 0.90 and heldout["blank_acc"] >= 0.85
    assert heldout["text_acc"] <= 0.40 and heldout["attack_success"] >= 0.50
    assert cfg["training"]["command"].startswith("clipedit train-mini --arch vit-deep")
    assert cfg["training"]["minutes"] <= 90
    assert cfg["model_cfg"]["vision_cfg"]["layers"] == 6


def test_all_bundled_assets_fit_32_mb():
    assets = mini_vit_asset_dir(NAME).parent
    assert sum(p.stat().st_size for p in assets.rglob("*") if p.is_file()) <= 32_000_000
    assert sorted(p.name for p in mini_vit_asset_dir(NAME).iterdir()) == ["config.json", WEIGHTS_FILE]


@pytest.fixture
def deep_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / NAME
    shutil.copytree(mini_vit_asset_dir(NAME), folder)
    monkeypatch.setenv("CLIPEDIT_MINI_VIT_DEEP_DIR", str(folder))
    return folder


@pytest.mark.parametrize("damage", ["config missing", "config corrupt", "weights missing", "weights corrupt"])
def test_a_missing_or_corrupt_asset_names_the_file_and_the_rebuild_command(capsys, deep_dir, damage):
    target = deep_dir / ("config.json" if damage.startswith("config") else WEIGHTS_FILE)
    if damage.endswith("missing"):
        target.unlink()
    else:
        target.write_bytes(b"\x00{not json" * 8)
    line = run_error(capsys, "audit", "--model", NAME, "--n", "12")
    assert str(target) in line and "clipedit train-mini --arch vit-deep" in line
    assert "CLIPEDIT_MINI_VIT_DEEP_DIR" in line


@pytest.mark.slow
def test_default_defense_is_the_validation_pick_and_restores_ipod_notes_keeping_reading():
    """`defend("ipod")` with mini-vit-deep's defaults (the reading rule's pick on validation, bench/results/
    surgical_sites.json: block 3's mlp.c_proj at the class token, rank 64, keep_reading 1), scored on test."""
    from conftest import defend_on_heldout

    from clipedit.settings.resolve import resolve_config

    base, defense, before, after = defend_on_heldout(NAME, factors=True)
    sites = resolve_config(base).sites
    assert [e.layer for e in defense.edit_set.edits] == list(sites) and sites[0].endswith("3.mlp.c_proj")
    assert before["attack_success_rate"] >= 0.4
    assert after["text_acc"] >= before["text_acc"] + 0.2  # measured: 27.9% -> 58.8%; reading 82.1% -> 79.2%
    assert after["clean_acc"] >= before["clean_acc"] - 0.02 and after["blank_acc"] >= before["blank_acc"] - 0.03
    assert after["reading_acc"] >= before["reading_acc"] - 0.05


def test_train_mini_arch_vit_deep_builds_the_deep_tower_into_its_own_folder(capsys, monkeypatch, tmp_path):
    from conftest import run_ok

    import clipedit.mini.training.distill as distill_module
    from clipedit.mini.training.distill import ARCHES, DistillOptions, student_config

    seen = []
    monkeypatch.setattr(distill_module, "distill", lambda opts: seen.append(opts) or {"heldout": {"n": 0}})
    monkeypatch.chdir(tmp_path)
    run_ok(capsys, "train-mini", "--arch", "vit-deep", "--steps", "5")
    assert seen == [DistillOptions(out=Path("runs") / NAME, arch="vit-deep", steps=5)]
    cfg = student_config(read_mini_vit_config(mini_vit_asset_dir(NAME), NAME)["model_cfg"], "vit-deep")
    assert cfg["vision_cfg"] == ARCHES["vit-deep"]["vision_cfg"]
    assert cfg["vision_cfg"]["width"] // cfg["vision_cfg"]["head_width"] == 4


def test_stats_computes_every_default_site(image_folder, capsys):
    """``clipedit stats`` computes every site of the default edit (as defend --reference uses them), and only those."""
    from conftest import run_ok

    from clipedit.settings.resolve import resolve_config

    sites = resolve_config(load_model(NAME, device="cpu")).sites
    out = run_ok(capsys, "stats", "--model", NAME, "--reference", image_folder)
    assert sites and all(f"key statistics of {site}:" in out for site in sites)
    assert out.count("key statistics of ") == len(sites)
