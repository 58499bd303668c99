"""95% intervals: Wilson's for a proportion, Student's t for a mean over seeds; and the tie rule.

"A beats B" needs intervals that do not overlap; otherwise the two are a tie.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

#: Two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30); beyond, the normal's.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
Z975 = 1.959964


def wilson(hits: int, n: int, z: float = Z975) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for ``hits`` successes out of ``n`` (n = 0: (0, 1))."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else Z975


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the 95% t interval of the mean of ``values`` (one value: lo = hi = mean)."""
    k = len(values)
    if k == 0:
        raise ValueError("no values")
    mean = sum(values) / k
    if k == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile(k - 1) * sd / math.sqrt(k)
    return mean, mean - half, mean + half


def cell(per_seed: Sequence[tuple[int, int]]) -> dict:
    """One table cell from (hits, n) per seed: the value and its 95% interval.

    One seed: the proportion with Wilson's interval. Several: the mean of the seeds' proportions with
    the t interval over seeds (and the pooled Wilson interval beside it, for reference).
    """
    per_seed = [(int(h), int(n)) for h, n in per_seed if n > 0]
    if not per_seed:
        return {"value": None, "lo": None, "hi": None, "n": 0, "seeds": 0}
    hits, n = sum(h for h, _ in per_seed), sum(m for _, m in per_seed)
    pooled = wilson(hits, n)
    if len(per_seed) == 1:
        return {"value": hits / n, "lo": pooled[0], "hi": pooled[1], "n": n, "seeds": 1, "interval": "wilson"}
    mean, lo, hi = mean_interval([h / m for h, m in per_seed])
    return {"value": mean, "lo": max(0.0, lo), "hi": min(1.0, hi), "n": n, "seeds": len(per_seed),
            "interval": "t over seeds", "pooled_wilson": list(pooled)}


def overlap(a: dict, b: dict) -> bool:
    """Whether two cells' intervals overlap (then neither beats the other)."""
    return not (a["hi"] < b["lo"] or b["hi"] < a["lo"])


def verdict(a: dict, b: dict, higher_is_better: bool = True) -> Optional[str]:
    """"A" / "B" when one's interval lies wholly above (better than) the other's, else "tie"."""
    if a.get("value") is None or b.get("value") is None:
        return None
    if overlap(a, b):
        return "tie"
    return "A" if (a["lo"] > b["hi"]) == higher_is_better else "B"


def format_cell(c: dict) -> str:
    """``71.2% [68.3, 74.0] n=1000`` (percent, interval in points)."""
    if c.get("value") is None:
        return "-"
    seeds = f", {c['seeds']} seeds" if c.get("seeds", 1) > 1 else ""
    return f"{100 * c['value']:.1f}% [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}] n={c['n']}{seeds}"
