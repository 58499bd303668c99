"""Accuracy of a predictor on a published typographic benchmark (real photos with real writing)."""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from clipedit.data.benchmarks import LoadedBenchmark
from clipedit.data.classnames import class_index, labels_from_names, normalize_name
from clipedit.eval.metrics import _mean, benchmark_names, by_class, by_word, classification_metrics, predict_logits
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

#: Per image kind, the prefix of its figures: ``text_acc`` / ``attack_success_rate`` for real writing,
#: ``synth_text_acc`` / ``synth_attack_success_rate`` for rendered writing (SCAM's SynthSCAM).
WRITTEN_KINDS = {"attacked": "", "synthetic": "synth_"}


def evaluate_benchmark(bundle: ModelBundle, predictor: Predictor, data: LoadedBenchmark,
                       batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Accuracy on a benchmark's attacked photos and, where it has them, its clean and blank ones.

    Args:
        bundle: the model.
        predictor: the head over ``data.classnames``.
        data: the benchmark's decodable images and their records.

    Returns:
        Flat figures: acc1, acc5 (>= 5 classes), mean_per_class_recall on the n_attacked attacked
        photos (clip_benchmark's names; on all photos when none is attacked); text_acc / n_text over attacked
        photos whose word is not their class; attack_success_rate / n_word_in_classes (prediction ==
        the word) over those whose word is another class; clean_acc / n_clean and blank_acc / n_blank
        where the set has those kinds; the same with ``synth_`` for synthetic writing; n (images
        evaluated) and n_skipped (images that did not decode). Beside them: by_word, by_class,
        skipped [[path, reason]] and predictions (class index per image).
    """
    records = data.records
    names = predictor.classnames
    target = torch.tensor(labels_from_names([r.true_class for r in records], names))
    words = torch.tensor([-1 if r.word is None or class_index(r.word, names) is None else class_index(r.word, names)
                          for r in records])
    logits = predict_logits(bundle, predictor, data.images, batch_size, "benchmark images", progress)
    pred = logits.argmax(dim=1)
    correct = pred == target
    kinds = [r.kind for r in records]
    is_kind = {k: torch.tensor([x == k for x in kinds]) for k in set(kinds)}

    attacked = is_kind.get("attacked", torch.zeros(len(records), dtype=torch.bool))
    main = attacked if attacked.any() else torch.ones(len(records), dtype=torch.bool)
    top = classification_metrics(logits[main], target[main].tolist())
    result: dict[str, Any] = benchmark_names(top)
    result.update({"n": len(records), "n_attacked": int(attacked.sum()),
                   "n_skipped": max(data.n_skipped, len(data.skipped))})
    own_word = torch.tensor([r.word is not None and normalize_name(r.word) == normalize_name(r.true_class)
                             for r in records])
    hits: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for kind in ("clean", "blank"):
        if kind in is_kind:
            result[f"{kind}_acc"] = _mean(correct[is_kind[kind]])
            result[f"n_{kind}"] = int(is_kind[kind].sum())
            hits[kind], masks[kind] = correct, is_kind[kind]
    for kind, prefix in WRITTEN_KINDS.items():
        if kind not in is_kind:
            continue
        counted = is_kind[kind] & ~own_word
        targeted = counted & (words >= 0)
        result[f"{prefix}text_acc"] = _mean(correct[counted])
        result[f"n_{prefix}text"] = int(counted.sum())
        result[f"{prefix}attack_success_rate"] = _mean((pred == words)[targeted])
        result[f"n_{prefix}word_in_classes"] = int(targeted.sum())
        hits[f"{prefix}text"], masks[f"{prefix}text"] = correct, counted
    written = attacked | is_kind.get("synthetic", torch.zeros_like(attacked))
    texts = [r.word if r.word is not None else "" for r in records]
    index = written.nonzero().flatten().tolist()
    result["by_word"] = by_word([texts[i] for i in index], words[index], ~own_word[index], correct[index],
                                (pred == words)[index]) if index else {}
    result["by_class"] = by_class(target, names, hits, masks)
    result["skipped"] = [list(s) for s in data.skipped]
    result["predictions"] = pred.tolist()
    return result


def kind_rows(metrics: dict[str, Any], after: Optional[dict[str, Any]] = None) -> list[list[Any]]:
    """Printed rows for a benchmark's figures: label, value (or before, after), n."""
    rows = []
    for label, key, n_key in (("attacked photos (top-1)", "acc1", "n_attacked"),
                              ("clean photos", "clean_acc", "n_clean"),
                              ("blank notes", "blank_acc", "n_blank"),
                              ("text notes (word not the class)", "text_acc", "n_text"),
                              ("attack success", "attack_success_rate", "n_word_in_classes"),
                              ("synthetic notes", "synth_text_acc", "n_synth_text"),
                              ("synthetic attack success", "synth_attack_success_rate", "n_synth_word_in_classes")):
        if key == "acc1" and metrics.get("n_attacked") == 0:
            label, n_key = "all photos (top-1; none attacked)", "n"
        if key in metrics:
            values = [metrics[key]] if after is None else [metrics[key], after.get(key)]
            rows.append([label, *values, metrics.get(n_key, metrics["n"])])
    return rows
