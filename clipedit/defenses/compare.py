"""Every defense on the same budget, tuned on validation only, scored on the same test scenes.

For each seed and defended word, each method defends a fresh copy of the model: the rewrite and the
fine-tuning baselines from the same rendered exemplars of the word (``DefenseConfig.seed`` = the seed);
the word-agnostic peers (Dyslexify, PAINT) from the same typographic training split of that seed
(:mod:`clipedit.defenses.typo_train`), once per seed, scored on every word. Every method's own tuning
uses the validation split; all are scored on the test split: the defended word's notes, other words'
notes (unseen), clean, blank note and signs (reading kept). Every cell carries n and a 95% interval
(:mod:`clipedit.eval.intervals`: Wilson for one seed; over several seeds, the mean with a t interval).

On a user's labelled data (``CompareSettings.data``: ``KIND:PATH`` as ``audit --dataset`` reads it, or
an ImageFolder ``DIR``) the validation/test split is :func:`clipedit.data.splits.split_data`'s seeded
hash of file names (``split_seed``; recorded under ``data``): every method's exemplars, training split
and tuning come from the validation side, every cell from the test side, as
:mod:`clipedit.defenses.user_data` defines them; a metric the data cannot give is left out of the
table and named in ``notes``, never filled in. ``supported``: PAINT's supported task (an ImageFolder).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from clipedit.core.hparams import COUNT, COUNT0, SEED, Bound, check_fields
from clipedit.data.splits import FOLDER, DataSplit, split_data
from clipedit.defenses.defense_prefix import check_text_tower, defense_prefix
from clipedit.defenses.dyslexify import class_token_sites, dyslexify
from clipedit.defenses.paint import paint, supported_task, validation_sets
from clipedit.defenses.resolve import resolve_config
from clipedit.defenses.selection import HeldoutData, heldout_data
from clipedit.defenses.typo_train import typographic_training_set
from clipedit.defenses.typographic import DefenseConfig, defend
from clipedit.defenses.user_data import (
    BenchmarkTest,
    benchmark_counts,
    default_words,
    scoring_sets,
    with_validation_world,
)
from clipedit.errors import ClipeditError, SettingsError
from clipedit.eval.heldout import SCENE_OFFSET
from clipedit.eval.intervals import cell
from clipedit.eval.metrics import evaluate_attacks, evaluate_images
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

#: Methods compare knows, in table order.
COMPARE_METHODS: tuple[str, ...] = ("edit", "dyslexify", "head-ablation-weights", "paint", "defense-prefix",
                                    "finetune-local", "finetune-global")
#: Methods trained on the word-agnostic typographic split (one run per seed serves every word).
WORD_AGNOSTIC = frozenset({"dyslexify", "paint", "defense-prefix"})
#: The selection record of a method with nothing to tune (the rewrite and the fine-tuning baselines here).
FIXED_SETTINGS = "none: the model's default settings (defaults.json); nothing is tuned, so no tolerance applies"
#: Defended words on the model's own world when none are given.
WORLD_WORDS: tuple[str, ...] = ("ipod", "mug", "apple")
#: Why a metric can be missing on a user's data (left out of the table, said in the notes).
MISSING = {"other_text_acc": "no test-side image carries a word other than the defended ones",
           "clean_acc": "the dataset has no clean photos", "blank_acc": "the dataset has no blank-note photos",
           "reading_acc": "no signs were asked for (--n-signs 0)"}
#: Table rows: label, metric key.
METRICS: tuple[tuple[str, str], ...] = (("defended word", "text_acc"), ("unseen words", "other_text_acc"),
                                        ("clean", "clean_acc"), ("blank note", "blank_acc"),
                                        ("reading kept", "reading_acc"))


@dataclass
class CompareSettings:
    """What ``clipedit compare`` runs (defaults: the issue's minimum scale).

    Attributes:
        methods: methods to run (None: every method that applies to the model).
        words: defended words (each defended separately; None: ``WORLD_WORDS`` on the model's world,
            :func:`~clipedit.defenses.user_data.default_words` on ``data``).
        seeds: seeds of exemplars, training splits and training order.
        n_test: test scenes per set (defended word, other words); ``n_signs`` test signs.
        n_train: scenes of the typographic training split (Dyslexify, PAINT).
        n_val: validation scenes per set for the methods' own tuning.
        hparams: method -> settings over its defaults (its hparams class's fields), e.g. a shorter
            ``defense-prefix`` schedule; recorded with the results.
        data: a user's labelled data (``KIND:PATH`` or an ImageFolder), split by ``split_seed``; ``classes``
            its class names (default: the benchmark's or the folder names).
        supported, supported_classes: PAINT's supported task (an ImageFolder) and its class names.
    """

    methods: Optional[tuple[str, ...]] = None
    words: Optional[tuple[str, ...]] = None
    seeds: tuple[int, ...] = (0, 1, 2)
    n_test: int = 1000
    n_signs: int = 1000
    n_train: int = 1000
    n_val: int = 500
    hparams: dict[str, dict] = dataclasses.field(default_factory=dict)
    data: Optional[str] = None
    classes: Optional[tuple[str, ...]] = None
    split_seed: int = 0
    supported: Optional[str] = None
    supported_classes: Optional[tuple[str, ...]] = None

    #: The schema's ranges (types: the annotations), checked on construction (CLI and Python alike).
    BOUNDS: ClassVar[dict[str, Bound]] = {"seeds": SEED, "n_test": COUNT, "n_signs": COUNT0, "n_train": COUNT,
                                          "n_val": COUNT, "split_seed": SEED}

    def __post_init__(self) -> None:
        check_fields(self, self.BOUNDS, SettingsError)


def not_applicable(bundle: ModelBundle, method: str) -> Optional[str]:
    """Why ``method`` does not apply to the model (None when it does)."""
    if method == "dyslexify":
        try:
            class_token_sites(bundle)
        except ClipeditError as e:
            return str(e)
    if method == "defense-prefix":
        try:
            check_text_tower(bundle)
        except ClipeditError as e:
            return str(e)
    if method == "finetune-local":
        from clipedit.core.sites import resolve_site
        from clipedit.defenses.defaults import default_layer

        site = resolve_site(bundle.model, default_layer(bundle))
        if not isinstance(site.weight, torch.nn.Parameter):
            return f"its default layer ({site.layer}) is part of a weight; finetune-local trains whole weights"
    if method in WORD_AGNOSTIC | {"head-ablation-weights"} and (bundle.world is None or not bundle.world.classnames):
        return f"{method} needs a labelled world to draw its training/validation splits from"
    return None


def check_settings(bundle: ModelBundle, settings: CompareSettings) -> tuple[str, ...]:
    """The methods to run; refuses unknown or inapplicable methods, empty seeds/words, empty sets.

    Raises:
        ClipeditError: one line saying what is wrong.
    """
    if not settings.seeds:
        raise ClipeditError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    if settings.words is not None and not settings.words:
        raise ClipeditError("--words is empty: give at least one word to defend against")
    for name in ("n_test", "n_train", "n_val", "n_signs"):
        if getattr(settings, name) < (0 if name == "n_signs" else 1):
            raise ClipeditError(f"{name} must be >= {0 if name == 'n_signs' else 1}, got {getattr(settings, name)}")
    if bundle.world is None or not bundle.world.classnames:
        raise ClipeditError(f"{bundle.name} has no labelled world to compare on (give --data KIND:PATH)")
    stray = sorted(set(settings.hparams) - set(COMPARE_METHODS))
    if stray:
        raise ClipeditError(f"--hparams names unknown method {stray[0]!r} (choose from {', '.join(COMPARE_METHODS)})")
    for m, given in settings.hparams.items():  # wrong fields or values: one line, before any work
        if m in WORD_AGNOSTIC:
            method_hparams(m, given, {})
        else:  # what defend receives, checked as defend checks it (a layer not in the model included)
            if not isinstance(given, dict):
                raise ClipeditError(f"--hparams: the settings of {m} must be a JSON object")
            resolve_config(bundle, DefenseConfig(method=m, method_hparams=given or None))
    if settings.methods is None:
        chosen = tuple(m for m in COMPARE_METHODS if not_applicable(bundle, m) is None)
    else:
        unknown = [m for m in settings.methods if m not in COMPARE_METHODS]
        if unknown:
            raise ClipeditError(f"unknown method {unknown[0]!r} (choose from {', '.join(COMPARE_METHODS)})")
        for m in settings.methods:
            why = not_applicable(bundle, m)
            if why:
                raise ClipeditError(f"{m} does not apply to {bundle.name}: {why}")
        if not settings.methods:
            raise ClipeditError("--methods is empty")
        chosen = tuple(settings.methods)
    if settings.supported is not None and "paint" not in chosen:
        raise ClipeditError("--supported is PAINT's supported task, and paint is not among the methods run "
                            f"({', '.join(chosen)}): add paint to --methods or leave --supported out")
    return chosen


def images_key(images: Sequence, labels: Sequence[int]) -> str:
    """A short digest naming a set of images (a sample of their pixels, their count and labels): two words'
    sets that share it are the same images, counted once in a pooled cell."""
    digest = hashlib.sha1(f"{len(images)}:{list(labels)}".encode())
    for im in list(images[:4]) + list(images[-2:]):
        digest.update(np.asarray(im).tobytes()[:65536])
    return digest.hexdigest()[:16]


def counts(data: HeldoutData | BenchmarkTest, bundle: ModelBundle) -> dict[str, tuple[int, int, str]]:
    """(hits, n, images key) of each metric of ``bundle`` on the held-out data (test split; a benchmark's test
    side: :func:`~clipedit.defenses.user_data.benchmark_counts`). The key names the images behind the metric,
    so that a cell pooled over words counts shared images once (:func:`table_cells`)."""
    if isinstance(data, BenchmarkTest):  # the defended word's photos are its own; every other set is shared
        own = ",".join(sorted(data.words))
        return {k: (h, n, f"benchmark:{k}:{own}" if k == "text_acc" else f"benchmark:{k}")
                for k, (h, n) in benchmark_counts(data, bundle).items()}
    held = dataclasses.replace(data.bundle, model=bundle.model)
    predictor = data.predictor.with_bundle(held)
    attacks, labels = data.sets.edited
    ed = evaluate_attacks(held, predictor, attacks, labels, progress=False, batch_size=256)
    out = {"text_acc": (round(ed["text_acc"] * ed["n_text"]), ed["n_text"],
                        images_key([a.attacked for a in attacks], labels)),
           "clean_acc": (round(ed["clean_acc"] * ed["n"]), ed["n"], images_key([a.clean for a in attacks], labels)),
           "blank_acc": (round(ed["blank_acc"] * ed["n"]), ed["n"], images_key([a.blank for a in attacks], labels))}
    if data.sets.other is not None:
        other, other_labels = data.sets.other
        ot = evaluate_attacks(held, predictor, other, other_labels, progress=False, batch_size=256)
        out["other_text_acc"] = (round(ot["text_acc"] * ot["n_text"]), ot["n_text"],
                                 images_key([a.attacked for a in other], other_labels))
    if data.signs is not None:
        r = evaluate_images(held, predictor, data.signs.images, data.signs.labels, 256, progress=False)
        out["reading_acc"] = (round(r["top1"] * r["n"]), r["n"], images_key(data.signs.images, data.signs.labels))
    return out


def method_hparams(method: str, given: dict, fixed: dict[str, Any]):
    """``method``'s settings: its defaults, then ``fixed`` (compare's budget: n_train, seed …), then ``given``."""
    from clipedit.defenses.methods import method_spec

    spec = method_spec(method)
    if not isinstance(given, dict):
        raise ClipeditError(f"--hparams: the settings of {method} must be a JSON object")
    base = spec.hparams_cls().to_dict()
    return spec.hparams_cls.from_dict({**base, **{k: v for k, v in fixed.items() if k in base}, **given})


def patch_validation(base: ModelBundle, settings: CompareSettings, shared: dict[str, Any]):
    """The patching task's validation sets (notes, clean, signs, a ``--supported`` task), rendered once per
    comparison and shared by the word-agnostic methods that tune on them (PAINT, Defense-Prefix)."""
    if "patch-val" not in shared:
        task = supported_task(base, settings.supported, settings.supported_classes) if settings.supported else None
        shared["patch-val"] = validation_sets(base, settings.n_val, min(settings.n_signs, settings.n_val),
                                              supported=task)
    return shared["patch-val"]


def _copy(bundle: ModelBundle) -> ModelBundle:
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def run_method(base: ModelBundle, method: str, word: Optional[str], seed: int, settings: CompareSettings,
               shared: dict[str, Any]) -> tuple[ModelBundle, dict[str, Any], float]:
    """Defend a copy of ``base`` with ``method``; returns (bundle, details, seconds incl. its own data)."""
    bundle = _copy(base)
    start = time.perf_counter()
    details: dict[str, Any] = {}
    extra = 0.0
    given, fixed = settings.hparams.get(method, {}), {"n_train": settings.n_train, "seed": seed}
    if method in WORD_AGNOSTIC:
        key = f"train:{seed}"
        if key not in shared:
            t0 = time.perf_counter()
            shared[key] = typographic_training_set(base, settings.n_train, seed)
            shared[key + ":seconds"] = time.perf_counter() - t0
        train = shared[key]
        extra = shared[key + ":seconds"]  # each method that uses the split pays for rendering it
        start = time.perf_counter()
        if method == "dyslexify":
            r = dyslexify(bundle, method_hparams(method, given, fixed), train=train)
            details = {"heads": [list(h) for h in r.heads], "scores": r.scores, "steps": r.steps, "base": r.base,
                       "rule": r.rule, "selection": r.details["selection"]}
        elif method == "defense-prefix":  # scores the patching task's notes and clean scenes of the shared set
            r = defense_prefix(bundle, method_hparams(method, given, {**fixed, "n_val": settings.n_val}),
                               train=train, val=patch_validation(base, settings, shared))
            details = {**r.summary(), "selection": {"rule": r.rule, "tolerance": None}}
        else:
            supported = {"supported": settings.supported, "supported_classes": settings.supported_classes} \
                if settings.supported else {}
            r = paint(bundle, method_hparams(method, given, {**fixed, **supported}), train=train,
                      val=patch_validation(base, settings, shared))
            details = {"alpha": r.alpha, "alpha_curve": r.rows, "rule": r.rule, "loss": r.loss,
                       "selection": r.details["selection"]}
    else:
        defense = defend(bundle, word, DefenseConfig(method=method, seed=seed, method_hparams=given or None))
        details = {"layer": defense.layer}
        if method == "head-ablation-weights":
            details["heads"] = [list(h) for h in defense.details["heads"]]
            details["selection"] = defense.details["selection"]
        else:
            details["selection"] = {"rule": FIXED_SETTINGS, "tolerance": None}
    return bundle, details, time.perf_counter() - start + extra


def resolved(settings: CompareSettings, split: Optional[DataSplit] = None) -> CompareSettings:
    """``settings`` with its words filled in (``WORLD_WORDS``, or the data's defaults)."""
    if settings.words is not None:
        return settings
    return dataclasses.replace(settings, words=tuple(default_words(split)) if split is not None else WORLD_WORDS)


def compare(base: ModelBundle, settings: CompareSettings, progress: Callable[[str], None] = log.info,
            on_method: Optional[Callable[[dict[str, Any]], None]] = None,
            split: Optional[DataSplit] = None) -> dict[str, Any]:
    """Run every method of ``settings`` and score it; returns the record (cells, raw counts, details).

    Args:
        on_method: called with the record so far after each method (e.g. to keep a partial file).
        split: ``settings.data`` already split (default: split here).
    """
    split = split if split is not None or settings.data is None else \
        split_data(settings.data, settings.split_seed, settings.classes)
    if split is not None:  # every method draws from the validation side; the cells come from the test side
        base = with_validation_world(base, split)
    settings = resolved(settings, split)
    methods = check_settings(base, settings)
    t_all = time.perf_counter()
    if split is not None:
        tests = scoring_sets(base, split, settings.words, settings.n_test, settings.n_signs)
    else:
        tests = {w: heldout_data(base, [w], settings.n_test, settings.n_signs or None, split="test",
                                 offset=i * SCENE_OFFSET)  # each word its own scenes and signs
                 for i, w in enumerate(settings.words)}
    raw: dict[str, dict[str, dict[str, dict]]] = {"unedited": {"-": {w: counts(tests[w], base)
                                                                    for w in settings.words}}}
    seconds: dict[str, list[float]] = {}
    details: dict[str, dict] = {}
    shared: dict[str, Any] = {}
    for method in methods:
        raw[method], seconds[method], details[method] = {}, [], {}
        for seed in settings.seeds:
            raw[method][str(seed)] = {}
            if method in WORD_AGNOSTIC:
                bundle, det, secs = run_method(base, method, None, seed, settings, shared)
                seconds[method].append(secs)
                details[method][str(seed)] = det
                for w in settings.words:
                    raw[method][str(seed)][w] = counts(tests[w], bundle)
            else:
                for w in settings.words:
                    bundle, det, secs = run_method(base, method, w, seed, settings, shared)
                    seconds[method].append(secs)
                    details[method][f"{seed}:{w}"] = det
                    raw[method][str(seed)][w] = counts(tests[w], bundle)
            progress(f"{method} seed {seed}: {sum(seconds[method]):.0f} s so far")
        if on_method is not None:
            on_method(_record(methods, settings, raw, seconds, details, t_all, split))
    return _record(methods, settings, raw, seconds, details, t_all, split)


def _record(methods, settings, raw, seconds, details, t_all, split=None) -> dict[str, Any]:
    cells = {m: table_cells(raw[m]) for m in raw}
    record = {"methods": list(methods), "words": list(settings.words), "seeds": list(settings.seeds),
              "settings": dataclasses.asdict(settings), "cells": cells, "raw": raw,
              "seconds": {m: {"mean_per_defense": sum(s) / len(s), "runs": len(s), "total": sum(s)}
                          for m, s in seconds.items()},
              "details": details, "wall_seconds": time.perf_counter() - t_all}
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
        notes.append(f"PAINT's supported task: {record['settings']['supported']}")
    return notes


def table_cells(per_seed: dict[str, dict[str, dict[str, Sequence]]]) -> dict[str, dict]:
    """Cells of one method: per metric, the accuracy pooled over words within each seed, its n the number of
    *distinct* images behind it (sets that several words share, by their images key, count once: the
    same clean scenes scored for three words are n scenes, not 3n), then :func:`cell`."""
    out = {}
    for _, key in METRICS:
        seeds = []
        for words in per_seed.values():
            entries = [c[key] for c in words.values() if key in c]
            if not entries:
                continue
            hits, total = sum(e[0] for e in entries), sum(e[1] for e in entries)
            distinct = {(e[2] if len(e) > 2 else i): e[1] for i, e in enumerate(entries)}
            n = sum(distinct.values())
            seeds.append((round(hits * n / total) if total else 0, n))
        out[key] = cell(seeds)
    return out


def flat_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """clip_benchmark-style flat scalars: ``{method}/{metric}``, ``…_lo``, ``…_hi``, ``…_n``, seconds."""
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
    return flat


def pareto_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Gain vs cost of each method against the unedited model (means), for the trade-off plot."""
    base = record["cells"]["unedited"]

    def delta(c: dict, key: str) -> float:
        a, b = c.get(key, {}).get("value"), base.get(key, {}).get("value")
        return 0.0 if a is None or b is None else a - b

    return [{"method": m, "gain": delta(c, "text_acc"), "other_gain": delta(c, "other_text_acc"),
             "clean_loss": -delta(c, "clean_acc"), "blank_loss": -delta(c, "blank_acc")}
            for m, c in record["cells"].items() if m != "unedited"]


def table_rows(record: dict[str, Any], fmt: Callable[[dict], str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one column per method (unedited first), one row per metric, then seconds."""
    methods = list(record["cells"])
    rows = [[label, *(fmt(record["cells"][m][key]) for m in methods)] for label, key in METRICS
            if record["cells"]["unedited"][key]["n"]]  # a metric the data cannot give: left out (notes)
    rows.append(["seconds per defense", *("" if m == "unedited" else f"{record['seconds'][m]['mean_per_defense']:.1f}"
                                          for m in methods)])
    return ["", *methods], rows


def words_label(words: Sequence[str]) -> str:
    return ", ".join(words)
