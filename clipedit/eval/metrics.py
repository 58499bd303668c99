"""Accuracy of a predictor on images, and on typographic attacks (clean / blank note / text note)."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, Optional

import torch
from PIL import Image
from tqdm import tqdm

from clipedit.attacks import Attack
from clipedit.data.classnames import class_index
from clipedit.data.images import to_batches
from clipedit.errors import ClipeditError
from clipedit.eval.predictor import Predictor
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(bundle: ModelBundle, predictor: Predictor, images: Sequence[Image.Image],
                   batch_size: int = 64, desc: str = "predicting", progress: bool = True) -> torch.Tensor:
    """Logits (N, n_classes) on the CPU for ``images``, preprocessed with ``bundle.preprocess``."""
    if len(images) == 0:
        raise ClipeditError("no images to evaluate")
    out = []
    n_batches = -(-len(images) // batch_size)
    for batch in tqdm(to_batches(images, bundle.preprocess, batch_size), total=n_batches, desc=desc,
                      unit="batch", disable=None if progress else True, leave=False):
        out.append(predictor(batch).float().cpu())
    return torch.cat(out)


def classification_metrics(logits: torch.Tensor, labels: Sequence[int]) -> dict[str, Any]:
    """top1, top5 (when >= 5 classes), mean_per_class_recall (over classes present), n, predictions."""
    target = _check_labels(labels, len(logits), logits.shape[1])
    predictions = logits.argmax(dim=1)
    metrics: dict[str, Any] = {"top1": _mean(predictions == target)}
    if logits.shape[1] >= 5:
        top5 = logits.topk(5, dim=1).indices
        metrics["top5"] = _mean((top5 == target[:, None]).any(dim=1))
    recalls = [_mean(predictions[target == c] == c) for c in target.unique().tolist()]
    metrics["mean_per_class_recall"] = sum(recalls) / len(recalls)
    metrics["n"] = len(target)
    metrics["predictions"] = predictions.tolist()
    return metrics


def evaluate_images(bundle: ModelBundle, predictor: Predictor, images: Sequence[Image.Image],
                    labels: Sequence[int], batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Classification metrics (see :func:`classification_metrics`) of ``predictor`` on ``images``."""
    _check_labels(labels, len(images), len(predictor.classnames))
    logits = predict_logits(bundle, predictor, images, batch_size, "images", progress)
    return classification_metrics(logits, labels)


def evaluate_attacks(bundle: ModelBundle, predictor: Predictor, attacks: Sequence[Attack],
                     labels: Sequence[int], word_indices: Optional[Sequence[Optional[int]]] = None,
                     batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Accuracy on the clean photos, with a blank note, and with the written note; attack success.

    Args:
        attacks: rendered attacks (``clean``, ``blank``, ``attacked`` images and ``text``).
        labels: true class index of each attack's photo.
        word_indices: class index of each attack's word, None where it is no class;
            default: ``attack.text`` looked up in ``predictor.classnames`` (case-insensitive).

    Returns:
        clean_acc, clean_mean_per_class_recall, clean_top5 (>= 5 classes) and n_clean over the
        distinct clean photos (a photo written on with several words counts once); blank_acc and n
        over all attacks; text_acc and n_text over attacks whose word is not the photo's class;
        attack_success_rate (prediction == written word) and n_word_in_classes over those whose word
        is another class (None when there are none); acc1, acc5 (>= 5 classes), mean_per_class_recall
        on every text-note image (clip_benchmark's names); by_word {word: {text_acc,
        attack_success_rate, n, in_classes}}; by_class {class: {clean_acc, blank_acc, text_acc,
        n_clean, n_blank, n_text}};
        predictions {clean, blank, text}.
    """
    _check_labels(labels, len(attacks), len(predictor.classnames))
    logits = {k: predict_logits(bundle, predictor, imgs, batch_size, f"{k} images", progress)
              for k, imgs in attack_image_sets(attacks).items()}
    return score_attacks(logits, attacks, labels, predictor.classnames, word_indices)


def attack_image_sets(attacks: Sequence[Attack]) -> dict[str, list[Image.Image]]:
    """The three images of every attack, by set: ``clean``, ``blank`` and ``text`` (the written note)."""
    return {"clean": [a.clean for a in attacks], "blank": [a.blank for a in attacks],
            "text": [a.attacked for a in attacks]}


def score_attacks(logits: dict[str, torch.Tensor], attacks: Sequence[Attack], labels: Sequence[int],
                  classnames: Sequence[str],
                  word_indices: Optional[Sequence[Optional[int]]] = None) -> dict[str, Any]:
    """:func:`evaluate_attacks`' figures from logits already computed (``clean``/``blank``/``text``, each
    (n, classes) in the order of ``attacks``): however they were computed, e.g. sharded over ranks."""
    n = len(attacks)
    distinct = torch.tensor(first_occurrences([a.clean for a in attacks]), dtype=torch.bool)
    target = _check_labels(labels, n, len(classnames))
    if word_indices is None:
        word_indices = [class_index(a.text, classnames) for a in attacks]
    if len(word_indices) != n:
        raise ClipeditError(f"got {len(word_indices)} word indices for {n} attacks")
    words = torch.tensor([-1 if w is None else int(w) for w in word_indices])
    pred = {k: v.argmax(dim=1) for k, v in logits.items()}
    clean = classification_metrics(logits["clean"][distinct], target[distinct].tolist()) if n else \
        classification_metrics(logits["clean"], labels)

    counted = words != target              # text notes that do not name the true class
    targeted = counted & (words >= 0)      # … and name another class
    correct = pred["text"] == target
    success = pred["text"] == words
    result: dict[str, Any] = {
        "clean_acc": clean["top1"],
        "blank_acc": _mean(pred["blank"] == target),
        "text_acc": _mean(correct[counted]),
        "attack_success_rate": _mean(success[targeted]),
        "n": n,
        "n_clean": int(distinct.sum()),
        "n_text": int(counted.sum()),
        "n_word_in_classes": int(targeted.sum()),
        "clean_mean_per_class_recall": clean["mean_per_class_recall"],
    }
    if "top5" in clean:
        result["clean_top5"] = clean["top5"]
    result.update(benchmark_names(classification_metrics(logits["text"], labels)))
    result["by_word"] = by_word([a.text for a in attacks], words, counted, correct, success)
    result["by_class"] = by_class(target, classnames,
                                  {k: pred[k] == target for k in ("clean", "blank")} | {"text": correct},
                                  {"clean": distinct, "text": counted})
    result["predictions"] = {k: v.tolist() for k, v in pred.items()}
    if result["n_text"] < n:
        log.info("%d of %d notes name the true class and are left out of text_acc", n - result["n_text"], n)
    return result


def first_occurrences(images: Sequence[Image.Image]) -> list[bool]:
    """Whether each image is the first of its pixels in ``images`` (a photo attacked with several words
    is one clean image, counted once)."""
    seen: set[bytes] = set()
    out = []
    for image in images:
        key = hashlib.blake2b(image.tobytes(), digest_size=16, person=f"{image.mode}{image.size}".encode()[:16])
        digest = key.digest()
        out.append(digest not in seen)
        seen.add(digest)
    return out


def by_word(texts: Sequence[str], words: torch.Tensor, counted: torch.Tensor,
            correct: torch.Tensor, success: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per written word (``texts[i]``, class index ``words[i]`` or -1): text_acc, attack_success_rate
    (None for non-class words), n, in_classes; ``counted`` marks notes not naming the true class."""
    out: dict[str, dict[str, Any]] = {}
    for word in sorted(set(texts)):
        same = torch.tensor([t == word for t in texts])
        rows = same & counted
        in_classes = bool((words[same] >= 0).all())
        out[word] = {
            "text_acc": _mean(correct[rows]),
            "attack_success_rate": _mean(success[rows]) if in_classes else None,
            "n": int(rows.sum()),
            "in_classes": in_classes,
        }
    return out


def by_class(target: torch.Tensor, classnames: Sequence[str], hits: dict[str, torch.Tensor],
             masks: Optional[dict[str, torch.Tensor]] = None) -> dict[str, dict[str, Any]]:
    """Per true class: ``<set>_acc`` and ``n_<set>`` for each set in ``hits`` (correct-or-not per image).

    Args:
        target: true class index of each image of every set (sets are aligned with it).
        classnames: the class list.
        hits: per set name, whether each image was classified correctly.
        masks: per set name, the images that count (default: all).
    """
    out: dict[str, dict[str, Any]] = {}
    masks = masks or {}
    for c in sorted(set(target.tolist())):
        row: dict[str, Any] = {}
        for name, hit in hits.items():
            rows = (target == c) & masks.get(name, torch.ones_like(hit, dtype=torch.bool))
            row[f"{name}_acc"] = _mean(hit[rows])
            row[f"n_{name}"] = int(rows.sum())
        out[classnames[c]] = row
    return out


def benchmark_names(metrics: dict[str, Any]) -> dict[str, Any]:
    """top1 / top5 / mean_per_class_recall of :func:`classification_metrics` under clip_benchmark's
    names: acc1, acc5, mean_per_class_recall."""
    names = {"top1": "acc1", "top5": "acc5", "mean_per_class_recall": "mean_per_class_recall"}
    return {names[k]: v for k, v in metrics.items() if k in names}


def _check_labels(labels: Sequence[int], n: int, n_classes: int) -> torch.Tensor:
    if len(labels) != n:
        raise ClipeditError(f"got {len(labels)} labels for {n} images")
    target = torch.as_tensor(list(labels), dtype=torch.long)
    if n and (target.min() < 0 or target.max() >= n_classes):
        raise ClipeditError(f"labels must lie in 0..{n_classes - 1}")
    return target


def _mean(hits: torch.Tensor) -> Optional[float]:
    """Fraction of True in ``hits``; None when empty."""
    return float(hits.double().mean()) if hits.numel() else None
