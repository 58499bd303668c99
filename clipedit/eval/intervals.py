"""Wilson's 95% score interval for a proportion.

A compare's cells, paired differences and verdicts live in :mod:`clipedit.eval.paired` (one rule for
"beats/ties/loses", computed from paired tests on the same images, never from overlapping intervals).
"""
from __future__ import annotations

import math

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
