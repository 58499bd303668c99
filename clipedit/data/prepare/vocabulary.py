"""The broad vocabulary a defense against *any* written word (``defend --text '*'``) renders.

Words come from three sources: whole-word tokens of open_clip's own tokenizer vocabulary
(alphabetic, 3-12 letters: what a CLIP model has learnt to read), the model's class names (what an
attacker writes to steer it) and random letter strings (shapes of writing with no meaning), or from
a user's word list (``--vocab FILE``). Every word is split, by a hash of the word alone, into
*exemplar* words (rendered to build the edit) and *held-out* words (never rendered as exemplars:
what the evaluation writes). The split does not depend on which other words are in the list, so a
held-out word stays held out whatever vocabulary it appears in.
"""
from __future__ import annotations

import hashlib
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from clipedit.errors import ClipeditError

log = logging.getLogger(__name__)

#: The word that stands for any word (``defend --text '*'``).
ANY_WORD = "*"
#: Salt of the hash that splits words into exemplar and held-out words.
SPLIT_SALT = "clipedit-vocabulary:"
#: Share of words held out from exemplars.
HELDOUT_FRACTION = 0.25
#: Word lengths drawn from the tokenizer and as random strings.
MIN_LETTERS, MAX_LETTERS = 3, 12


@dataclass(frozen=True)
class Vocabulary:
    """Words to render as exemplars and words kept for evaluation, disjoint.

    Attributes:
        exemplar_words: rendered to build the edit (class names first, then the rest).
        heldout_words: never rendered as exemplars.
        classnames: the class names among all words (exemplar or held out).
        source: where the words came from (``tokenizer`` or a file path).
    """

    exemplar_words: tuple[str, ...]
    heldout_words: tuple[str, ...]
    classnames: tuple[str, ...]
    source: str

    @property
    def heldout_classnames(self) -> tuple[str, ...]:
        """Class names that are never exemplars: held-out words that can steer the model."""
        return tuple(w for w in self.heldout_words if w in self.classnames)

    @property
    def exemplar_classnames(self) -> tuple[str, ...]:
        return tuple(w for w in self.exemplar_words if w in self.classnames)


def is_heldout(word: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether ``word`` (case-insensitive) belongs to the held-out side of the split."""
    digest = hashlib.sha1((SPLIT_SALT + word.strip().lower()).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


@lru_cache(maxsize=1)
def tokenizer_words(min_letters: int = MIN_LETTERS, max_letters: int = MAX_LETTERS) -> tuple[str, ...]:
    """Whole-word tokens (``…</w>``) of open_clip's ``SimpleTokenizer``: ASCII letters only,
    ``min_letters``-``max_letters`` long, in the tokenizer's merge order (common words first)."""
    from open_clip.tokenizer import SimpleTokenizer

    words = []
    for token in SimpleTokenizer().encoder:
        if token.endswith("</w>"):
            word = token[:-4]
            if word.isascii() and word.isalpha() and min_letters <= len(word) <= max_letters:
                words.append(word)
    return tuple(dict.fromkeys(words))


def random_strings(n: int, seed: int = 0, min_letters: int = MIN_LETTERS,
                   max_letters: int = MAX_LETTERS) -> list[str]:
    """``n`` random lowercase letter strings (seeded; lengths uniform in the range)."""
    rng = np.random.default_rng([seed, 0x5eed])
    letters = np.array(list(string.ascii_lowercase))
    return ["".join(rng.choice(letters, int(rng.integers(min_letters, max_letters + 1)))) for _ in range(n)]


def read_word_list(path: str | Path) -> list[str]:
    """Words from a text file: one or more per line, whitespace- or comma-separated; ``#`` starts a comment."""
    from clipedit.inputs import read_input_text

    path = Path(path)
    text = read_input_text(path, "vocabulary file")
    words = [w for line in text.splitlines() for w in line.split("#", 1)[0].replace(",", " ").split()]
    if not words:
        raise ClipeditError(f"vocabulary file {path} holds no words")
    return list(dict.fromkeys(words))


def build_vocabulary(classnames: Sequence[str] = (), *, n_words: int = 512, random_share: float = 0.125,
                     words_file: Optional[str | Path] = None, seed: int = 0,
                     heldout_fraction: float = HELDOUT_FRACTION, exclude: Sequence[str] = ()) -> Vocabulary:
    """The exemplar/held-out vocabulary of a '*' defense.

    Args:
        classnames: the model's class names (always among the words, on either side of the split).
        n_words: exemplar words wanted (class names included); fewer when the sources run out.
        random_share: share of the other exemplar words that are random letter strings.
        words_file: a user's word list replacing the tokenizer words and random strings.
        seed: which tokenizer words and random strings are drawn.
        heldout_fraction: share of words held out (by :func:`is_heldout`).
        exclude: words left out of both sides (e.g. a comparison's held-out class words).
    """
    if n_words < 1:
        raise ClipeditError(f"the vocabulary needs at least one exemplar word, got {n_words}")
    if not 0 <= heldout_fraction < 1:
        raise ClipeditError(f"the held-out fraction must be in [0, 1), got {heldout_fraction}")
    banned = {w.strip().lower() for w in exclude}
    names = list(dict.fromkeys(c.strip() for c in classnames if c.strip() and c.strip().lower() not in banned))
    if words_file is not None:
        pool, source = read_word_list(words_file), str(words_file)
        n_random = 0
    else:
        pool, source = list(tokenizer_words()), "tokenizer"
        rng = np.random.default_rng([seed, 0x70c])
        pool = [pool[i] for i in rng.permutation(len(pool))]
        n_random = int(round(random_share * max(0, n_words - len(names))))
    taken = {n.lower() for n in names} | banned
    pool = [w for w in pool if w.lower() not in taken]
    rand = [w for w in random_strings(4 * n_random + 16, seed) if w.lower() not in taken]

    def split(words: Sequence[str]) -> tuple[list[str], list[str]]:
        return ([w for w in words if not is_heldout(w, heldout_fraction)],
                [w for w in words if is_heldout(w, heldout_fraction)])

    names_ex, names_out = split(names)
    pool_ex, pool_out = split(pool)
    rand_ex, rand_out = split(rand)
    n_rest = max(0, n_words - len(names_ex))
    n_rand = min(n_random, len(rand_ex), n_rest)
    exemplar = names_ex + pool_ex[:n_rest - n_rand] + rand_ex[:n_rand]
    if not exemplar:
        raise ClipeditError("every word of the vocabulary is held out; give more words")
    if len(exemplar) < n_words:
        log.warning("the vocabulary gives %d exemplar words, not %d", len(exemplar), n_words)
    # held-out words in proportion to the exemplars (a third as many), for evaluation sets to draw on
    heldout = names_out + pool_out[:max(1, (n_rest - n_rand) // 3)] + rand_out[:max(1, n_rand // 3)] if n_rand \
        else names_out + pool_out[:max(1, n_rest // 3)]
    return Vocabulary(tuple(exemplar), tuple(dict.fromkeys(heldout)), tuple(names), source)
