"""compare's record from its finished units: the raw per-image outcomes, the cells and paired comparisons
(:mod:`clipedit.eval.compare_stats`), each method's budget, the notes on what the table leaves out and
why, and the flat scalars and gain-vs-cost rows the CLI writes and plots."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Optional

from clipedit.data.prepare.word_split import WordSplit
from clipedit.data.splits import FOLDER, DataSplit
from clipedit.eval.compare_stats import METRICS, method_cells, statistics
from clipedit.selection.compare_units import (
    UNEDITED,
    Unit,
    unit_key,
)

#: Why a metric can be missing on a user's data (left out of the table, said in the notes).
MISSING = {"other_text_acc": "no test-side image carries a held-out class word (the word-disjoint split's)",
           "clean_acc": "the dataset has no clean photos", "blank_acc": "the dataset has no blank-note photos",
           "reading_acc": "no signs were asked for (--n-signs 0)"}


def assemble_units(units: Sequence[Unit], done: dict[str, dict]) -> tuple[dict, dict, dict]:
    """(raw, seconds, details) of the finished units, in the one-process order of ``units``."""
    raw: dict[str, dict[str, dict[str, dict]]] = {}
    seconds: dict[str, list[float]] = {}
    details: dict[str, dict] = {}
    for unit in units:
        result = done.get(unit_key(unit))
        if result is None:
            continue
        method, seed, word = unit
        raw.setdefault(method, {}).setdefault(seed, {}).update(result["raw"])
        if unit == UNEDITED:
            continue
        seconds.setdefault(method, []).append(result["seconds"])
        details.setdefault(method, {})[seed if word is None else f"{seed}:{word}"] = result["details"]
    return raw, seconds, details


def budgets(details: dict[str, dict[str, dict]]) -> dict[str, dict[str, Any]]:
    """Each method's budget beside the others: per run (a seed, or a seed and word), the mean of images
    seen, optimizer steps, settings tried on validation and seconds, the offline settings behind its
    defaults, the number of runs, and whether it is word-agnostic (one run serves every word)."""
    out = {}
    for method, runs in details.items():
        spent = [d["budget"] for d in runs.values() if d.get("budget")]
        if not spent:
            continue

        def mean(key: str, spent=spent) -> float:
            return sum(b.get(key, 0) for b in spent) / len(spent)

        out[method] = {"images_seen": mean("images_seen"), "optimizer_steps": mean("optimizer_steps"),
                       "settings_tried": mean("settings_tried"), "seconds": mean("seconds"),
                       "offline_settings": max(b.get("offline_settings", 0) for b in spent), "runs": len(spent),
                       "word_agnostic": bool(next(iter(runs.values())).get("word_agnostic")),
                       "unit": "per run (mean); offline_settings: the grid behind the defaults, once"}
    return out


def build_record(raw, seconds, details, methods, settings, t_all, split=None, words_apart: Optional[WordSplit] = None,
            strata=None, final: bool = True) -> dict[str, Any]:
    """The record; its statistics from the per-image outcomes in ``raw`` (a partial record: the cells only)."""
    stats = statistics(raw, methods, strata) if final else {"cells": {m: method_cells(raw[m]) for m in raw}}
    record = {"methods": list(methods), "words": list(settings.words), "seeds": list(settings.seeds),
              "settings": dataclasses.asdict(settings), **stats, "raw": raw,
              "seconds": {m: {"mean_per_defense": sum(s) / len(s), "runs": len(s), "total": sum(s)}
                          for m, s in seconds.items()},
              "details": details, "budget": budgets(details), "wall_seconds": time.perf_counter() - t_all}
    if words_apart is not None:
        record["word_split"] = words_apart.record()
    if split is not None:
        record["data"] = split.record()
    record["notes"] = data_notes(record, split)
    return record


def data_notes(record: dict[str, Any], split: Optional[DataSplit] = None) -> list[str]:
    """What the table leaves out and why, and where each figure comes from on a user's data."""
    base = record["cells"]["unedited"]
    notes = [f"{label}: left out ({MISSING.get(key, 'not measured')})" for label, key in METRICS
             if not base.get(key, {}).get("n")]
    if split is not None:
        notes.append(f"split: {split.record()['rule']} (seed {split.seed}); methods tuned on the validation side "
                     f"({len(split.validation)} images), cells from the test side ({len(split.test)} images)")
        if split.layout == FOLDER:
            notes.append("notes rendered by clipedit on the test photos (test split's held-out styles), one scene "
                         "a photo and set")
        else:
            notes.append("the benchmark's own test photos; synthetic (rendered) photos are not scored")
        if base.get("reading_acc", {}).get("n"):
            notes.append("reading kept: clipedit's signs of the data's class names on plain canvases (rendered, "
                         "not the data's photos)")
    if record["settings"].get("supported"):
        notes.append(f"supported task (PAINT, Defense-Prefix): {record['settings']['supported']}")
    if record.get("word_split"):
        notes.append(f"unseen words: {', '.join(record['word_split']['heldout'])}, held out of every method's "
                     "training, rendering and validation" + ("; the benchmark's photos written with any other "
                                                             "word (a trainable class word, or no class name) "
                                                             "count in no word cell"
                                                             if split is not None and split.layout != FOLDER
                                                             else ""))
    elif split is not None:
        notes.append("unseen words: fewer than two class words besides the defended ones, so none can be held "
                     "out of the methods: no word-disjoint split, no unseen-words cell")
    return notes


def flat_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """clip_benchmark-style flat scalars: ``{method}/{metric}``, ``…_lo``, ``…_hi``, ``…_n``, seconds; and each
    paired comparison's ``{method}/vs_{reference}/{metric}_diff`` (``…_lo``, ``…_hi``) and ``…_p_holm``."""
    flat: dict[str, Any] = {}
    for method, cells in record["cells"].items():
        for key, c in cells.items():
            if not c["n"]:
                continue  # not measured on this data: left out, never filled in
            flat[f"{method}/{key}"] = c["value"]
            flat[f"{method}/{key}_lo"] = c["lo"]
            flat[f"{method}/{key}_hi"] = c["hi"]
            flat[f"{method}/{key}_n"] = c["n"]
        if method in record["seconds"]:
            flat[f"{method}/seconds"] = record["seconds"][method]["mean_per_defense"]
    for c in record.get("comparisons", []):
        if c.get("diff") is not None:
            stem = f"{c['method']}/vs_{c['reference']}/{c['metric']}"
            flat.update({f"{stem}_diff": c["diff"], f"{stem}_lo": c["lo"], f"{stem}_hi": c["hi"],
                         f"{stem}_p_holm": c["p_holm"]})
    return flat


def pareto_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Gain vs cost of each method against the unedited model (means), for the trade-off plot; with each
    method's place on the defended word vs reading plane (:func:`clipedit.eval.compare_table.plane_rows`:
    text-note and reading accuracies with their intervals, and the flags), for the plot's second panel."""
    from clipedit.eval.compare_table import plane_rows

    base = record["cells"]["unedited"]
    plane = {r["method"]: r for r in plane_rows(record)}

    def delta(c: dict, key: str) -> float:
        a, b = c.get(key, {}).get("value"), base.get(key, {}).get("value")
        return 0.0 if a is None or b is None else a - b

    return [{**plane[m], "method": m, "gain": delta(c, "text_acc"), "other_gain": delta(c, "other_text_acc"),
             "clean_loss": -delta(c, "clean_acc"), "blank_loss": -delta(c, "blank_acc")}
            for m, c in record["cells"].items() if m != "unedited"]
