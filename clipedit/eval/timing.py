"""Seconds per stage of a run, for its results record and its closing line.

    timer = StageTimer()
    bundle = load(...)
    timer.lap("load")                        # the seconds since the previous lap (or the start)
    before = evaluate(...)
    timer.lap("evaluate_before")
    record["seconds"] = timer.seconds()      # {"load": 1.2, "evaluate_before": 12.3, "total": 13.5}
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class StageTimer:
    """Wall-clock seconds of named stages, each ended by :meth:`lap` (a name lapped twice adds up)."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._seconds: dict[str, float] = {}

    def lap(self, name: str) -> float:
        """End stage ``name`` now: it gets the seconds since the previous lap (or the start); returns them."""
        now = time.perf_counter()
        spent, self._last = now - self._last, now
        self._seconds[name] = self._seconds.get(name, 0.0) + spent
        log.info("%s: %.1f s", name, spent)
        return spent

    def seconds(self, digits: int = 2) -> dict[str, float]:
        """Seconds per stage in the order first lapped, and ``total`` (wall clock since the start)."""
        out = {k: round(v, digits) for k, v in self._seconds.items()}
        out["total"] = round(time.perf_counter() - self._start, digits)
        return out

    def summary(self) -> str:
        """One line, e.g. ``seconds: load 1.2, evaluate_before 12.3, total 13.5``."""
        return "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds().items())
