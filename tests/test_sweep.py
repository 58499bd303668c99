"""The sweep over sites x ranks: multi-site key collection, cached statistics, the pick rule, bad input."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import run_error, run_ok

from clipedit.core import resolve_site
from clipedit.core.keys_values import collect_exemplars, collect_exemplars_at
from clipedit.core.sites import candidate_sites
from clipedit.data.prepare.exemplars import request_from_attacks
from clipedit.defenses.typographic import DefenseConfig, text_exemplars
from clipedit.errors import ClipeditError, SiteError
from clipedit.eval.pick import heldout_data, pick
from clipedit.mini.world import CLASSNAMES, MiniWorld
from clipedit.selection.sweep import SweepSettings, plan, sweep
from clipedit.selection.tradeoff import pareto_front, plot_tradeoff

SMALL = DefenseConfig(renders=6, n_reference=24)


def with_world(bundle):
    """A tiny random-init model given the mini world (64x64 scenes, 12 classes) to tune on."""
    return dataclasses.replace(bundle, world=MiniWorld(), classnames=list(CLASSNAMES))


def row(gain, other=0.0, clean=0.0, blank=0.0):
    base = {"text_acc": 0.3, "other_text_acc": 0.3, "clean_acc": 0.9, "blank_acc": 0.9}
    return {"text_acc": 0.3 + gain, "other_text_acc": 0.3 + other, "clean_acc": 0.9 - clean,
            "blank_acc": 0.9 - blank}, base


# -- the pick rule ---------------------------------------------------------------------------------------
def test_pick_takes_the_largest_gain_within_the_tolerance():
    rows = [row(0.30, clean=0.02)[0], row(0.20)[0], row(0.25, blank=0.005)[0], row(0.10)[0]]
    base = row(0)[1]
    assert pick(rows, base) == 2  # 0.30 costs 2 points clean; 0.25 costs exactly the 0.5-point budget
    assert pick(rows, base, tolerance=0.03) == 0


def test_pick_breaks_ties_on_unseen_words_then_order_and_can_pick_nothing():
    base = row(0)[1]
    assert pick([row(0.2, other=0.1)[0], row(0.2, other=0.3)[0]], base) == 1
    assert pick([row(0.2)[0], row(0.2)[0]], base) == 0
    assert pick([row(0.5, clean=0.01)[0], row(0.5, blank=0.1)[0]], base) is None


def test_pareto_front_keeps_only_undominated_points():
    points = [(0.0, 10.0), (1.0, 20.0), (1.0, 15.0), (2.0, 20.0), (3.0, 30.0), (0.5, 5.0)]
    assert pareto_front(points) == [0, 1, 4]


# -- keys and values of several sites from one pass ---------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_rn", "tiny_vit"])
def test_multi_site_collection_matches_one_site_at_a_time(fixture, request):
    bundle = request.getfixturevalue(fixture)
    req = request_from_attacks(bundle.preprocess, text_exemplars(with_world(bundle), "ipod", 3))
    names = candidate_sites(bundle.image_module, bundle.image_prefix)
    sites = [resolve_site(bundle.model, n) for n in names]
    calls = []

    def forward(x):
        calls.append(x.shape[0])
        return bundle.encode_images(x)

    both = collect_exemplars_at(bundle.model, sites, req.attacked, req.target, req.mask, forward)
    assert calls == [3, 3]  # one pass of the attacked exemplars, one of the blank ones, for every site
    for site in sites:
        one = collect_exemplars(bundle.model, site, req.attacked, req.target, req.mask, bundle.encode_images)
        torch.testing.assert_close(both[site.layer].keys, one.keys)
        torch.testing.assert_close(both[site.layer].values, one.values)
        torch.testing.assert_close(both[site.layer].weights, one.weights)


# -- the sweep ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:only .* reference keys")  # 24 small reference images on purpose
@pytest.mark.slow
def test_sweep_scores_every_site_and_rank_caches_statistics_and_leaves_the_model(tiny_rn, cache_dir):
    bundle = with_world(tiny_rn)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    result = sweep(bundle, "ipod", SweepSettings(ranks=[1, 2], n_val=6, n_signs=6), SMALL)
    sites = candidate_sites(bundle.image_module, bundle.image_prefix)
    assert [(r["site"], r["rank"]) for r in result.rows] == [(s, k) for s in sites for k in (1, 2)]
    for r in result.rows:
        for key in ("text_acc", "other_text_acc", "clean_acc", "blank_acc", "reading_acc"):
            assert 0.0 <= r[key] <= 1.0
        assert r["gain"] == pytest.approx(r["text_acc"] - result.baseline["text_acc"])
    assert result.reading is not None and result.reading.asked == SweepSettings().reading_tolerance
    assert result.picked is None or result.picked is result.rows[pick(result.rows, result.baseline, result.tolerance,
                                                                       result.reading)]
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    assert len(list((cache_dir / "stats").glob("*.safetensors"))) == len(sites)  # once per site, on disk


def test_plan_caps_default_ranks_by_key_dimension_and_skips_narrow_sites(tiny_rn):
    pairs = dict(plan(tiny_rn, None, None))
    dims = {n: resolve_site(tiny_rn.model, n).key_dim for n in pairs}
    for name, ranks in pairs.items():
        assert ranks == [r for r in (1, 4, 16, 32, 64) if r <= dims[name]]
    wide = max(dims.values())
    assert [n for n, _ in plan(tiny_rn, None, [wide])] == [n for n, d in dims.items() if d >= wide]


def test_sweep_bad_input(tiny_rn):
    bundle = with_world(tiny_rn)
    with pytest.raises(SiteError, match="no module named 'visual.nope'"):
        plan(bundle, ["visual.nope"], None)
    with pytest.raises(SiteError, match="did you mean 'visual.layer1.0.conv3'"):
        plan(bundle, ["layer1.0.conv3"], None)
    dim = resolve_site(bundle.model, "visual.layer1.0.conv3").key_dim
    with pytest.raises(ClipeditError, match=f"rank {dim + 1} is above the key dimension of visual.layer1.0.conv3"):
        plan(bundle, ["visual.layer1.0.conv3"], [dim + 1])
    with pytest.raises(ClipeditError, match="split is empty"):
        heldout_data(bundle, ["ipod"], 0)
    with pytest.raises(ClipeditError, match="no labelled world"):
        heldout_data(tiny_rn, ["ipod"], 10)
    with pytest.raises(SiteError, match="visual.attnpool.c_proj cannot be rewritten"):
        sweep(bundle, "ipod", SweepSettings(sites=["visual.attnpool.c_proj"], ranks=[1], n_val=4, n_signs=0), SMALL)


def test_plot_writes_a_png(tmp_path):
    rows = [{"method": "edit", "site": "visual.layer3.0.conv3", "rank": r, "gain": g, "clean_loss": c,
             "blank_loss": 0.0} for r, g, c in ((1, 0.1, 0.0), (4, 0.3, 0.002), (16, 0.2, 0.01))]
    rows.append({"method": "paint", "gain": 0.4, "clean_loss": 0.02, "blank_loss": 0.0})
    plot_tradeoff(rows, tmp_path / "t.png", "test", picked=rows[1])
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_cli_writes_json_and_plot(tmp_path, capsys):
    out = run_ok(capsys, "sweep", "--model", "mini", "--text", "ipod", "--sites", "visual.layer3.0.conv3",
                 "--ranks", "1,8", "--n-val", "8", "--n-signs", "8", "--renders", "6", "--out", tmp_path / "s")
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["site"], r["rank"]) for r in record["rows"]] == [("visual.layer3.0.conv3", k) for k in (1, 8)]
    assert record["split"] == "validation" and "0.5 point" in record["rule"]
    assert (tmp_path / "s" / "sweep.png").is_file()
    assert "pick:" in out


@pytest.mark.parametrize("args, message", [
    (["--sites", "visual.nope"], "no module named 'visual.nope'"),
    (["--sites", "visual.layer1.0.conv3", "--ranks", "4096"], "rank 4096 is above the key dimension"),
    (["--ranks", "4,x"], "--ranks takes comma-separated integers"),
    (["--sites", "visual.attnpool.c_proj", "--ranks", "1"], "visual.attnpool.c_proj cannot be rewritten"),
])
def test_sweep_cli_bad_input_is_one_line(args, message, capsys, tmp_path):
    line = run_error(capsys, "sweep", "--model", "mini", "--n-val", "4", "--n-signs", "0", "--renders", "4",
                     "--out", tmp_path / "s", *args)
    assert message in line
    assert not (tmp_path / "s" / "sweep.json").exists()


@pytest.mark.slow  # a sweep of five ranks, then the defense and its evaluation
def test_defend_rank_auto_records_the_pick_in_results_and_edit(tmp_path, capsys, monkeypatch):
    from clipedit.core import load_edit
    from clipedit.settings import resolve

    resolved = []  # the settings are resolved once from the options, once more for the pick: never again
    monkeypatch.setattr(resolve, "defaults_for", lambda *a, _f=resolve.defaults_for, **k: resolved.append(a) or _f(
        *a, **k))
    run_ok(capsys, "defend", "--model", "mini", "--text", "ipod", "--layer", "visual.layer3.0.conv3", "--rank",
           "auto", "--renders", "6", "--n-val", "6", "--n-eval", "8", "--out", tmp_path / "d")
    record = json.loads((tmp_path / "d" / "results.json").read_text())
    selection = record["selection"]
    assert len(resolved) == (1 if selection["picked"] is None else 2)
    assert selection["split"] == "validation" and selection["auto"] == ["rank"] and selection["candidates"] == 5
    assert selection["n"] == 6 and selection["n_signs"] == 6  # --n-val, not --n-eval
    assert selection["baseline"]["intervals"]["clean_acc"]["n"] == 6  # what the sweep scored on
    edit = load_edit(tmp_path / "d" / "edit.safetensors")
    assert edit.meta["selection"]["rule"] == selection["rule"]
    if selection["picked"] is not None:
        assert edit.rank == selection["picked"]["rank"] and edit.layer == "visual.layer3.0.conv3"


def test_defend_auto_validates_at_n_val_not_at_the_evaluation_size(monkeypatch, tmp_path, tiny_vit):
    """``defend --layer/--rank auto`` sweeps at ``--n-val`` (default: the sweep's), whatever ``--n-eval`` is."""
    import clipedit.commands.defend as command
    from clipedit import cli
    from clipedit.commands.options import ModelOptions

    monkeypatch.setattr(ModelOptions, "load", lambda self: with_world(tiny_vit))  # the option path, not a model

    seen = []

    class Stop(Exception):
        pass

    def capture(bundle, words, config, auto, n_val):
        seen.append(n_val)
        raise Stop

    monkeypatch.setattr(command, "choose_by_sweep", capture)
    for extra in ([], ["--n-val", "500"]):
        with pytest.raises(Stop):
            cli.main(["defend", "--model", "mini", "--text", "ipod", "--rank", "auto", "--n-eval", "6", *extra,
                      "--out", str(tmp_path / "d")])
    assert seen == [SweepSettings.n_val, 500]


def test_choose_by_sweep_sweeps_and_records_the_validation_size_it_is_given(monkeypatch, tiny_vit):
    import clipedit.selection.sweep as sweep_module
    from clipedit.selection.sweep import SweepResult, choose_by_sweep
    from clipedit.settings.resolve import resolve_config

    given = []

    def fake(bundle, words, settings, config):
        given.append(settings)
        return SweepResult(list(words), {"n": settings.n_val}, [], None, 0.005, n_scenes=settings.n_val)

    monkeypatch.setattr(sweep_module, "sweep", fake)
    bundle = with_world(tiny_vit)
    config = resolve_config(bundle, DefenseConfig(renders=6))
    for n_val in (500, 6):  # above the sweep's default (no cap at 240) and below its signs
        chosen, selection = choose_by_sweep(bundle, ["ipod"], config, ["rank"], n_val)
        assert given[-1].n_val == n_val and given[-1].n_signs == min(n_val, SweepSettings.n_signs)
        assert selection["n"] == n_val and selection["n_signs"] == min(n_val, SweepSettings.n_signs)
        assert chosen is config  # nothing admissible: the config as it was


@pytest.mark.parametrize("args, message", [
    (["--layer", "auto", "--method", "finetune-global"], "--layer/--rank auto go with --method edit"),
    (["--rank", "three"], "--rank takes a positive integer or 'auto'"),
])
def test_defend_auto_bad_input(args, message, capsys, tmp_path):
    assert message in run_error(capsys, "defend", "--model", "mini", "--text", "ipod", "--no-eval",
                                "--out", tmp_path / "d", *args)


def test_a_tolerance_below_one_scene_is_widened_to_one_scene_with_a_warning(caplog):
    from clipedit.eval.pick import effective_tolerance, tolerance_in_scenes, tolerance_text

    assert tolerance_in_scenes(0.005, 120) == 0 and tolerance_in_scenes(0.005, 240) == 1
    assert tolerance_in_scenes(0.005, 1000) == 5 and tolerance_in_scenes(0.01, 100) == 1  # no float shortfall
    with caplog.at_level("WARNING"):
        assert effective_tolerance(0.005, 240) == 0.005 and not caplog.records
        assert effective_tolerance(0.0, 120) == 0.0 and not caplog.records  # no loss asked for: kept
        assert effective_tolerance(0.005, 120) == pytest.approx(1 / 120)
    assert "below one scene of 120" in caplog.text and "widened to one scene" in caplog.text
    # one scene lost on 120 is now admissible, as it was not at 0.5 point; two scenes are not
    one, base = row(gain=0.2, clean=1 / 120)
    two, _ = row(gain=0.3, clean=2 / 120)
    assert pick([two, one], base, effective_tolerance(0.005, 120)) == 1 and pick([two, one], base, 0.005) is None
    assert tolerance_text(1 / 120, 120, asked=0.005) == "0.833 point (1 of 120 scenes; widened from 0.5 point, below " \
                                                        "one scene)"
    assert tolerance_text(0.005, 1000) == "0.5 point (5 of 1000 scenes)"


@pytest.mark.slow
def test_sweep_cli_states_the_scenes_its_tolerance_allows(tmp_path, capsys):
    out = run_ok(capsys, "sweep", "--model", "mini", "--text", "ipod", "--sites", "visual.layer3.0.conv3",
                 "--ranks", "1", "--n-val", "12", "--n-signs", "0", "--renders", "4", "--out", tmp_path / "s")
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert record["n_scenes"] == 12 and record["tolerance_scenes"] == 1
    assert record["tolerance"] == pytest.approx(1 / 12)
    assert "pick rule: clean and blank-note loss each <= 8.33 point (1 of 12 scenes; widened from 0.5 point" in out


# -- what is scored is what is applied ----------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:only .* reference keys")
@pytest.mark.slow
def test_each_sweep_candidate_is_the_edit_defend_applies_with_that_setting(tiny_vit):
    """keep_targets honoured by both (the sweep once dropped it), single sites at several ranks (directions cut
    from the largest rank's) and a multi-site set solved in order, as defend solves it."""
    import copy

    from clipedit.core import RewriteHParams
    from clipedit.defenses.typographic import defend
    from clipedit.selection.sweep import candidate_edits
    from clipedit.settings.resolve import resolve_config

    bundle = with_world(tiny_vit)
    c_proj, v_proj = "visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.attn.v_proj"
    given = DefenseConfig(hparams=RewriteHParams(rank=4, keep_targets=3.0, cov_reg=0.01), renders=6,
                          n_reference=24, mask="label")
    settings = SweepSettings(sites=[c_proj], ranks=[1, 3], site_sets=[(v_proj, c_proj)])
    before = copy.deepcopy(bundle.model.state_dict())
    seen = [(c.sites, c.rank, [(m.layer, m.delta().double()) for m in c.edit_set.edits])
            for c in candidate_edits(bundle, ["ipod"], settings, resolve_config(bundle, given))]
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    pair = (v_proj, c_proj)
    assert [(s, r) for s, r, _ in seen] == [((c_proj,), 1), ((c_proj,), 3), (pair, 1), (pair, 3)]
    for sites, rank, deltas in seen:
        edited = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
        config = dataclasses.replace(given, hparams=dataclasses.replace(given.hparams, rank=rank), sites=sites)
        defense = defend(edited, "ipod", config)
        assert defense.edit_set.layers == [layer for layer, _ in deltas]
        for member, (_, delta) in zip(defense.edit_set.edits, deltas):
            torch.testing.assert_close(member.delta().double(), delta, rtol=1e-5, atol=1e-7)
        assert defense.edit_set.edits[0].meta["hparams"]["keep_targets"] == 3.0


def test_ranks_on_one_spot_share_one_label_and_crowded_labels_stack():
    from clipedit.selection.tradeoff import rank_labels

    rows = [{"rank": r} for r in (4, 16, 32, 8, 2)] + [{"method": "paint"}]
    points = [(0.0, 50.0)] * 3 + [(0.5, 50.5), (20.0, 10.0), (0.0, 50.0)]
    assert rank_labels(rows, points) == [((0.0, 50.0), "4, 16, 32", 0), ((0.5, 50.5), "8", 1),
                                         ((20.0, 10.0), "2", 0)]
