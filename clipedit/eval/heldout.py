"""The one held-out protocol: named splits, and the attack sets every evaluation draws from them.

Exemplars are rendered in exemplar styles from seeds offset by ``EXEMPLAR_SEED_OFFSET``
(:mod:`clipedit.defenses.typographic`); held-out sets use the seeds below and the leave-out factors of
their split (:mod:`attacks.factors`: font families from the catalogue's validation or test split, a size
band, inks, papers and weight that no exemplar uses). Tune on ``validation``, report on ``test``:
``audit``, ``defend``, the tests and the bench all call this module. Figures are reported by kind
(notes, stickers, bare text; the headline is notes + stickers) and size band
(:func:`clipedit.eval.strata.strata`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clipedit.attacks import Attack
from clipedit.attacks.factors import split_sampler
from clipedit.data.classnames import normalize_name
from clipedit.data.folders import load_image_folder
from clipedit.data.worlds import World
from clipedit.errors import ClipeditError
from clipedit.eval.attack_sets import attacks_from_photos

#: Seeds of the held-out splits. A split's set with the defended words uses its seed; the set
#: with other words uses seed + 1.
SPLITS: dict[str, int] = {"validation": 31_415, "test": 20_240}


#: Seed step between scene sets of one split drawn side by side (``world_eval_sets(offset=k * SCENE_OFFSET)``);
#: the splits' seeds lie further apart than the few sets a comparison draws.
SCENE_OFFSET = 1_000


def split_seed(split: str) -> int:
    """The seed of a named split (``validation`` or ``test``)."""
    try:
        return SPLITS[split]
    except KeyError:
        raise ClipeditError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})") from None


@dataclass
class EvalSets:
    """Held-out attack sets: notes with the defended words, and notes with other words."""

    classnames: list[str]
    edited: tuple[list[Attack], list[int]]
    other: Optional[tuple[list[Attack], list[int]]]
    dataset: str
    split: str = "test"


def _other_words(classnames: Sequence[str], words: Sequence[str]) -> list[str]:
    defended = {normalize_name(w) for w in words}
    return [c for c in classnames if normalize_name(c) not in defended]


def world_attack_set(world: World, n: int, split: str = "test", words: str | Sequence[str] = "other",
                     fonts: Optional[tuple[str, ...]] = None) -> tuple[list[Attack], list[int]]:
    """``n`` held-out scenes of ``world`` with notes (``"other"``: another class's name); ``fonts`` in
    place of the split's (e.g. a script's)."""
    return world.attack_set(n, split_seed(split), words, split=split, fonts=fonts)


def world_eval_sets(world: World, words: Sequence[str], n: int, split: str = "test",
                    factors: bool = True, offset: int = 0, other_words: Optional[Sequence[str]] = None) -> EvalSets:
    """Held-out scenes of a world that has them (``n`` per set); ``factors`` False: the world's own
    held-out styles (for the mini world: matplotlib's STIX / Computer Modern fonts, sizes 0.19-0.22,
    as every figure before the leave-out factors) instead of the split's leave-out factors. ``offset``
    (a multiple of :data:`SCENE_OFFSET`) draws other scenes of the same split (e.g. one set per word);
    ``other_words``: the words of the other-words set (default: every class name but ``words``)."""
    if not world.classnames:
        raise ClipeditError(f"{world.name} has no classes to evaluate on")
    seed = split_seed(split) + offset
    others = _other_words(world.classnames if other_words is None else other_words, words)
    styles = split if factors else None
    edited = world.attack_set(n, seed, list(words), split=styles)
    other = world.attack_set(n, seed + 1, others, split=styles) if others else None
    return EvalSets(list(world.classnames), edited, other, world.name, split)


def folder_eval_sets(folder: Path, words: Sequence[str], classnames: Optional[Sequence[str]] = None,
                     split: str = "test", per_image: int = 1) -> EvalSets:
    """Attacks rendered on an ImageFolder's photos (class = subfolder): defended words and other classes."""
    data = load_image_folder(folder)
    names = list(classnames or data.classnames)
    if len(names) != len(data.classnames):
        raise ClipeditError(f"{len(names)} class names given (--classes) for the {len(data.classnames)} class "
                            f"folders of {folder}; give one per folder, or leave --classes out to use the "
                            "folder names")
    seed = split_seed(split)
    others = _other_words(names, words)
    sampler = split_sampler(split)
    edited = attacks_from_photos(data.images, data.labels, names, list(words), per_image, seed, sampler)
    other = attacks_from_photos(data.images, data.labels, names, others, per_image, seed + 1, sampler) \
        if others else None
    return EvalSets(names, edited, other, str(folder), split)
