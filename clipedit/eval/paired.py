"""Accuracy cells and paired comparisons over per-image outcomes (numpy only, no model).

Outcomes are a ``(seeds, images)`` array of per-image scores in [0, 1] (1 = correct; a fraction where one
image was scored by several defended words' models and averaged), the images the *distinct* test images.

- :func:`accuracy_cell`: n = distinct images. One seed: Wilson's interval. Several seeds: a percentile
  bootstrap that resamples images *and* seeds (so it carries the test sample's error and the seeds' spread),
  never narrower than the Wilson interval of the same mean over the same n images.
- :func:`paired_difference`: method A minus method B on the same images: the difference with a bootstrap
  interval (images resampled jointly for both, seeds per side), and an exact two-sided sign test on the
  per-image differences of seed means, which is McNemar's exact test (a binomial on the discordant pairs)
  when each side has one seed.
- :func:`holm` adjusts a table's p-values for its many comparisons; :func:`verdict` is the one rule that
  turns a difference and its adjusted p into "beats" / "ties" / "loses".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from clipedit.eval.intervals import wilson

#: Bootstrap draws and the seed of their generator (fixed: the same record gives the same intervals).
DRAWS = 2000
BOOTSTRAP_SEED = 0
#: Family-wise error rate of a table's verdicts (Holm).
ALPHA = 0.05
WILSON = "wilson"
BOOTSTRAP = "bootstrap over images and seeds (at least the Wilson width)"


def as_outcomes(values: Any) -> np.ndarray:
    """``values`` as a float ``(seeds, images)`` array (a 1-D sequence is one seed); refuses values outside [0, 1]."""
    a = np.asarray(values, dtype=float)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"outcomes must be (seeds, images), got shape {a.shape}")
    if a.size and (np.isnan(a).any() or a.min() < 0 or a.max() > 1):
        raise ValueError("outcomes must lie in [0, 1]")
    return a


def _bootstrap_means(a: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean of ``a`` for each draw: seeds resampled with replacement, images at ``images`` (draws, n)."""
    k = a.shape[0]
    seeds = rng.integers(0, k, size=(images.shape[0], k)) if k > 1 else np.zeros((images.shape[0], 1), dtype=int)
    # mean over resampled seeds of the mean over resampled images
    a = a.astype(np.float32)  # half the memory traffic of the gathers; means stay well within float32's precision
    per_seed = np.stack([a[s][images].mean(axis=1, dtype=np.float64) for s in range(k)], axis=1)  # (draws, k)
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def bootstrap_interval(values: Any, draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The 95% percentile interval of the mean of ``values`` (seeds, images), resampling images and seeds."""
    a = as_outcomes(values)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, a.shape[1], size=(draws, a.shape[1]), dtype=np.int32)
    means = _bootstrap_means(a, images, rng)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def accuracy_cell(values: Any) -> dict[str, Any]:
    """One table cell: ``{value, lo, hi, n, seeds, interval}`` with n the number of distinct images."""
    a = as_outcomes(values)
    k, n = a.shape
    if n == 0:
        return {"value": None, "lo": None, "hi": None, "n": 0, "seeds": k}
    value = float(a.mean())
    w_lo, w_hi = wilson(round(value * n), n)
    if k == 1:
        return {"value": value, "lo": w_lo, "hi": w_hi, "n": n, "seeds": 1, "interval": WILSON}
    b_lo, b_hi = bootstrap_interval(a)
    return {"value": value, "lo": min(w_lo, b_lo), "hi": max(w_hi, b_hi), "n": n, "seeds": k, "interval": BOOTSTRAP,
            "per_seed": [float(v) for v in a.mean(axis=1)]}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: a binomial(b + c, 1/2) test of ``b`` against ``c`` discordant pairs."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    m = b + c
    if m == 0:
        return 1.0
    term = tail = 1  # C(m, 0); exact integers, each next binomial coefficient from the one before
    for i in range(min(b, c)):
        term = term * (m - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** m)


def sign_test(differences: Sequence[float]) -> tuple[float, int, int]:
    """(p, wins, losses): the exact two-sided sign test of per-image differences (McNemar's on 0/1 outcomes)."""
    d = np.asarray(differences, dtype=float)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return mcnemar_exact(wins, losses), wins, losses


def paired_difference(a: Any, b: Any, draws: int = DRAWS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """A minus B on the same images (columns aligned): the difference of means, its 95% bootstrap interval,
    n (distinct images), and the sign test's p with its discordant counts (``wins``: images where A scores
    higher, ``losses``: lower)."""
    a, b = as_outcomes(a), as_outcomes(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired outcomes need the same images, got {a.shape[1]} and {b.shape[1]}")
    n = a.shape[1]
    if n == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0, "p": None, "wins": 0, "losses": 0}
    rng = np.random.default_rng(seed)
    images = rng.integers(0, n, size=(draws, n), dtype=np.int32)
    diffs = _bootstrap_means(a, images, rng) - _bootstrap_means(b, images, rng)
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    p, wins, losses = sign_test(a.mean(axis=0) - b.mean(axis=0))
    return {"diff": float(a.mean() - b.mean()), "lo": float(lo), "hi": float(hi), "n": n, "p": p,
            "wins": wins, "losses": losses,
            "test": "exact McNemar" if a.shape[0] == b.shape[0] == 1 and _binary(a) and _binary(b)
            else "exact sign test on per-image seed means"}


def _binary(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0.0, 1.0)).all())


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values (None stays None; the family is the values that are not None)."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(diff: Optional[float], p_adjusted: Optional[float], higher_is_better: bool = True,
            alpha: float = ALPHA) -> Optional[str]:
    """"beats" / "loses" when the (Holm-adjusted) p is below ``alpha``, by the difference's sign; else "ties"."""
    if diff is None or p_adjusted is None:
        return None
    if p_adjusted >= alpha or diff == 0:
        return "ties"
    return "beats" if (diff > 0) == higher_is_better else "loses"


def with_verdicts(comparisons: list[dict[str, Any]], alpha: float = ALPHA) -> list[dict[str, Any]]:
    """``comparisons`` (each with ``diff``, ``p`` and ``higher_is_better``) with ``p_holm`` and ``verdict``,
    Holm over all of them (one table, one family)."""
    adjusted = holm([c.get("p") for c in comparisons])
    return [{**c, "p_holm": q, "verdict": verdict(c.get("diff"), q, c.get("higher_is_better", True), alpha)}
            for c, q in zip(comparisons, adjusted)]
