"""The bundled mini CLIP has real CLIP's typographic weakness, on a fresh held-out set.

The full figures (>= 1000 scenes) are in ``assets/mini/config.json`` and the README; this checks
a smaller set drawn with another seed, with margins for its sampling noise (about 2.5 points).
"""
from __future__ import annotations

import pytest
from conftest import defend_on_heldout

from clipedit.mini.training.figures import heldout_figures
from clipedit.models import load_model

N = 360  # 30 scenes per class
SEED = 777


@pytest.fixture(scope="module")
def figures() -> dict:
    bundle = load_model("mini", device="cpu")
    return heldout_figures(bundle.model, bundle.preprocess, bundle.tokenizer, n=N, seed=SEED)


@pytest.mark.slow
def test_mini_recognises_objects_and_shrugs_off_blank_notes(figures):
    assert figures["clean_acc"] >= 0.85
    assert figures["blank_acc"] >= 0.80


@pytest.mark.slow  # shares the module's figures (hundreds of scenes) with the test above
def test_mini_is_fooled_by_written_words(figures):
    assert figures["text_acc"] <= 0.45
    assert figures["attack_success"] >= 0.45


def test_bundled_config_records_the_full_held_out_figures():
    from clipedit.models.mini import read_mini_config

    heldout = read_mini_config()["heldout"]
    assert heldout["n"] >= 1000
    assert heldout["clean_acc"] >= 0.90 and heldout["blank_acc"] >= 0.85
    assert heldout["text_acc"] <= 0.40 and heldout["attack_success"] >= 0.50


@pytest.mark.slow
def test_default_defense_restores_ipod_notes_and_keeps_clean_blank_and_reading():
    """`defend("ipod")` with the defaults (the reading rule's pick: layer3 and layer4's conv3, keep_reading 3),
    on a held-out set in styles the exemplars never use: the note's pull falls, reading stays."""
    from clipedit.settings.resolve import resolve_config

    base, defense, before, after = defend_on_heldout("mini")
    assert [e.layer for e in defense.edit_set.edits] == list(resolve_config(base).sites)
    assert before["attack_success_rate"] >= 0.4 and after["attack_success_rate"] <= 0.2
    assert after["text_acc"] >= before["text_acc"] + 0.35  # measured: 25.4% -> 71.7%; reading 85.0% -> 81.7%
    assert after["clean_acc"] >= before["clean_acc"] - 0.03 and after["blank_acc"] >= before["blank_acc"] - 0.03
    assert after["reading_acc"] >= before["reading_acc"] - 0.05  # the rule's bound, on test signs
    assert after["other_text_acc"] >= before["other_text_acc"]  # unedited words are not made worse


def test_bundled_assets_fit_the_size_budget():
    from clipedit.models.mini import mini_asset_dir

    assert sum(p.stat().st_size for p in mini_asset_dir().iterdir()) <= 25_000_000
