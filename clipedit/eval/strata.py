"""Figures of an attack set by kind (notes, stickers, bare text) and size band, with 95% Wilson intervals."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from clipedit.attacks import Attack
from clipedit.attacks.factors import KIND_GROUPS, SIZE_BANDS, size_band
from clipedit.data.classnames import class_index
from clipedit.eval import intervals


def wilson(hits: int, n: int) -> Optional[tuple[float, float]]:
    """The 95% Wilson score interval of ``hits`` successes in ``n`` trials (None when n is 0)."""
    return intervals.wilson(hits, n) if n > 0 else None


def proportion(flags: Sequence[bool]) -> dict[str, Any]:
    """``{"acc", "n", "ci95"}`` of a list of hits (acc and ci95 None when it is empty; ci95 a list, as
    it reads back from JSON)."""
    n, k = len(flags), int(sum(bool(f) for f in flags))
    interval = wilson(k, n)
    return {"acc": k / n if n else None, "n": n, "ci95": list(interval) if interval else None}  # JSON-stable


def strata(attacks: Sequence[Attack], labels: Sequence[int], predictions: dict[str, Sequence[int]],
           classnames: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per kind group (:data:`~attacks.factors.KIND_GROUPS`) and per kind group x size band: clean,
    blank-note and text-note accuracy and attack success, each a :func:`proportion`.

    ``predictions``: the predicted class of every ``clean``/``blank``/``text`` image (as
    :func:`~clipedit.eval.metrics.evaluate_attacks` returns them). Text-note accuracy counts only
    notes whose word is not the true class; attack success only those writing another class.
    """
    words = [class_index(a.text, classnames) for a in attacks]
    out: dict[str, dict[str, Any]] = {}
    for group, kinds in KIND_GROUPS.items():
        for band in (None, *SIZE_BANDS):
            rows = [i for i, a in enumerate(attacks) if a.style.kind in kinds
                    and (band is None or size_band(a.style.font_size) == band)]
            if not rows:
                continue
            counted = [i for i in rows if words[i] != labels[i]]
            targeted = [i for i in counted if words[i] is not None]
            out[group if band is None else f"{group}, size {band}"] = {
                "clean_acc": proportion([predictions["clean"][i] == labels[i] for i in rows]),
                "blank_acc": proportion([predictions["blank"][i] == labels[i] for i in rows]),
                "text_acc": proportion([predictions["text"][i] == labels[i] for i in counted]),
                "attack_success_rate": proportion([predictions["text"][i] == words[i] for i in targeted]),
            }
    return out


def format_proportion(p: Optional[dict[str, Any]]) -> str:
    """``"71.3% [68.4, 74.0] n=1000"`` (``"-"`` for a missing or empty figure)."""
    if not p or p.get("acc") is None:
        return "-"
    lo, hi = p["ci95"]
    return f"{100 * p['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] n={p['n']}"


def strata_rows(results: dict[str, dict[str, Any]], metric: str = "text_acc") -> list[list[str]]:
    """Table rows (one per set x kind group x size band) of ``metric`` for every column of ``results``
    (each an :func:`~clipedit.eval.defense_metrics.evaluate_defense` result with ``strata``)."""
    first = next(iter(results.values()))
    rows = []
    for prefix, key in (("defended words", "strata"), ("other words", "other_strata")):
        for stratum in first.get(key, {}):
            rows.append([f"{metric} {prefix}: {stratum}",
                         *(format_proportion(r.get(key, {}).get(stratum, {}).get(metric)) for r in results.values())])
    return rows
