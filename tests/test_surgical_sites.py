"""The surgical-rewrite bench: its targets' verdicts are computed from the figures, and its candidates resolve."""
from __future__ import annotations

import pytest

from clipedit.eval.pick import Tolerance, pick
from clipedit.selection.sweep import READING_TOLERANCE, SweepSettings


def p(acc: float, n: int = 100) -> dict:
    return {"acc": acc, "n": n, "ci95": [acc - 0.05, acc + 0.05]}


def test_verdicts_say_which_target_is_missed_and_by_how_much():
    from bench.surgical_sites import verdicts

    unedited = {"word_notes": p(0.1), "other_notes": p(0.1), "blank": p(0.9), "clean": p(1.0), "reading": p(0.8)}
    row = {"word_notes": p(0.86), "other_notes": p(0.5), "blank": p(0.89), "clean": p(1.0), "reading": p(0.74)}
    v = verdicts(row, unedited)
    assert v["word_notes"]["met"] and v["word_notes"]["gap_to_unedited_blank"] == pytest.approx(4.0)
    assert not v["other_notes"]["met"] and v["other_notes"]["missed_by"] == pytest.approx(35.0)
    assert not v["reading"]["met"] and v["reading"]["missed_by"] == pytest.approx(1.0)
    assert not v["blank"]["met"] and v["blank"]["missed_by"] == pytest.approx(0.5)
    assert v["clean"]["met"] and v["clean"]["loss"] == 0.0


def test_the_default_pick_rule_bounds_reading():
    assert SweepSettings().reading_tolerance == READING_TOLERANCE == 0.05
    base = {"text_acc": 0.3, "other_text_acc": 0.3, "clean_acc": 1.0, "blank_acc": 0.9, "reading_acc": 0.9}
    blind = {**base, "text_acc": 0.9, "reading_acc": 0.8}  # 10 points of reading lost
    reads = {**base, "text_acc": 0.6, "reading_acc": 0.86}  # 4 points lost
    reading = Tolerance(READING_TOLERANCE, READING_TOLERANCE, 100)
    assert pick([blind, reads], base, reading=reading) == 1


def test_every_planned_candidate_is_a_site_of_its_model():
    from bench.surgical_sites import PLANS
    from clipedit import load_model
    from clipedit.core import resolve_site

    for model, groups in PLANS.items():
        bundle = load_model(model)
        for group in groups:
            for name in [*group.get("sites", []), *(s for sites in group.get("sets", []) for s in sites)]:
                resolve_site(bundle.model, name)


def test_the_docs_tables_are_the_ones_the_committed_results_give():
    import json

    from bench.measure import RESULTS
    from bench.surgical_sites import BEGIN, DOCS, END, tables

    text = DOCS.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.strip() == tables(json.loads((RESULTS / "surgical_sites.json").read_text())).strip()


def test_a_picked_row_is_rebuilt_with_every_setting_the_search_varies(tiny_vit):
    from bench.surgical_sites import overrides_of
    from clipedit.settings.resolve import resolve_config

    site = "visual.transformer.resblocks.1.mlp.c_proj"
    row = {"sites": [site], "rank": 4, "keep_targets": 3.0, "keep_reading": 1.0, "mask": "label", "spread": False,
           "class_token": "only"}
    config = resolve_config(tiny_vit, overrides_of(row))
    hp = config.hparams
    assert (config.sites, hp.rank, hp.keep_targets, hp.keep_reading, config.mask, hp.spread, hp.class_token) == (
        (site,), 4, 3.0, 1.0, "label", False, "only")


def test_a_star_row_is_rebuilt_from_its_plan_and_beta():
    from bench.surgical_sites import STAR_DEFAULT, STAR_PLANS, star_overrides_of

    group, plan = next(iter(STAR_PLANS["mini-vit-deep"].items()))
    assert star_overrides_of({"group": group, "keep_reading": 1.0}) == {**plan, "keep_reading": 1.0}
    assert star_overrides_of({"group": STAR_DEFAULT, "keep_reading": 3.0}) == {"keep_reading": 3.0}
