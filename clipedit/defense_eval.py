"""Before/after evaluation of a defense: clean, blank-note, and text-note sets with edited and other words."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from attacks import Attack

from .datasets import attacks_from_photos, load_image_folder
from .errors import ClipeditError
from .evaluate import evaluate_attacks
from .models.bundle import ModelBundle
from .predict import Predictor, normalize_name

EVAL_SEED = 20_211  # held-out sets: seeds and (in attacks.StyleSampler.heldout) styles unseen by exemplars


@dataclass
class EvalSets:
    """Held-out attack sets: notes with the defended words, and notes with other words."""

    classnames: list[str]
    edited: tuple[list[Attack], list[int]]
    other: Optional[tuple[list[Attack], list[int]]]
    dataset: str


def mini_eval_sets(classnames: Sequence[str], words: Sequence[str], n: int, seed: int = EVAL_SEED) -> EvalSets:
    """Generated mini-world scenes with held-out note styles (``n`` per set)."""
    from .mini import world

    defended = {normalize_name(w) for w in words}
    others = [c for c in classnames if normalize_name(c) not in defended]
    edited = world.attack_set(n, seed, words=list(words))
    other = world.attack_set(n, seed + 1, words=others) if others else None
    return EvalSets(list(classnames), edited, other, "mini-world")


def folder_eval_sets(folder: Path, words: Sequence[str], classnames: Optional[Sequence[str]] = None,
                     seed: int = EVAL_SEED, per_image: int = 1) -> EvalSets:
    """Attacks rendered on an ImageFolder's photos (class = subfolder): defended words and other classes."""
    data = load_image_folder(folder)
    names = list(classnames or data.classnames)
    if len(names) != len(data.classnames):
        raise ClipeditError(f"{len(names)} class names given for {len(data.classnames)} folders")
    defended = {normalize_name(w) for w in words}
    others = [c for c in names if normalize_name(c) not in defended]
    edited = attacks_from_photos(data.images, data.labels, names, list(words), per_image, seed)
    other = attacks_from_photos(data.images, data.labels, names, others, per_image, seed + 1) if others else None
    return EvalSets(names, edited, other, str(folder))


def evaluate_defense(bundle: ModelBundle, predictor: Predictor, sets: EvalSets,
                     batch_size: int = 128) -> dict[str, Any]:
    """clean / blank-note accuracy, text-note accuracy and attack success for edited and other words."""
    ed = evaluate_attacks(bundle, predictor, *sets.edited, batch_size=batch_size)
    out = {"clean_acc": ed["clean_acc"], "blank_acc": ed["blank_acc"],
           "text_acc": ed["text_acc"], "attack_success_rate": ed["attack_success_rate"], "n": ed["n"]}
    if sets.other is not None:
        ot = evaluate_attacks(bundle, predictor, *sets.other, batch_size=batch_size)
        out.update({"other_text_acc": ot["text_acc"], "other_attack_success_rate": ot["attack_success_rate"],
                    "other_clean_acc": ot["clean_acc"], "other_blank_acc": ot["blank_acc"], "n_other": ot["n"]})
    return out


ROWS = (("clean", "clean_acc"), ("blank note", "blank_acc"), ("text note (defended words)", "text_acc"),
        ("attack success (defended words)", "attack_success_rate"),
        ("text note (other words)", "other_text_acc"), ("attack success (other words)", "other_attack_success_rate"))


def comparison_rows(before: dict, after: dict) -> list[list]:
    """Table rows: metric, before, after."""
    return [[label, before.get(key), after.get(key)] for label, key in ROWS if key in before]
