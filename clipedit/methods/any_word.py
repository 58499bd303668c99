"""``defend(bundle, "*")``: one edit against any written word.

Exemplars are rendered from the exemplar side of a broad vocabulary
(:func:`clipedit.data.prepare.vocabulary.build_vocabulary`), a few words at a time and again for every
site, so memory stays flat in their number (the closed form needs only KᵀMK and KᵀMR sums). The
edit may span several sites. Settings left unset come from the model's
``edit-any-word`` default file (through :func:`~clipedit.settings.resolve.resolve_config` with ``any_word=True``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from clipedit.core import EditRequest
from clipedit.data.prepare.exemplars import request_from_attacks, text_exemplars
from clipedit.data.prepare.vocabulary import ANY_WORD, Vocabulary, build_vocabulary
from clipedit.methods.spec import DefenseData
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig

#: Words rendered per exemplar batch (their renders are the one batch held in memory).
WORDS_PER_BATCH = 8


def vocabulary_of(bundle: ModelBundle, config: DefenseConfig) -> Vocabulary:
    """``"*"``'s vocabulary for a resolved ``config`` (its exemplar and held-out words); words the model's
    world holds out of every method (``world.heldout_words``, :mod:`clipedit.data.prepare.word_split`) are in
    neither."""
    withheld = tuple(getattr(bundle.world, "heldout_words", ()) or ())
    return build_vocabulary(bundle.classnames or (), n_words=config.vocab_words, words_file=config.vocab,
                            seed=config.seed, exclude=withheld)


def any_word_data(bundle: ModelBundle, config: DefenseConfig) -> DefenseData:
    """The exemplars of ``"*"``: ``config.renders`` renders of each exemplar word, in batches."""
    vocabulary = vocabulary_of(bundle, config)
    return DefenseData([ANY_WORD], exemplar_requests(bundle, vocabulary.exemplar_words, config),
                       vocabulary=vocabulary, n_images=len(vocabulary.exemplar_words) * config.renders)


def exemplar_requests(bundle: ModelBundle, words: Sequence[str], config: DefenseConfig
                      ) -> Callable[[], Iterator[EditRequest]]:
    """A factory of exemplar batches: ``config.renders`` renders of each word, ``WORDS_PER_BATCH`` words
    a batch, rendered again (identically) on every call."""
    def batches() -> Iterator[EditRequest]:
        for start in range(0, len(words), WORDS_PER_BATCH):
            attacks = [a for w in words[start:start + WORDS_PER_BATCH]
                       for a in text_exemplars(bundle, w, config.renders, config.seed, config.photos)]
            yield request_from_attacks(bundle.preprocess, attacks, use_text_mask=config.mask == "text")
    return batches


def evaluation_words(bundle: ModelBundle, config: DefenseConfig) -> list[str]:
    """What an evaluation of ``"*"`` writes (resolved ``config``): the vocabulary's held-out words (never
    exemplars)."""
    return list(vocabulary_of(bundle, config).heldout_words)
