"""Paired statistics of compare: n = distinct images, several-seed intervals, exact McNemar, Holm, verdicts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clipedit.eval.intervals import wilson
from clipedit.eval.paired import (
    BOOTSTRAP,
    accuracy_cell,
    holm,
    mcnemar_exact,
    paired_difference,
    verdict,
    with_verdicts,
)


def outcomes(pairs: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Two aligned 0/1 vectors with ``pairs[(a, b)]`` images scored a by A and b by B."""
    a, b = [], []
    for (x, y), count in pairs.items():
        a += [x] * count
        b += [y] * count
    return np.array(a, float), np.array(b, float)


def test_mcnemar_exact_is_the_binomial_on_discordant_pairs():
    # b = 8, c = 2: p = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(8, 2) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(9, 0) == pytest.approx(2 / 2 ** 9)


def test_holm_on_a_small_example():
    # sorted 0.01, 0.02, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 1 * 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]
    assert holm([0.04, 0.03]) == pytest.approx([0.06, 0.06])  # monotone step-down: 2 * 0.03, then max(0.06, 0.04)
    assert holm([0.6, 0.6, 0.6]) == pytest.approx([1.0, 1.0, 1.0])


def test_several_seed_n_is_distinct_images_and_the_interval_is_not_zero_when_seeds_agree():
    rng = np.random.default_rng(1)
    one = (rng.random(300) < 0.6).astype(float)
    three = np.stack([one, one, one])  # a seed-stable method
    c = accuracy_cell(three)
    assert c["n"] == 300 and c["seeds"] == 3 and c["interval"] == BOOTSTRAP
    w_lo, w_hi = wilson(int(one.sum()), 300)
    centre = (w_lo + w_hi) / 2
    assert c["lo"] < centre < c["hi"]
    assert c["hi"] - c["lo"] >= (w_hi - w_lo) - 1e-12 > 0.1  # about +-5.5 points, not zero width
    single = accuracy_cell(one)
    assert single["interval"] == "wilson" and (single["lo"], single["hi"]) == pytest.approx((w_lo, w_hi))


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    stable = np.stack([(rng.random(300) < 0.6).astype(float)] * 3)
    spread = np.stack([(rng.random(300) < p).astype(float) for p in (0.4, 0.6, 0.8)])
    a, b = accuracy_cell(stable), accuracy_cell(spread)
    assert b["hi"] - b["lo"] > 1.5 * (a["hi"] - a["lo"])
    assert b["per_seed"] == pytest.approx([float(s.mean()) for s in spread])


def test_sixty_against_fifty_seven_percent_on_300_paired_images_is_a_tie():
    a, b = outcomes({(1, 1): 120, (1, 0): 60, (0, 1): 51, (0, 0): 69})
    assert a.mean() == pytest.approx(0.60) and b.mean() == pytest.approx(0.57)
    d = paired_difference(np.stack([a] * 3), np.stack([b] * 3))  # three seed-stable seeds each
    assert d["n"] == 300 and d["diff"] == pytest.approx(0.03)
    assert d["lo"] < 0 < d["hi"] and d["p"] == pytest.approx(mcnemar_exact(60, 51))
    assert [c["verdict"] for c in with_verdicts([{**d, "higher_is_better": True}])] == ["ties"]


def test_a_strong_and_a_null_method_on_the_same_images_beat_with_p_below_005():
    strong, null = outcomes({(1, 1): 25, (1, 0): 65, (0, 1): 5, (0, 0): 5})
    d = paired_difference(strong, null)
    assert d["test"] == "exact McNemar" and (d["wins"], d["losses"]) == (65, 5)
    assert d["p"] < 0.05 and d["lo"] > 0
    exact = 2 * sum(math.comb(70, i) for i in range(6)) / 2 ** 70
    assert d["p"] == pytest.approx(exact)
    out = with_verdicts([{**d, "higher_is_better": True}, {**paired_difference(null, strong),
                                                           "higher_is_better": True}])
    assert [c["verdict"] for c in out] == ["beats", "loses"]
    assert verdict(0.3, 0.001, higher_is_better=False) == "loses"  # attack success: lower is better
    assert verdict(None, 0.001) is None


def test_paired_difference_refuses_unaligned_images():
    with pytest.raises(ValueError):
        paired_difference(np.ones(5), np.ones(6))
    with pytest.raises(ValueError):
        accuracy_cell([0.5, 2.0])
