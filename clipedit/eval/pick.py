"""Choosing a defense setting by measurement on the validation split: the data, the score, the pick rule.

The pick rule (shared by ``clipedit sweep``, ``defend --layer auto``, head ablation and PAINT's α):

    among candidates whose clean and blank-note accuracy each lose at most ``tolerance``
    (0.5 point) against the unedited model on validation, take the largest gain in text-note
    accuracy on the defended word(s); ties go to the larger gain on unseen words, then to the
    earlier candidate (callers list cheaper settings first). No admissible candidate: no pick.

Small sets: on n scenes accuracy moves in steps of one scene (1/n), so a tolerance below one scene
(0 < tolerance x n < 1) could only be met by no change at all. :func:`scene_tolerance` is the one
place a tolerance meets a measured accuracy: it refuses a negative or non-finite one, widens one below
one scene to one scene with a warning that says so, and returns a :class:`Tolerance` whose
``allows(loss)`` every rule calls (the sweep's pick rule, ``head-ablation-weights``' keep rule,
Dyslexify's clean budget, PAINT's supported-accuracy aim) and whose ``to_dict()`` every selection
record carries (how many scenes it allows to change). :func:`tolerance_in_scenes` and
:func:`tolerance_text` state it in results and printed output.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import evaluate_defense
from clipedit.eval.heldout import EvalSets, world_eval_sets
from clipedit.eval.predictor import Predictor, make_predictor
from clipedit.eval.reading import SignSet, reading_accuracy, sign_set
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

#: Largest loss of clean or blank-note accuracy (a fraction) a pick may cost on validation.
PICK_TOLERANCE = 0.005


def tolerance_in_scenes(tolerance: float, n: int) -> int:
    """How many of ``n`` scenes ``tolerance`` (a fraction) lets clean or blank-note accuracy lose."""
    return int(math.floor(tolerance * n + 1e-9)) if n > 0 else 0


@dataclass(frozen=True)
class Tolerance:
    """A tolerance as applied to accuracies measured on ``n`` scenes (made by :func:`scene_tolerance`).

    Attributes:
        asked: the tolerance given (a fraction).
        applied: the one compared with measured losses (``asked``, or one scene when that was below one).
        n: the scenes the accuracies are measured on.
        what: which rule's tolerance (for the warning and the record).
    """

    asked: float
    applied: float
    n: int
    what: str = "tolerance"

    @property
    def scenes(self) -> int:
        """How many of the ``n`` scenes may change."""
        return tolerance_in_scenes(self.applied, self.n)

    @property
    def widened(self) -> bool:
        return not math.isclose(self.asked, self.applied)

    def allows(self, loss: float) -> bool:
        """Whether a measured loss (a fraction) is within the tolerance (equal counts never fail on rounding)."""
        return loss <= self.applied + 1e-9

    def text(self) -> str:
        """E.g. ``0.5 point (1 of 240 scenes)``."""
        return tolerance_text(self.applied, self.n, self.asked)

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "asked": self.asked, "applied": self.applied, "n": self.n,
                "scenes_allowed": self.scenes, "widened": self.widened, "text": self.text()}


def scene_tolerance(tolerance: float, n: int, what: str = "tolerance", warn: bool = True) -> Tolerance:
    """The tolerance a rule applies to accuracies over ``n`` scenes: ``tolerance`` when it allows at least
    one scene (or is 0: no loss asked for); one below one scene is widened to one scene (1/n), with a
    warning that says so (``warn`` False: for restating a rule already applied).

    Raises:
        ClipeditError: a negative or non-finite tolerance.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ClipeditError(f"{what} must be a finite fraction >= 0, got {tolerance}")
    if n > 0 and tolerance > 0 and tolerance_in_scenes(tolerance, n) < 1:
        if warn:
            log.warning("%s %g point is below one scene of %d (%.3g point): widened to one scene (%.3g point)",
                        what, 100 * tolerance, n, 100 / n, 100 / n)
        return Tolerance(tolerance, 1.0 / n, n, what)
    return Tolerance(tolerance, tolerance, n, what)


def effective_tolerance(tolerance: float, n: int) -> float:
    """:func:`scene_tolerance`'s applied value (a fraction)."""
    return scene_tolerance(tolerance, n).applied


def tolerance_text(tolerance: float, n: int, asked: Optional[float] = None) -> str:
    """``tolerance`` and what it allows on ``n`` scenes, e.g. ``0.5 point (1 of 240 scenes)``; ``asked``: the
    tolerance given, when :func:`effective_tolerance` widened it."""
    k = tolerance_in_scenes(tolerance, n)
    widened = (f"; widened from {100 * asked:.3g} point, below one scene"
               if asked is not None and not math.isclose(asked, tolerance) else "")
    return f"{100 * tolerance:.3g} point ({k} of {n} scene{'s' if n != 1 else ''}{widened})"


class MemoPreprocess:
    """``preprocess`` that remembers each image's tensor (by identity), so a fixed validation set is
    decoded once however many candidates are scored on it."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.preprocess = preprocess
        self._memo: dict[int, tuple[Image.Image, torch.Tensor]] = {}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        hit = self._memo.get(id(image))
        if hit is None or hit[0] is not image:
            hit = (image, self.preprocess(image))
            self._memo[id(image)] = hit
        return hit[1]

    def __repr__(self) -> str:  # cache keys use repr(preprocess): keep the wrapped one's
        return repr(self.preprocess)


@dataclass
class HeldoutData:
    """Held-out sets (a split) of one model and word list, ready to score any state of the model.

    Attributes:
        bundle: the model with memoised preprocessing (its ``model`` is the caller's, shared).
        predictor: the zero-shot head over the world's classes (text tower run once).
        sets: notes with the defended words and with other words (validation seeds).
        signs: written class names alone (reading kept), or None.
    """

    bundle: ModelBundle
    predictor: Predictor
    sets: EvalSets
    signs: Optional[SignSet]


def heldout_data(bundle: ModelBundle, words: Sequence[str], n: int, n_signs: Optional[int] = None,
                    split: str = "validation", offset: int = 0, other_words: Optional[Sequence[str]] = None
                 ) -> HeldoutData:
    """Held-out scenes of the model's world on ``split`` (``n`` per set, ``n_signs`` signs; tuning uses
    the validation split, reports the test split); ``offset``: other scenes and signs of the split;
    ``other_words``: what the other-words set writes (default: every other class name).

    Raises:
        ClipeditError: the model's world has no labelled scenes, or ``n`` < 1 (an empty split).
    """
    if n < 1:
        raise ClipeditError(f"the {split} split is empty (asked for {n} scenes); give at least 1")
    world = bundle.world
    if world is None or not world.classnames:
        raise ClipeditError(f"{bundle.name} has no labelled world to draw a {split} split from")
    memo = dataclasses.replace(bundle, preprocess=MemoPreprocess(bundle.preprocess))
    sets = world_eval_sets(world, list(words), n, split, offset=offset, other_words=other_words)
    if not sets.edited[0]:
        raise ClipeditError(f"the {split} split is empty: no scenes with {', '.join(words)}")
    signs = sign_set(world, n_signs, split, offset=offset) if n_signs else None
    return HeldoutData(memo, make_predictor(memo, sets.classnames), sets, signs)


def score(data: HeldoutData, batch_size: int = 256) -> dict[str, Any]:
    """The model's current figures on the held-out data: evaluate_defense's, plus ``reading_acc`` and the
    number of signs it is over (``reading_n``, each a distinct image)."""
    out = evaluate_defense(data.bundle, data.predictor, data.sets, batch_size=batch_size)
    if data.signs is not None:
        out["reading_acc"] = reading_accuracy(data.bundle, data.predictor, data.signs, batch_size)
        out["reading_n"] = len(data.signs.images)
    return out


def gains(row: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """Changes against the unedited model: defended-word gain, unseen-word gain, clean and blank loss."""
    def delta(key: str) -> float:
        a, b = row.get(key), base.get(key)
        return 0.0 if a is None or b is None else float(a) - float(b)

    return {"gain": delta("text_acc"), "other_gain": delta("other_text_acc"),
            "clean_loss": -delta("clean_acc"), "blank_loss": -delta("blank_acc")}


def admissible(row: dict[str, Any], base: dict[str, Any], tolerance: Tolerance | float = PICK_TOLERANCE,
               reading: Optional[Tolerance] = None) -> bool:
    """Whether ``row`` costs at most ``tolerance`` of clean and of blank-note accuracy (a :class:`Tolerance`;
    a bare fraction is applied as it is); with ``reading``, also at most that much reading kept (signs; a row
    or baseline without reading is not admissible then)."""
    tol = tolerance if isinstance(tolerance, Tolerance) else Tolerance(tolerance, tolerance, 0)
    g = gains(row, base)
    if reading is not None:
        if row.get("reading_acc") is None or base.get("reading_acc") is None:
            return False
        if not reading.allows(float(base["reading_acc"]) - float(row["reading_acc"])):
            return False
    return tol.allows(g["clean_loss"]) and tol.allows(g["blank_loss"])


def pick(rows: Sequence[dict[str, Any]], base: dict[str, Any], tolerance: Tolerance | float = PICK_TOLERANCE,
         reading: Optional[Tolerance] = None) -> Optional[int]:
    """Index of the row the pick rule (module docstring) chooses, or None when none is admissible
    (``reading``: the reading-kept bound of :func:`admissible` as well)."""
    best, best_key = None, None
    for i, row in enumerate(rows):
        if not admissible(row, base, tolerance, reading):
            continue
        g = gains(row, base)
        key = (round(g["gain"], 9), round(g["other_gain"], 9))
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best
