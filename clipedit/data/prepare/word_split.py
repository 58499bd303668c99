"""The word-disjoint split of a comparison: class words any method may train or render on, and held-out
words that no method sees, so that "unseen words" are unseen by every method.

The split is a seeded hash of each word alone (:func:`word_split`): a word's side does not depend on
which other words are listed. The defended words are always on the trainable side (the word-specific
methods render them). :class:`WordSplitWorld` is the model's world as methods see it: every scene it
draws with "another class's name" writes a trainable word, and ``"*"``'s vocabulary leaves the held-out
words out (``heldout_words``, read by :func:`clipedit.methods.any_word.vocabulary_of`). The test sets
of "unseen words" write held-out words only.

Not covered: the reference images of a layer's key statistics (unlabelled scenes, some with a random
class name written) come from the world's own reference set, which may write any class name.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from clipedit.data.classnames import normalize_name
from clipedit.errors import ClipeditError

#: Share of the class words (other than the defended ones) held out.
HELDOUT_SHARE = 1 / 3


def _draw(word: str, seed: int) -> float:
    digest = hashlib.sha1(f"clipedit-word-split:{seed}:{normalize_name(word)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@dataclass(frozen=True)
class WordSplit:
    """Class words by side: ``trainable`` (defended words included) and ``heldout``, disjoint."""

    trainable: tuple[str, ...]
    heldout: tuple[str, ...]
    seed: int

    def record(self) -> dict[str, Any]:
        return {"trainable": list(self.trainable), "heldout": list(self.heldout), "seed": self.seed,
                "rule": f"a seeded hash of each class word: about {HELDOUT_SHARE:.2g} of the words other than the "
                        "defended ones held out (at least one; at least one other word trainable); held-out "
                        "words are written only in the test split's unseen-words sets"}


def word_split(classnames: Sequence[str], defended: Sequence[str], seed: int = 0) -> WordSplit:
    """Split ``classnames`` (module docstring): the defended words trainable; of the others, those whose
    hash falls below :data:`HELDOUT_SHARE` held out, at least one and leaving at least one trainable.

    Raises:
        ClipeditError: fewer than two class words besides the defended ones (nothing to hold out).
    """
    mine = {normalize_name(w) for w in defended}
    others = [c for c in classnames if normalize_name(c) not in mine]
    if len(others) < 2:
        raise ClipeditError(f"a word-disjoint split needs two or more class words besides the defended ones; "
                            f"got {len(others)}")
    ranked = sorted(others, key=lambda c: _draw(c, seed))
    k = min(len(others) - 1, max(1, sum(_draw(c, seed) < HELDOUT_SHARE for c in others)))
    held = set(ranked[:k])
    return WordSplit(tuple(c for c in classnames if c not in held), tuple(c for c in classnames if c in held), seed)


class WordSplitWorld:
    """A world whose "other class's name" is always a trainable word; everything else is the world's own
    (attributes such as ``from_photos`` are read through to it)."""

    def __init__(self, world, split: WordSplit) -> None:
        self._world = world
        self.split = split
        self.heldout_words: tuple[str, ...] = split.heldout

    def __getattr__(self, name: str):
        return getattr(self._world, name)

    @property
    def name(self) -> str:
        return self._world.name

    @property
    def classnames(self):
        return self._world.classnames

    def attack_set(self, n: int, seed: int, words: Sequence[str] | str = "other", split: Optional[str] = None,
                   fonts: Optional[tuple[str, ...]] = None, **kwargs):
        if isinstance(words, str) and words == "other":
            words = list(self.split.trainable)
        return self._world.attack_set(n, seed, words, split=split, fonts=fonts, **kwargs)
