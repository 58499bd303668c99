"""Seconds per stage of a run, for its results record and its closing line.

    timer = StageTimer(say=print)            # say: where a stage's opening line goes (default: the log only)
    bundle = load(...)
    timer.lap("load")                        # the seconds since the previous lap (or the start)
    before = evaluate(...)
    timer.lap("evaluate_before")
    record["seconds"] = timer.seconds()      # {"load": 1.2, "evaluate_before": 12.3, "total": 13.5}

``clipedit.defend(..., timer=timer)`` laps its own stages on the caller's timer (the CLI's).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Optional

log = logging.getLogger(__name__)


class StageTimer:
    """Wall-clock seconds of named stages, each ended by :meth:`lap` (a name lapped twice adds up)."""

    def __init__(self, say: Optional[Callable[[str], None]] = None) -> None:
        self._start = self._last = time.perf_counter()
        self._seconds: dict[str, float] = {}
        self._say = say

    def announce(self, message: str) -> None:
        """A stage's opening line (e.g. ``evaluating mini before the edit …``): logged, and passed to ``say``."""
        log.info("%s", message)
        if self._say is not None:
            self._say(message)

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
