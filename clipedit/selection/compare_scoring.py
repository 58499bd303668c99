"""Scoring one model on compare's test sets: per metric the hits, n, a key naming the images behind it
(a cell pooled over words counts shared images once) and the per-image outcomes, and the strata of each
note set (kind, size band) the strata cells group them by."""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from clipedit.attacks.factors import size_band
from clipedit.data.classnames import class_index
from clipedit.data.prepare.user_data import (
    BenchmarkTest,
    benchmark_counts,
)
from clipedit.eval.compare_stats import bits
from clipedit.eval.metrics import evaluate_attacks, evaluate_images
from clipedit.eval.pick import HeldoutData
from clipedit.models.bundle import ModelBundle


def images_key(images: Sequence, labels: Sequence[int]) -> str:
    """A short digest naming a set of images (a sample of their pixels, their count and labels): two words'
    sets that share it are the same images, counted once in a pooled cell."""
    digest = hashlib.sha1(f"{len(images)}:{list(labels)}".encode())
    for im in list(images[:4]) + list(images[-2:]):
        digest.update(np.asarray(im).tobytes()[:65536])
    return digest.hexdigest()[:16]


def counts(data: HeldoutData | BenchmarkTest, bundle: ModelBundle) -> dict[str, list]:
    """``[hits, n, images key, bits]`` of each metric of ``bundle`` on the held-out data (test split; a
    benchmark's test side: :func:`~clipedit.data.prepare.user_data.benchmark_counts`). The key names the images
    behind the metric, so that a cell pooled over words counts shared images once; ``bits`` is the per-image
    outcome (``"1"`` correct; for attack success, ``"1"`` = the prediction is the written word), in the set's
    order, from which :mod:`clipedit.eval.compare_stats` computes every statistic."""
    if isinstance(data, BenchmarkTest):  # the defended word's photos are its own; every other set is shared
        own = ",".join(sorted(data.words))
        return {k: [h, n, f"benchmark:{k}:{own}" if k in ("text_acc", "attack_success_rate") else f"benchmark:{k}", b]
                for k, (h, n, b) in benchmark_counts(data, bundle).items()}
    held = dataclasses.replace(data.bundle, model=bundle.model)
    predictor = data.predictor.with_bundle(held)
    attacks, labels = data.sets.edited
    ed = evaluate_attacks(held, predictor, attacks, labels, progress=False, batch_size=256)
    key = images_key([a.attacked for a in attacks], labels)
    out = {**_text_entries(ed, attacks, labels, predictor.classnames, key),
           "clean_acc": _entry(ed["predictions"]["clean"], labels, images_key([a.clean for a in attacks], labels)),
           "blank_acc": _entry(ed["predictions"]["blank"], labels, images_key([a.blank for a in attacks], labels))}
    if data.sets.other is not None:
        other, other_labels = data.sets.other
        ot = evaluate_attacks(held, predictor, other, other_labels, progress=False, batch_size=256)
        out["other_text_acc"] = _text_entries(ot, other, other_labels, predictor.classnames,
                                              images_key([a.attacked for a in other], other_labels))["text_acc"]
    if data.signs is not None:
        r = evaluate_images(held, predictor, data.signs.images, data.signs.labels, 256, progress=False)
        out["reading_acc"] = _entry(r["predictions"], data.signs.labels,
                                    images_key(data.signs.images, data.signs.labels))
    return out


def _entry(predicted: Sequence[int], wanted: Sequence[int], key: str) -> list:
    flags = [int(p) == int(w) for p, w in zip(predicted, wanted)]
    return [sum(flags), len(flags), key, bits(flags)]


def _text_rows(attacks: Sequence, labels: Sequence[int], classnames: Sequence[str]) -> tuple[list[int], list[int]]:
    """Rows of notes not naming the true class (text accuracy) and, of those, rows naming another class
    (attack success), as :func:`~clipedit.eval.metrics.score_attacks` counts them."""
    words = [class_index(a.text, classnames) for a in attacks]
    counted = [i for i, (w, y) in enumerate(zip(words, labels)) if w != y]
    return counted, [i for i in counted if words[i] is not None]


def _text_entries(ev: dict, attacks: Sequence, labels: Sequence[int], classnames: Sequence[str],
                  key: str) -> dict[str, list]:
    counted, targeted = _text_rows(attacks, labels, classnames)
    pred = ev["predictions"]["text"]
    out = {"text_acc": _entry([pred[i] for i in counted], [labels[i] for i in counted], f"{key}:text")}
    if targeted:
        out["attack_success_rate"] = _entry([pred[i] for i in targeted],
                                            [class_index(attacks[i].text, classnames) for i in targeted],
                                            f"{key}:targeted")
    return out


def image_strata(tests: dict[str, Any]) -> dict[str, list[list[Optional[str]]]]:
    """``{images key: [[kind, size band], …]}`` of every note set of the world's test data, aligned with
    :func:`counts`' bits, for the strata cells (a benchmark's photos have no rendered kinds: none)."""
    out: dict[str, list[list[Optional[str]]]] = {}
    for data in tests.values():
        if isinstance(data, BenchmarkTest):
            continue
        sets = [data.sets.edited] + ([data.sets.other] if data.sets.other is not None else [])
        for attacks, labels in sets:
            key = images_key([a.attacked for a in attacks], labels)
            counted, targeted = _text_rows(attacks, labels, data.predictor.classnames)
            for suffix, rows in ((":text", counted), (":targeted", targeted)):
                out[key + suffix] = [[attacks[i].style.kind, size_band(attacks[i].style.font_size)]
                                     for i in rows]
    return out
