"""A user's labelled data as the world defenses tune on and the sets they are scored on.

    split = split_data("triples:photos/")           # clipedit.data.splits: the seeded hash of file names
    tuned = with_validation_world(bundle, split)    # the model, its world = the validation side's photos
    tests = scoring_sets(tuned, split, ["ipod"], n=1000, n_signs=1000)

What comes from which side (``clipedit compare --data`` and ``clipedit sweep --data`` share it):

* **Validation side** -> the model's world (:class:`~clipedit.data.worlds.LabelledPhotoWorld`): the
  rewrite's and the fine-tuning baselines' exemplars are clipedit's renders of the defended word on its
  photos (exemplar styles), the key statistics use views of them, the word-agnostic peers' typographic
  training split (Dyslexify, PAINT: :mod:`clipedit.data.prepare.typo_train`) is rendered on them, and every
  method's own tuning (the sweep, head ablation's keep rule, PAINT's α) scores notes rendered on them in
  the validation split's held-out styles. In ``compare``, every note drawn with "another class's name"
  writes a trainable word of the word-disjoint split (:class:`~clipedit.data.prepare.word_split.WordSplitWorld`):
  no method renders a held-out class word (a benchmark's validation photos, when they are not all clean, may
  still carry one in their own writing). Of a benchmark's validation side, its clean photos are used
  when it has at least ``MIN_PER_SIDE`` of them, else all its photos (then some carry their own writing).
* **Test side** -> what compare scores, never seen by any method:
  an ImageFolder's test photos with notes rendered in the test split's held-out styles, one scene per
  photo and set (defended words; unseen words = the held-out class words of the word-disjoint split,
  :mod:`clipedit.data.prepare.word_split`; clean; blank note), or a benchmark's test photos as they are:
  ``text_acc`` over attacked photos whose word is a defended one (and not the photo's class),
  ``other_text_acc`` over those written with a held-out class word, ``clean_acc`` / ``blank_acc`` over
  its clean / blank photos where the layout has them (RTA-100 and PAINT have neither: those rows are
  left out of the table, with a note). Synthetic (rendered) photos of a benchmark are not scored.
  ``reading_acc`` is clipedit's signs (the data's class names written alone on plain canvases, test
  split seed): rendered, not the user's photos, and said so in the notes.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from clipedit.data.benchmarks import BenchmarkImage
from clipedit.data.classnames import class_index, normalize_name
from clipedit.data.images import LazyImages, to_batches
from clipedit.data.splits import FOLDER, MIN_PER_SIDE, DataSplit
from clipedit.data.worlds import LabelledPhotoWorld
from clipedit.errors import ClipeditError
from clipedit.eval.pick import HeldoutData, MemoPreprocess, heldout_data
from clipedit.eval.predictor import Predictor, make_predictor
from clipedit.eval.reading import SignSet, sign_set
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


def side_world(split: DataSplit, side: str) -> LabelledPhotoWorld:
    """The photos of one side as a labelled world (a benchmark's clean photos when it has enough)."""
    records = split.side(side)
    clean = [r for r in records if r.kind == "clean"]
    if split.layout != FOLDER:
        if len(clean) >= MIN_PER_SIDE:
            records = clean
        else:
            log.warning("%s: %d clean photos on the %s side, fewer than %d: rendering on all %d of its photos "
                        "(some carry their own writing)", split.dataset, len(clean), side, MIN_PER_SIDE,
                        len(records))
    labels = [class_index(r.true_class, split.classnames) for r in records]
    return LabelledPhotoWorld(f"{split.dataset}:{side}", LazyImages([r.path for r in records]), labels,
                              split.classnames)


def with_validation_world(bundle: ModelBundle, split: DataSplit) -> ModelBundle:
    """``bundle`` (the same model object) whose world is the split's validation side."""
    return dataclasses.replace(bundle, world=side_world(split, "validation"), classnames=list(split.classnames))


def default_words(split: DataSplit, k: int = 3) -> list[str]:
    """Words to defend when none are given: a benchmark's ``k`` most frequent written words found on both
    sides (ties: alphabetical); an ImageFolder's first ``k`` class names, leaving two classes, so that the
    word-disjoint split (:mod:`clipedit.data.prepare.word_split`) can hold one out for the unseen-words set and
    keep one for the methods."""
    if split.layout == FOLDER:
        return list(split.classnames[:max(1, min(k, len(split.classnames) - 2))])
    both = {normalize_name(r.word) for r in split.test if r.kind == "attacked" and r.word}
    counts = Counter(r.word for r in split.validation + split.test
                     if r.kind == "attacked" and r.word and normalize_name(r.word) in both)
    words = [w for w, _ in sorted(counts.items(), key=lambda t: (-t[1], t[0]))][:k]
    if not words:
        raise ClipeditError(f"{split.dataset} has no written word on both sides of the split: give --words")
    return words


@dataclass
class BenchmarkTest:
    """The test side of a benchmark, ready to score any state of the model.

    Attributes:
        images: the test photos, preprocessed once.
        records: the record of each photo.
        predictor: the zero-shot head over the benchmark's classes.
        words: the defended words (the rest of the written words are the unseen ones).
        signs: written class names alone (reading kept), or None.
        bundle: the model with memoised preprocessing (the signs are decoded once).
        unseen: the words (normalised) whose photos the unseen-words cell counts: the word-disjoint split's
            held-out class words (None: every written word besides the defended ones).
    """

    images: torch.Tensor
    records: list[BenchmarkImage]
    predictor: Predictor
    words: list[str]
    signs: Optional[SignSet]
    bundle: ModelBundle
    unseen: Optional[frozenset[str]] = None


def metric_of(record: BenchmarkImage, defended: set[str], unseen: Optional[frozenset[str]] = None
              ) -> Optional[str]:
    """Which metric a benchmark photo counts in (None: not scored); ``unseen``: the words (normalised) of the
    unseen-words cell (None: every word besides the defended ones)."""
    if record.kind in ("clean", "blank"):
        return f"{record.kind}_acc"
    if record.kind != "attacked" or not record.word or normalize_name(record.word) == normalize_name(record.true_class):
        return None
    word = normalize_name(record.word)
    if word in defended:
        return "text_acc"
    return "other_text_acc" if unseen is None or word in unseen else None


def scoring_sets(bundle: ModelBundle, split: DataSplit, words: Sequence[str], n: int, n_signs: int,
                 unseen: Optional[Sequence[str]] = None) -> dict[str, HeldoutData | BenchmarkTest]:
    """Per defended word, the test side's sets (see the module docstring); ``n`` caps an ImageFolder's
    scenes a set (one per photo at most). ``unseen``: the words of the unseen-words sets, the word-disjoint
    split's held-out class words (an ImageFolder's notes write only them, a benchmark's cell counts only
    photos written with them; empty: no unseen-words set); None: every class / written word besides the
    defended ones.

    Raises:
        ClipeditError: a benchmark whose test side has no attacked photo with a defended word.
    """
    world = side_world(split, "test") if split.layout == FOLDER else None
    if world is not None:
        test_bundle = dataclasses.replace(bundle, world=world)
        return {w: heldout_data(test_bundle, [w], n, n_signs or None, split="test", other_words=unseen)
                for w in words}
    records = split.test
    held = dataclasses.replace(bundle, preprocess=MemoPreprocess(bundle.preprocess))
    images = torch.cat(list(to_batches(LazyImages([r.path for r in records]), bundle.preprocess, 256)))
    predictor = make_predictor(held, split.classnames)
    signs = sign_set(None, n_signs, "test", split.classnames) if n_signs else None
    out = {}
    for w in words:
        if not any(metric_of(r, {normalize_name(w)}) == "text_acc" for r in records):
            raise ClipeditError(f"no test-side photo of {split.dataset} carries the word {w!r} (its words: "
                                f"{', '.join(sorted({r.word for r in records if r.word})[:12]) or 'none'})")
        out[w] = BenchmarkTest(images, records, predictor, [w], signs, held,
                               frozenset(normalize_name(u) for u in unseen) if unseen is not None else None)
    return out


@torch.no_grad()
def benchmark_counts(test: BenchmarkTest, bundle: ModelBundle,
                     batch_size: int = 256) -> dict[str, tuple[int, int, str]]:
    """(hits, n, per-image bits) per metric of ``bundle`` (its model) on a benchmark's test side, the bits one
    ``"0"``/``"1"`` per scored photo in the records' order; metrics it cannot give are absent.
    ``attack_success_rate``: of the defended word's photos whose word is another class, those predicted as
    the word."""
    from clipedit.eval.metrics import evaluate_images

    held = dataclasses.replace(test.bundle, model=bundle.model)
    predictor = test.predictor.with_bundle(held)
    pred = torch.cat([predictor(test.images[i:i + batch_size]).argmax(1).cpu()
                      for i in range(0, test.images.shape[0], batch_size)])
    defended = {normalize_name(w) for w in test.words}
    out: dict[str, list[bool]] = {}
    for record, p in zip(test.records, pred.tolist()):
        key = metric_of(record, defended, test.unseen)
        if key is not None:
            out.setdefault(key, []).append(p == class_index(record.true_class, predictor.classnames))
        word = class_index(record.word, predictor.classnames) if key == "text_acc" else None
        if word is not None:
            out.setdefault("attack_success_rate", []).append(p == word)
    counts = {k: (sum(f), len(f), "".join("1" if x else "0" for x in f)) for k, f in out.items()}
    if test.signs is not None:
        r = evaluate_images(held, predictor, test.signs.images, test.signs.labels, batch_size, progress=False)
        flags = [p == y for p, y in zip(r["predictions"], test.signs.labels)]
        counts["reading_acc"] = (sum(flags), len(flags), "".join("1" if x else "0" for x in flags))
    return counts
