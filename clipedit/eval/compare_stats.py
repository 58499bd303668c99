"""A comparison's statistics from its per-image outcomes: cells, per-word and per-seed cells, strata, and
every method against ``unedited`` and ``edit`` as a paired difference with Holm-corrected verdicts.

The input is a compare record's ``raw``: ``{method: {seed: {word: {metric: [hits, n, key, bits]}}}}``, where
``key`` names the set of images (two words' sets with the same key are the same images) and ``bits`` is one
``"0"``/``"1"`` per image of that set, in the set's order (``unedited`` has the one seed ``"-"``). An image is
``(key, position)``; a method's outcome on it in a seed is the mean over the words whose set holds it. All
statistics are recomputed from these, so they can be checked from the JSON alone (:mod:`clipedit.eval.paired`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from clipedit.attacks.factors import KIND_GROUPS, SIZE_BANDS
from clipedit.eval.paired import accuracy_cell, paired_difference, with_verdicts

#: Table columns: label, metric key (accuracies; higher is better), then attack success (lower is better).
METRICS: tuple[tuple[str, str], ...] = (("defended word", "text_acc"), ("unseen words", "other_text_acc"),
                                        ("clean", "clean_acc"), ("blank note", "blank_acc"),
                                        ("reading kept", "reading_acc"))
ATTACK_SUCCESS = ("attack success", "attack_success_rate")
ALL_METRICS: tuple[tuple[str, str], ...] = (*METRICS, ATTACK_SUCCESS)
LOWER_IS_BETTER = frozenset({"attack_success_rate"})
#: The methods every other one is compared with, in this order.
REFERENCES: tuple[str, ...] = ("unedited", "edit")
BASE = "unedited"
EMPTY = {"value": None, "lo": None, "hi": None, "n": 0, "seeds": 0}

Raw = dict[str, dict[str, dict[str, Sequence]]]  # seed -> word -> metric -> [hits, n, key, bits]


def bits(flags: Sequence[Any]) -> str:
    """Per-image outcomes (truthy = correct) as a compact ``"0101…"`` string."""
    return "".join("1" if f else "0" for f in flags)


def has_outcomes(raw: dict[str, Raw]) -> bool:
    """Whether a record's ``raw`` carries per-image outcomes (records written before them do not)."""
    entries = [e for per_seed in raw.values() for words in per_seed.values() for c in words.values()
               for e in c.values()]
    return bool(entries) and all(len(e) > 3 and isinstance(e[3], str) for e in entries)


def outcome_matrix(per_seed: Raw, metric: str, words: Optional[Sequence[str]] = None,
                   seeds: Optional[Sequence[str]] = None) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """(outcomes (seeds, distinct images), image ids) of one method and metric, over ``words``/``seeds``
    (default all). Raises ValueError if a seed leaves out an image another seed scored."""
    seeds = list(per_seed) if seeds is None else [str(s) for s in seeds]
    ids: dict[tuple[str, int], int] = {}
    for s in seeds:
        for w, c in per_seed[s].items():
            if (words is None or w in words) and metric in c:
                key, n = str(c[metric][2]), int(c[metric][1])
                for i in range(n):
                    ids.setdefault((key, i), len(ids))
    total, count = np.zeros((len(seeds), len(ids))), np.zeros((len(seeds), len(ids)))
    for row, s in enumerate(seeds):
        for w, c in per_seed[s].items():
            if (words is None or w in words) and metric in c:
                key, flags = str(c[metric][2]), c[metric][3]
                cols = [ids[(key, i)] for i in range(len(flags))]
                total[row, cols] += np.frombuffer(flags.encode(), dtype=np.uint8) - ord("0")
                count[row, cols] += 1
    if (count == 0).any():
        raise ValueError(f"{metric}: some seeds did not score every image")
    return total / np.maximum(count, 1), list(ids)


def _cell(per_seed: Raw, metric: str, **select) -> dict[str, Any]:
    a, _ = outcome_matrix(per_seed, metric, **select)
    return accuracy_cell(a) if a.shape[1] else dict(EMPTY)


def method_cells(per_seed: Raw) -> dict[str, dict[str, Any]]:
    """Per metric: the cell pooled over words and seeds (n = distinct images)."""
    return {key: _cell(per_seed, key) for _, key in ALL_METRICS}


def word_cells(per_seed: Raw) -> dict[str, dict[str, dict[str, Any]]]:
    """Per defended word, per metric: the cell over seeds."""
    words = list(dict.fromkeys(w for c in per_seed.values() for w in c))
    return {w: {key: _cell(per_seed, key, words=[w]) for _, key in ALL_METRICS} for w in words}


def seed_cells(per_seed: Raw) -> dict[str, dict[str, dict[str, Any]]]:
    """Per seed, per metric: the cell pooled over words (one seed: Wilson)."""
    return {s: {key: _cell(per_seed, key, seeds=[s]) for _, key in ALL_METRICS} for s in per_seed}


def strata_cells(per_seed: Raw, image_strata: dict[str, list[Sequence[Optional[str]]]]) -> dict[str, dict]:
    """Per stratum (kind group of :data:`~attacks.factors.KIND_GROUPS`, and kind group x size band): the cell
    of each metric whose images are labelled in ``image_strata`` (``{key: [[kind, band], …]}`` aligned with the
    set's images)."""
    out: dict[str, dict] = {}
    for _, key in ALL_METRICS:
        a, ids = outcome_matrix(per_seed, key)
        if not a.shape[1] or not all(k in image_strata for k, _ in ids):
            continue
        names = [_strata_names(*image_strata[k][i]) for k, i in ids]
        present = {n for row in names for n in row}
        order = [n for g in KIND_GROUPS for n in (g, *(f"{g}, size {b}" for b in SIZE_BANDS)) if n in present]
        for name in order:
            cols = [j for j, row in enumerate(names) if name in row]
            out.setdefault(name, {})[key] = accuracy_cell(a[:, cols])
    return out


def _strata_names(kind: Optional[str], band: Optional[str]) -> tuple[str, ...]:
    """The strata an image counts in: each kind group holding its kind, and each group x its size band."""
    groups = [g for g, kinds in KIND_GROUPS.items() if kind in kinds]
    return (*groups, *(f"{g}, size {band}" for g in groups if band))


def comparisons(raw: dict[str, Raw], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Every method against each reference it is not (``unedited``, ``edit`` when run) on every metric both
    measured, as paired differences on the same images, with Holm-adjusted p and verdicts over the lot."""
    rows = []
    for ref in REFERENCES:
        if ref not in raw:
            continue
        for m in methods:
            if m == ref or m not in raw or (ref == "edit" and m == BASE):
                continue
            for _, key in ALL_METRICS:
                a, ids_a = outcome_matrix(raw[m], key)
                b, ids_b = outcome_matrix(raw[ref], key)
                if not a.shape[1] or not b.shape[1]:
                    continue
                shared = {i: j for j, i in enumerate(ids_b)}
                cols = [(ja, shared[i]) for ja, i in enumerate(ids_a) if i in shared]
                if not cols:
                    continue
                d = paired_difference(a[:, [c[0] for c in cols]], b[:, [c[1] for c in cols]])
                rows.append({"method": m, "reference": ref, "metric": key,
                             "higher_is_better": key not in LOWER_IS_BETTER, **d})
    return with_verdicts(rows)


def statistics(raw: dict[str, Raw], methods: Sequence[str],
               image_strata: Optional[dict[str, list]] = None) -> dict[str, Any]:
    """Everything the record keeps from per-image outcomes: ``cells``, ``by_word``, ``by_seed``, ``strata``,
    ``comparisons`` (``unedited`` first, then ``methods``)."""
    order = [m for m in (BASE, *methods) if m in raw]
    out = {"cells": {m: method_cells(raw[m]) for m in order},
           "by_word": {m: word_cells(raw[m]) for m in order},
           "by_seed": {m: seed_cells(raw[m]) for m in order if m != BASE},
           "comparisons": comparisons(raw, methods)}
    if image_strata:
        out["strata"] = {m: strata_cells(raw[m], image_strata) for m in order}
    return out
