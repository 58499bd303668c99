"""Markdown tables of a compare record (``compare.json``), new or old, each narrower than ~120 columns.

- **under attack** / **kept**: one row per method (``unedited`` first), one column per metric; each cell
  ``value [95% interval]`` in percent, the metric's n (distinct images) in its header.
- **attack removed vs reading kept** (the plane): per method, defended-word and unseen-word text-note
  accuracy and reading kept, each with its interval, and two flags computed from the record's paired verdicts
  against ``unedited`` (:func:`plane_rows`): *keeps reading* (reading's difference ties or beats) and
  *removes the attack* (defended-word accuracy beats). A record without paired verdicts shows the cells only.
- **budget**: the record's per-method ``budget`` entries (when it has them) and seconds per defense.
- **paired**: every method minus ``unedited`` (and minus ``edit``), same images: the difference in points
  with its interval, the Holm-adjusted p of the exact McNemar / sign test, and the verdict computed from them
  (:func:`clipedit.eval.paired.verdict`). A record written before per-image outcomes were kept has no paired
  statistics: its cells are shown as recorded and a line says that paired verdicts need a re-run.
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any, Optional

from clipedit.eval.compare_stats import ALL_METRICS, BASE, REFERENCES
from clipedit.eval.paired import ALPHA

#: The cell tables: title, metric keys.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Under attack (accuracy; attack success: lower is better)", ("text_acc", "other_text_acc", "attack_success_rate")),
    ("Kept (accuracy)", ("clean_acc", "blank_acc", "reading_acc")))
WIDTH = 118  # prose lines are wrapped here; tables stay narrower than ~120 columns
LABELS = dict((key, label) for label, key in ALL_METRICS)
RERUN = ("paired verdicts: this record has no per-image outcomes (written before they were kept); re-run "
         "`clipedit compare` to get paired differences, McNemar p and verdicts")


def compare_record(doc: dict[str, Any]) -> dict[str, Any]:
    """The compare record of a ``compare.json`` (its ``compare`` entry) or of a partial file; a bare record
    as is. Raises ValueError when ``doc`` is neither."""
    for candidate in (doc.get("compare"), doc) if isinstance(doc, dict) else ():
        if isinstance(candidate, dict) and isinstance(candidate.get("cells"), dict) and BASE in candidate["cells"]:
            return candidate
    raise ValueError("not a compare record (expected compare.json's \"compare\" entry with \"cells\")")


def pct(v: Optional[float], signed: bool = False) -> str:
    return "n/a" if v is None else f"{100 * v:{'+' if signed else ''}.1f}"


def cell_text(c: Optional[dict[str, Any]]) -> str:
    """``73.3 [68.1,78.0]`` (percent; ``n/a`` when not measured)."""
    if not c or c.get("value") is None:
        return "n/a"
    return f"{pct(c['value'])} [{pct(c['lo'])},{pct(c['hi'])}]"


def p_text(p: Optional[float]) -> str:
    return "n/a" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A markdown table padded to aligned columns (the first ``left`` columns left-aligned, the rest right)."""
    table = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i < left else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(table[0]), rule, *(line(r) for r in table[1:])])


def _methods(record: dict[str, Any]) -> list[str]:
    return [BASE, *(m for m in record["cells"] if m != BASE)]


def _n(record: dict[str, Any], key: str) -> int:
    return max((record["cells"][m].get(key, {}).get("n") or 0) for m in record["cells"])


def cell_tables(record: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each group of :data:`GROUPS` with at least one measured metric."""
    out = []
    for title, keys in GROUPS:
        keys = tuple(k for k in keys if _n(record, k))
        if keys:
            header = ["method", *(f"{LABELS[k]} n={_n(record, k)}" for k in keys)]
            rows = [[m, *(cell_text(record["cells"][m].get(k)) for k in keys)] for m in _methods(record)]
            out.append((title, header, rows))
    return out


#: The plane's metrics: defended word, unseen words (text-note accuracy) and reading kept.
PLANE = ("text_acc", "other_text_acc", "reading_acc")
#: The plane's flags: name, the metric whose paired verdict against ``unedited`` decides it, verdicts that pass.
FLAGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (("keeps_reading", "reading_acc", ("ties", "beats")),
                                                       ("removes_attack", "text_acc", ("beats",)))


def plane_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method on the defended word vs reading plane, ``unedited`` first: ``text_acc``,
    ``other_text_acc``, ``reading_acc`` and ``blank_acc`` (values, None where not measured), ``intervals``
    (``{metric: {acc, n, ci: [lo, hi]}}``, as a sweep row carries them) and ``reading`` (reading's alone); each
    other method also ``keeps_reading`` / ``removes_attack`` (:data:`FLAGS`) from the record's paired verdicts
    against ``unedited``: True / False, or None where the record has no verdict for it (an old record)."""
    verdicts = {(c["method"], c["metric"]): c.get("verdict") for c in record.get("comparisons") or []
                if c.get("reference") == BASE}
    out = []
    for m in _methods(record):
        cells = record["cells"][m]
        intervals = {k: {"acc": c["value"], "n": c["n"], "ci": [c["lo"], c["hi"]]}
                     for k in PLANE if (c := cells.get(k)) and c.get("value") is not None and c.get("n")}
        row = {"method": m, **{k: intervals.get(k, {}).get("acc") for k in PLANE},
               "blank_acc": (cells.get("blank_acc") or {}).get("value"), "intervals": intervals,
               "reading": intervals.get("reading_acc")}
        if m != BASE:
            for flag, metric, passing in FLAGS:
                v = verdicts.get((m, metric))
                row[flag] = None if v is None else v in passing
        out.append(row)
    return out


def plane_table(record: dict[str, Any]) -> Optional[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the plane (:func:`plane_rows`); None without defended-word and reading cells.
    The flag columns only where the record has paired verdicts."""
    if not (_n(record, "text_acc") and _n(record, "reading_acc")):
        return None
    keys = [k for k in PLANE if _n(record, k)]
    flagged = bool(record.get("comparisons"))
    header = ["method", *(f"{PLANE_LABELS[k]} n={_n(record, k)}" for k in keys),
              *(["keeps reading", "removes attack"] if flagged else [])]
    rows = []
    for r in plane_rows(record):
        flags = [] if not flagged else ["(reference)", ""] if r["method"] == BASE else \
            [_yes(r["keeps_reading"]), _yes(r["removes_attack"])]
        rows.append([r["method"], *(cell_text(record["cells"][r["method"]].get(k)) for k in keys), *flags])
    title = ("Attack removed vs reading kept (text-note accuracy, signs read; keeps reading: reading ties or beats "
             "unedited, removes attack: defended word beats unedited, paired verdicts)" if flagged else
             "Attack removed vs reading kept (text-note accuracy, signs read)")
    return title, header, rows


def plane_both(record: dict[str, Any]) -> Optional[list[str]]:
    """The methods with both flags of :data:`FLAGS` (None: the record has no paired verdicts)."""
    if not record.get("comparisons"):
        return None
    return [r["method"] for r in plane_rows(record)[1:] if r.get("keeps_reading") and r.get("removes_attack")]


PLANE_LABELS = {"text_acc": "defended", "other_text_acc": "unseen", "reading_acc": "reading"}


def _yes(flag: Optional[bool]) -> str:
    return "n/a" if flag is None else "yes" if flag else "no"


def budget_table(record: dict[str, Any]) -> Optional[tuple[list[str], list[list[str]]]]:
    """(header, rows): each method's ``budget`` entries (record ``budget``: method -> dict) and
    seconds per defense; None when the record has neither."""
    budgets = record.get("budget") or {}
    seconds = record.get("seconds") or {}
    methods = [m for m in _methods(record) if m in budgets or m in seconds]
    if not methods:
        return None
    given = [k for m in methods for k, v in (budgets.get(m) or {}).items() if not isinstance(v, str)]
    fields = [f for f in dict.fromkeys(given) if f not in BUDGET_RENAMED]
    header = ["method", *(BUDGET_HEADERS.get(f, f.replace("_", " ")) for f in fields), "s/defense"]
    rows = [[m, *(_budget_value(f, (budgets.get(m) or {}).get(f)) for f in fields),
             _seconds(seconds.get(m, {}).get("mean_per_defense"))] for m in methods]
    return header, rows


# Short column names for the budget entries compare records (per run, the mean; ``seconds`` is the
# ``s/defense`` column already); text entries (the unit note) stay in the JSON.
BUDGET_HEADERS = {"images_seen": "images seen", "optimizer_steps": "steps", "settings_tried": "settings tried",
                  "offline_settings": "offline grid", "runs": "runs", "word_agnostic": "scope"}
BUDGET_RENAMED = {"seconds"}


def _budget_value(field: str, v: Any) -> str:
    if field == "word_agnostic" and v is not None:
        return "any word" if v else "per word"
    return _value(v)


def _seconds(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.1f}"


def _value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def paired_tables(record: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per reference (``unedited``, ``edit``): one row per method and metric."""
    rows_all = record.get("comparisons") or []
    out = []
    for ref in REFERENCES:
        rows = [c for c in rows_all if c["reference"] == ref]
        if not rows:
            continue
        out.append((f"Paired against {ref} (difference in points, same images; Holm over the table's "
                    f"{len(rows_all)} comparisons)",
                    ["method", "metric", "n", "difference [95% CI]", "Holm p", "verdict"],
                    [[c["method"], LABELS.get(c["metric"], c["metric"]), str(c["n"]),
                      f"{pct(c['diff'], True)} [{pct(c['lo'], True)},{pct(c['hi'], True)}]", p_text(c.get("p_holm")),
                      c.get("verdict") or "n/a"] for c in rows]))
    return out


def detail_tables(record: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the per-word, per-seed and strata cells (records that have them)."""
    out = []
    keys = [k for _, k in ALL_METRICS if _n(record, k)]
    for field, title, what in (("by_word", "Per defended word", "word"), ("by_seed", "Per seed", "seed"),
                               ("strata", "By kind and size band (notes of the test sets)", "stratum")):
        table = record.get(field) or {}
        shown = [k for k in keys if any(k in c for per in table.values() for c in per.values())]
        rows = [[m, name, *(f"{cell_text(c.get(k))} n={c.get(k, {}).get('n', 0)}" for k in shown)]
                for m, per in table.items() for name, c in per.items()]
        if rows:
            out.append((title, ["method", what, *(LABELS[k] for k in shown)], rows))
    return out


def report_tables(record: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The HTML compare page's tables: cells, the plane, budget, paired differences, per word, per seed, strata."""
    budget, plane = budget_table(record), plane_table(record)
    return [*cell_tables(record), *([plane] if plane else []), *([("Budget", *budget)] if budget else []),
            *paired_tables(record), *detail_tables(record)]


def verdict_lines(record: dict[str, Any]) -> list[str]:
    """One line per method and reference: the metrics it beats, loses and ties on (from the record's
    computed verdicts, never typed)."""
    out = []
    rows = record.get("comparisons") or []
    for ref in REFERENCES:
        for m in dict.fromkeys(c["method"] for c in rows if c["reference"] == ref):
            by = {v: [LABELS.get(c["metric"], c["metric"]) for c in rows
                      if c["reference"] == ref and c["method"] == m and c.get("verdict") == v]
                  for v in ("beats", "loses", "ties")}
            said = "; ".join(f"{v} on {', '.join(labels)}" for v, labels in by.items() if labels)
            out.append(f"{m} vs {ref}: {said}")
    return out


def interval_note(record: dict[str, Any]) -> str:
    """What the cells are: percent, n, seeds, and the interval kinds the record's cells use."""
    kinds = {c.get("interval") for m, cells in record["cells"].items() if m != BASE for c in cells.values()}
    kinds = sorted(k for k in kinds if k)
    seeds = len(record.get("seeds") or [None])
    how = "; ".join(kinds) if kinds else "none"
    return (f"Cells: percent [95% interval], n = distinct test images, {seeds} seed(s); intervals: {how} "
            "(unedited, which has no seeds: Wilson).")


def render(record: dict[str, Any]) -> str:
    """Every table of ``record`` as markdown, with its notes."""
    parts = [_wrap(interval_note(record))]
    for title, header, rows in cell_tables(record):
        parts += ["", f"**{title}**", "", markdown(header, rows)]
    plane = plane_table(record)
    if plane is not None:
        title, header, rows = plane
        parts += ["", _wrap(f"**{title}**"), "", markdown(header, rows)]
        both = plane_both(record)
        if both is not None:
            parts += ["", _wrap(f"Removes the attack and keeps reading: {', '.join(both) or 'no method'}.")]
    budget = budget_table(record)
    if budget is not None:
        parts += ["", "**Budget**", "", markdown(*budget)]
    paired = paired_tables(record)
    for title, header, rows in paired:
        parts += ["", f"**{title}**", "", markdown(header, rows, left=2)]
    if paired:
        parts += ["", "**Verdicts**", "", *(_wrap(f"- {line}", indent="  ") for line in verdict_lines(record))]
        parts += ["", _wrap(f"Verdict: beats/loses when the Holm-adjusted p < {ALPHA} (exact McNemar on discordant "
                      "images; several seeds: exact sign test on per-image seed means), by the difference's sign "
                      "(attack success: lower is better); otherwise ties.")]
    else:
        parts += ["", _wrap(RERUN) if record.get("raw") and "comparisons" not in record else
                  "paired verdicts: no method besides unedited"]
    notes = record.get("notes") or []
    if notes:
        parts += ["", *(_wrap(f"- {n}", indent="  ") for n in notes)]
    return "\n".join(parts)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, WIDTH, subsequent_indent=indent, break_on_hyphens=False)
