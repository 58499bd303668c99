"""The rewrite's ``keep_reading``: signs (class names written alone, exemplar styles) kept in the closed form's
keep term — validated, recorded, moving the signs' outputs less, and nothing at all at 0."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from clipedit.core import RewriteHParams, compute_rewrite, resolve_site
from clipedit.core.exemplar_sums import accumulate_exemplar_sums, accumulate_kept_sums, solve_closed_form_from_sums
from clipedit.core.keys_values import collect_kept_keys_at
from clipedit.core.subspace import regularise
from clipedit.data.prepare.exemplars import (
    keep_request_from_attacks,
    reference_statistics,
    request_from_attacks,
    sign_exemplars,
    text_exemplars,
)
from clipedit.errors import ClipeditError, EditError
from clipedit.selection.tradeoff import plot_tradeoff
from clipedit.settings.resolve import resolve_config
from tests.conftest import run_cli, run_error, run_ok

LAYER = "visual.layer3.0.conv3"
NAMES = ["ipod", "mug", "apple", "ball"]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 2e6, True, "3"])
def test_keep_reading_is_validated(bad):
    with pytest.raises(EditError, match="keep_reading"):
        RewriteHParams(layer=LAYER, keep_reading=bad)
    with pytest.raises(EditError, match="keep_reading.*closed-form"):
        RewriteHParams(layer=LAYER, solver="optimize", keep_reading=1.0)


def test_keep_reading_cli_refuses_bad_values(capsys, tmp_path):
    for value in ("-1", "nan", "2e6"):
        code, _, err = run_cli(["defend", "--model", "mini", "--keep-reading", value, "--no-eval",
                                "--out", tmp_path / "x"], capsys)
        assert code != 0 and "Error: Invalid value for '--keep-reading'" in err and "Traceback" not in err
        assert not (tmp_path / "x").exists()


@pytest.fixture
def setup(tiny_rn):
    """tiny-rn with class names, its layer3 site, 6 'ipod' exemplars and 8 signs (the same in every test)."""
    bundle = dataclasses.replace(tiny_rn, classnames=list(NAMES))
    config = resolve_config(bundle, {"layer": LAYER, "rank": 4, "renders": 6, "n_reference": 16})
    request = request_from_attacks(bundle.preprocess, text_exemplars(bundle, "ipod", 6))
    signs = sign_exemplars(bundle, 8)
    keep = keep_request_from_attacks(bundle.preprocess, signs)
    stats = reference_statistics(bundle, LAYER, config)
    return bundle, request, keep, stats, signs


def _edit(bundle, request, keep, stats, beta, keep_given=True):
    hp = RewriteHParams(layer=LAYER, rank=4, keep_reading=beta)
    return compute_rewrite(bundle.model, [request], hp, stats, bundle.encode_images,
                           keep=[keep] if keep_given else None)


def _sign_change(bundle, edit, keep) -> float:
    """Mean norm of the edited layer's output change at the signs' glyph locations."""
    site = resolve_site(bundle.model, LAYER)
    keys, _ = collect_kept_keys_at(bundle.model, [site], keep.images, keep.mask, bundle.encode_images)[LAYER]
    delta = site.weight_matrix(edit.delta()).to(torch.float64)
    return float((keys.to(torch.float64) @ delta.T).norm(dim=1).mean())


def test_signs_move_less_and_beta_is_recorded(setup):
    bundle, request, keep, stats, signs = setup
    assert len(signs) == 8 and sorted({s.text for s in signs}) == sorted(NAMES)  # every class, balanced
    plain = _edit(bundle, request, keep, stats, 0.0)
    kept = _edit(bundle, request, keep, stats, 10.0)
    some = _edit(bundle, request, keep, stats, 1.0)
    changes = [_sign_change(bundle, e, keep) for e in (plain, some, kept)]
    assert changes[2] < changes[1] < changes[0] and changes[2] < 0.8 * changes[0]  # (tiny-rn: 0.55)
    assert kept.meta["hparams"]["keep_reading"] == 10.0
    assert kept.meta["reading"]["keep_reading"] == 10.0 and kept.meta["reading"]["n_signs"] == 8
    assert kept.meta["reading"]["n_keys"] > 0
    assert plain.meta["hparams"]["keep_reading"] == 0.0 and "reading" not in plain.meta
    with pytest.raises(EditError, match="keep_reading needs"):
        _edit(bundle, request, keep, stats, 1.0, keep_given=False)


def test_beta_zero_is_todays_edit_bit_for_bit(setup):
    bundle, request, keep, stats, _ = setup
    today = _edit(bundle, request, keep, stats, 0.0, keep_given=False)
    zero = _edit(bundle, request, keep, stats, 0.0)  # signs given but weighed 0: never read
    assert torch.equal(today.delta(), zero.delta())
    site = resolve_site(bundle.model, LAYER)
    sums = accumulate_exemplar_sums(bundle.model, site, [request], bundle.encode_images)
    D = torch.linalg.qr(torch.randn(sums.keys_gram.shape[0], 3, dtype=torch.float64))[0]
    before = solve_closed_form_from_sums(sums, D)
    accumulate_kept_sums(bundle.model, [site], {LAYER: sums}, [keep], bundle.encode_images)
    assert torch.equal(solve_closed_form_from_sums(sums, D, keep_reading=0.0), before)
    assert not torch.equal(solve_closed_form_from_sums(sums, D, keep_reading=1.0), before)


def test_keep_term_is_the_stacked_least_squares(setup):
    """β' s Σ m_j ‖Λ Dᵀ s_j‖² is rows √(β' s m_j) Dᵀ s_j fitted to 0, s = exemplar weight / sign weight."""
    bundle, request, keep, stats, _ = setup
    site = resolve_site(bundle.model, LAYER)
    sums = accumulate_exemplar_sums(bundle.model, site, [request], bundle.encode_images)
    accumulate_kept_sums(bundle.model, [site], {LAYER: sums}, [keep], bundle.encode_images)
    from clipedit.core.keys_values import collect_exemplars

    ex = collect_exemplars(bundle.model, site, request.attacked, request.target, request.mask, bundle.encode_images)
    S, ms = collect_kept_keys_at(bundle.model, [site], keep.images, keep.mask, bundle.encode_images)[LAYER]
    C = regularise(stats.C, stats.n_keys, 1e-3)
    D = torch.linalg.qr(torch.randn(C.shape[0], 3, dtype=torch.float64))[0]
    beta = 2.0
    scale = beta * float(ex.weights.sum()) / float(ms.sum())
    K, m = ex.keys.to(torch.float64), ex.weights.to(torch.float64)[:, None]
    W = site.weight_matrix().detach().to(torch.float64)
    R = ex.values.to(torch.float64) - K @ W.T
    P = torch.cat([(K @ D) * m.sqrt(), (S.to(torch.float64) @ D) * (scale * ms.to(torch.float64)[:, None]).sqrt()])
    Rs = torch.cat([R * m.sqrt(), torch.zeros(S.shape[0], R.shape[1], dtype=torch.float64)])
    expected = torch.linalg.lstsq(P, Rs, driver="gelsd").solution.T
    got = solve_closed_form_from_sums(sums, D, keep_reading=beta)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert sums.n_kept_images == 8 and sums.n_kept_keys == S.shape[0]


def test_signs_use_exemplar_styles_and_seeds(setup):
    """Signs are rendered in exemplar fonts, never the held-out ones, and differ from the evaluation's signs."""
    from clipedit.attacks import StyleSampler

    *_, signs = setup
    exemplar_fonts = set(StyleSampler.exemplar().fonts)
    heldout_fonts = set(StyleSampler.heldout().fonts)
    assert all(s.style.font in exemplar_fonts and s.style.font not in heldout_fonts for s in signs)


def test_defend_keeps_reading_on_multisite_and_any_word(tmp_path):
    from clipedit.models import load_model

    bundle = load_model("mini", device="cpu")
    sites = "visual.layer2.0.conv3+visual.layer3.0.conv3"
    from clipedit.defenses.typographic import defend

    result = defend(bundle, "ipod", {"layer": sites, "rank": 2, "renders": 4, "n_reference": 32,
                                     "keep_reading": 1.5})
    edits = result.edit_set.edits
    assert [e.layer for e in edits] == sites.split("+")
    assert all(e.meta["reading"]["keep_reading"] == 1.5 and e.meta["reading"]["n_signs"] > 0 for e in edits)
    assert result.edit_set.meta["config"]["hparams"]["keep_reading"] == 1.5
    from clipedit.core import load_edits

    loaded = load_edits(result.save(tmp_path / "kept.safetensors"))  # the record survives the file
    assert [e.meta["reading"]["keep_reading"] for e in loaded.edits] == [1.5, 1.5]
    assert loaded.edits[1].meta["hparams"]["keep_reading"] == 1.5
    from clipedit.core import revert_edit_set

    revert_edit_set(bundle.model, result.edit_set)
    star = defend(bundle, "*", {"rank": 2, "renders": 1, "vocab_words": 4, "n_reference": 32, "keep_reading": 1.0})
    assert all(e.meta["reading"]["keep_reading"] == 1.0 for e in star.edit_set.edits)
    with pytest.raises(ClipeditError, match="keep_reading"):
        resolve_config(bundle, {"keep_reading": -1.0})


# -- the sweep: reading scored beside the other figures, and drawn ------------------------------------------
@pytest.mark.slow  # one sweep command on mini (its 512 reference images): ~15-20 s on a loaded CPU
def test_sweep_records_reading_with_n_and_interval_and_takes_keep_reading(tmp_path, capsys):
    from PIL import Image

    from clipedit.eval.intervals import wilson

    out = tmp_path / "s"
    run_ok(capsys, "sweep", "--model", "mini", "--text", "ipod", "--sites", "visual.layer3.0.conv3", "--ranks", "8",
           "--n-val", "8", "--n-signs", "10", "--renders", "6", "--keep-reading", "2", "--reading-tolerance", "100",
           "--out", out)
    record = json.loads((out / "sweep.json").read_text())
    assert record["config"]["hparams"]["keep_reading"] == 2.0
    assert "reading kept (signs) loss <= 100 point" in record["rule"]
    assert record["selection"]["reading_tolerance"]["n"] == 10
    for figures in (record["baseline"], *record["rows"]):
        reading = figures["reading"]
        assert reading["n"] == 10 and reading["acc"] == pytest.approx(figures["reading_acc"])
        assert reading["hits"] == round(10 * figures["reading_acc"])
        assert reading["ci"] == pytest.approx(list(wilson(reading["hits"], 10)))
        assert figures["intervals"]["text_acc"]["n"] == record["baseline"]["intervals"]["clean_acc"]["n"]
    two_panels = Image.open(out / "sweep.png").size
    rows = [{k: v for k, v in r.items() if k not in ("reading_acc", "reading")} for r in record["rows"]]
    plot_tradeoff(rows, tmp_path / "one.png", "no signs", picked=rows[0], baseline=record["baseline"])
    assert Image.open(tmp_path / "one.png").size[0] < two_panels[0]  # no reading: the one gain-vs-cost panel


def test_sweep_keep_reading_candidate_is_what_defend_applies():
    """The sweep's single-site candidate and defend's edit are the same solve, signs included."""
    from clipedit.core import revert_edit_set
    from clipedit.defenses.typographic import defend
    from clipedit.models import load_model
    from clipedit.selection.sweep import SweepSettings, candidate_edits

    bundle = load_model("mini", device="cpu")
    overrides = {"layer": LAYER, "rank": 4, "renders": 4, "n_reference": 32, "keep_reading": 3.0}
    config = resolve_config(bundle, overrides)
    settings = SweepSettings(sites=[LAYER], ranks=[4], site_sets=())
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    candidates = candidate_edits(bundle, ["ipod"], settings, config)
    swept = next(candidates).edit_set.edits[0]
    delta = swept.delta().clone()
    assert swept.meta["reading"]["keep_reading"] == 3.0
    candidates.close()  # reverts the candidate
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    result = defend(bundle, "ipod", overrides)
    torch.testing.assert_close(result.edit_set.edits[0].delta(), delta, rtol=1e-5, atol=1e-7)
    revert_edit_set(bundle.model, result.edit_set)


def test_reading_tolerance_enters_the_pick_only_when_asked():
    from clipedit.eval.pick import Tolerance, pick

    base = {"text_acc": 0.3, "other_text_acc": 0.3, "clean_acc": 1.0, "blank_acc": 0.9, "reading_acc": 0.9}
    blind = {**base, "text_acc": 0.8, "reading_acc": 0.5}      # removes more of the attack, reads far less
    reads = {**base, "text_acc": 0.6, "reading_acc": 0.88}
    unread = {k: v for k, v in {**base, "text_acc": 0.9}.items() if k != "reading_acc"}  # no signs scored
    rows = [blind, reads, unread]
    assert pick(rows, base) == 2
    assert pick(rows, base, reading=Tolerance(0.05, 0.05, 100)) == 1
    assert pick(rows[:1], base, reading=Tolerance(0.05, 0.05, 100)) is None
    assert pick(rows[:2], base, reading=Tolerance(0.5, 0.5, 100)) == 0


def test_sweep_refuses_a_reading_tolerance_without_signs(capsys, tmp_path):
    err = run_error(capsys, "sweep", "--model", "mini", "--n-signs", "0", "--reading-tolerance", "5",
                    "--out", tmp_path / "s")
    assert "--reading-tolerance needs signs" in err and not (tmp_path / "s").exists()


def test_signs_need_class_names(tiny_rn):
    from clipedit.defenses.typographic import defense_data

    config = resolve_config(tiny_rn, {"layer": LAYER, "renders": 2, "keep_reading": 1.0})
    with pytest.raises(ClipeditError, match="keep_reading writes the class names"):
        defense_data(tiny_rn, ["ipod"], config)
