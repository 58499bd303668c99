"""Results records in clip_benchmark's JSON layout (plus clipedit's fields), and printed tables."""
from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from clipedit.io import write_json
from clipedit.models.bundle import ModelBundle


def clipedit_version() -> str:
    """The installed clipedit version (``unknown`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clipedit")
    except PackageNotFoundError:
        return "unknown"


def make_record(*, dataset: str, bundle: ModelBundle, task: str, metrics: dict[str, Any],
                classnames: Sequence[str], templates: Optional[Sequence[str]], words: Optional[Sequence[str]],
                seed: Optional[int], n: int, **extra: Any) -> dict[str, Any]:
    """A results record: clip_benchmark's ``dataset, model, pretrained, task, metrics`` and ours.

    ``metrics`` stays flat and scalar, so that ``clip_benchmark build`` (which copies it into one
    CSV row) gives a number per cell; breakdowns (``by_word``, ``by_class`` …) go beside it.

    Args:
        dataset: what was evaluated (a directory, ``KIND:PATH``, ``photos`` or ``mini``).
        bundle: the evaluated model (gives model, pretrained, device).
        task: e.g. ``typographic_audit``.
        metrics: numbers (``None`` where undefined) and breakdowns (dicts, lists), split by
            :func:`split_metrics`; a ``predictions`` entry is dropped.
        classnames, templates, words, seed, n: how the evaluation was set up.
        extra: further fields (e.g. ``checkpoint``).
    """
    flat, breakdowns = split_metrics(metrics)
    return {
        "dataset": dataset,
        "model": bundle.name,
        "pretrained": bundle.pretrained,
        "task": task,
        "metrics": flat,
        **breakdowns,
        "language": "en",
        "classnames": list(classnames),
        "templates": len(templates) if templates is not None else 0,
        "words": list(words) if words is not None else None,
        "seed": seed,
        "n": n,
        "device": str(bundle.device),
        "clipedit_version": clipedit_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(scalars, breakdowns): numbers, strings, booleans and None in the first; dicts and lists in the
    second; per-image ``predictions`` dropped (they belong in a report, not in a results row)."""
    flat: dict[str, Any] = {}
    breakdowns: dict[str, Any] = {}
    for key, value in drop_predictions(metrics).items():
        (breakdowns if isinstance(value, (dict, list, tuple)) else flat)[key] = value
    return flat, breakdowns


def drop_predictions(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without its per-image ``predictions``."""
    return {k: v for k, v in metrics.items() if k != "predictions"}


def before_after_metrics(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One flat row for a defense: the unedited model's figures as they are, the defended one's
    with ``after_`` in front (``text_acc``, ``after_text_acc`` …); counts (``n``, ``n_*``), the same
    images before and after, and the ``figures`` tag appear once."""
    flat_before, _ = split_metrics(before)
    flat_after, _ = split_metrics(after)
    flat_before.pop("figures", None)  # a tag, not a number: the record's top-level ``figures``
    return {**flat_before, **{f"after_{k}": v for k, v in flat_after.items() if not _is_count(k) and k != "figures"}}


def _is_count(key: str) -> bool:
    return key == "n" or key.startswith("n_")


def write_results(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """The one record writer (audit, defend, sweep, edit-classifier, the bench): ``record`` (from
    :func:`make_record`) as JSON, atomically (a failed run leaves no partial file)."""
    return write_json(path, record)


#: How an undefined figure (a rate over n = 0) is shown on screen, in tables and in charts; JSON has null.
UNDEFINED = "n/a"


def format_value(value: Any, percent: bool = True) -> str:
    """A table cell: floats as percentages (or 4 digits), None (an undefined figure) as ``n/a``."""
    if value is None:
        return UNDEFINED
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if percent else f"{value:.4f}"
    return str(value)


def rate_with_interval(value: Optional[float], n: Optional[int]) -> str:
    """``"45.0% [38.1, 52.1]"``: a rate over ``n`` images with its Wilson 95% interval (``n/a`` when undefined)."""
    from clipedit.eval.intervals import wilson

    if value is None or not n:
        return UNDEFINED
    lo, hi = wilson(round(value * n), n)
    return f"{100 * value:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def undefined_reasons(rows: Sequence[Sequence[Any]]) -> list[str]:
    """One line per table row with an undefined figure (``[label, value…, n]``), saying why it is n/a."""
    lines = []
    for row in rows:
        if any(v is None for v in row[1:-1]) or (len(row) == 2 and row[1] is None):
            label = str(row[0])
            why = ("none of the written words is one of the classes, so no note can pull the prediction to its "
                   "word" if "attack success" in label else "no image counts towards it")
            lines.append(f"{label}: {UNDEFINED} (n = {row[-1]}: {why})")
    return lines


def format_table(rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None,
                 percent: bool = True) -> str:
    """Rows as aligned text: first column left-aligned, the others right-aligned.

    Args:
        rows: one sequence of cells per row; floats are rates shown as percentages.
        header: column titles.
        percent: show floats as percentages (else with 4 decimals).
    """
    table = [[format_value(c, percent) for c in row] for row in rows]
    if header is not None:
        table.insert(0, [str(h) for h in header])
    if not table:
        return ""
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(max(len(r) for r in table))]
    lines = []
    for row in table:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
