"""``defend(bundle, "*")``: one edit against any written word.

Exemplars are rendered from the exemplar side of a broad vocabulary
(:func:`clipedit.defenses.vocabulary.build_vocabulary`), a few words at a time and again for every
site, so memory stays flat in their number (the closed form needs only KᵀMK and KᵀMR sums). The
edit may span several sites (``DefenseConfig.sites``, :mod:`clipedit.core.multisite`). Settings left
unset come from the ``any_word`` entry of ``defaults.json``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from clipedit.core import EditRequest, RewriteHParams
from clipedit.defenses.config import Defense, DefenseConfig
from clipedit.defenses.defaults import defaults_for, defaults_table, expand_layer
from clipedit.defenses.edit_requests import request_from_attacks
from clipedit.defenses.exemplars import reference_statistics, text_exemplars
from clipedit.defenses.methods import run_method, run_multisite_edit
from clipedit.defenses.vocabulary import ANY_WORD, build_vocabulary
from clipedit.models.bundle import ModelBundle

#: Words rendered per exemplar batch (their renders are the one batch held in memory).
WORDS_PER_BATCH = 8


@dataclass(frozen=True)
class AnyWordDefaults:
    """What ``"*"`` uses when the user does not say (``defaults.json``, ``any_word``).

    Attributes:
        words: exemplar words rendered.
        renders: renders per word.
        rank: rank of each site's update.
        mask: ``text`` (glyphs) or ``label`` (whole note).
        sites: layers edited in order (full names); None: the model's single default site.
        cov_reg: regularisation λ of each site's C.
    """

    words: int
    renders: int
    rank: int
    mask: str
    sites: Optional[tuple[str, ...]]
    cov_reg: float

    def fill(self, config: DefenseConfig) -> DefenseConfig:
        """``config`` with its unset fields taken from these defaults."""
        hparams = config.hparams or RewriteHParams(rank=self.rank, cov_reg=self.cov_reg)
        sites = config.sites if config.sites is not None else (None if hparams.layer else self.sites)
        return dataclasses.replace(config, hparams=hparams, renders=config.renders or self.renders,
                                   mask=config.mask or self.mask, vocab_words=config.vocab_words or self.words,
                                   sites=tuple(sites) if sites else None)


def any_word_defaults(bundle: ModelBundle) -> AnyWordDefaults:
    """The ``any_word`` defaults for ``bundle``: table default, then its architecture's entry."""
    table = defaults_table().get("any_word", {})
    entry = {**table.get("default", {}), **table.get("architectures", {}).get(type(bundle.image_module).__name__, {})}
    sites = entry.pop("sites", None)
    if sites:
        sites = tuple(bundle.image_prefix + expand_layer(bundle.image_module, s) for s in sites)
    base = defaults_for(bundle)
    return AnyWordDefaults(words=entry.get("words", 512), renders=entry.get("renders", 4),
                           rank=entry.get("rank", base.rank), mask=entry.get("mask", base.mask), sites=sites,
                           cov_reg=entry.get("cov_reg", base.cov_reg))


def defend_any_word(bundle: ModelBundle, config: DefenseConfig) -> Defense:
    """Make ``bundle.model`` ignore written words in general, in place (see the module's docstring)."""
    config = any_word_defaults(bundle).fill(config).resolved(bundle)
    vocabulary = build_vocabulary(bundle.classnames or (), n_words=config.vocab_words, words_file=config.vocab,
                                  seed=config.seed)
    requests = exemplar_requests(bundle, vocabulary.exemplar_words, config)
    statistics = lambda layer: reference_statistics(bundle, layer, config)  # noqa: E731
    meta = {"words": [ANY_WORD], "vocabulary": vocabulary.source, "n_words": len(vocabulary.exemplar_words)}
    if config.method == "edit" and config.sites:
        result = run_multisite_edit(bundle, requests, config.hparams, config.sites, statistics, meta)
        return Defense(layer=result.layer, method="edit", words=[ANY_WORD], edit=None, exemplars=[],
                       edit_set=result.edit_set, vocabulary=vocabulary, renders=config.renders)
    request = requests() if config.method == "edit" else merged(requests())
    result = run_method(bundle, request, config.method, config.hparams, config.finetune, statistics, meta)
    return Defense(layer=result.layer, method=result.method, words=[ANY_WORD], edit=result.edit, exemplars=[],
                   vocabulary=vocabulary, renders=config.renders)


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


def merged(requests: Iterator[EditRequest]) -> EditRequest:
    """One request holding every batch (for the fine-tuning baselines, which need all at once)."""
    reqs = list(requests)
    return EditRequest(*(torch.cat([getattr(r, k) for r in reqs]) for k in ("attacked", "target", "mask")))


def any_word_config(bundle: ModelBundle, config: DefenseConfig, layer: Optional[str], rank: Optional[int],
                    renders: Optional[int], vocab: Optional[Path]) -> DefenseConfig:
    """The CLI's config for ``--text '*'``: only what the user gave (``layer``, ``rank``, ``renders``,
    ``vocab``) overrides the ``any_word`` defaults (a given ``--layer`` edits that one site)."""
    d = any_word_defaults(bundle)
    layers = tuple(s.strip() for s in layer.split(",") if s.strip()) if layer else ()
    hparams = dataclasses.replace(config.hparams, layer=layers[0] if len(layers) == 1 else None, rank=rank or d.rank)
    return dataclasses.replace(config, hparams=hparams, renders=renders, vocab=vocab,
                               sites=layers if len(layers) > 1 else None)


def evaluation_words(bundle: ModelBundle, config: DefenseConfig) -> list[str]:
    """What an evaluation of ``"*"`` writes: the vocabulary's held-out words (never exemplars)."""
    vocabulary = build_vocabulary(bundle.classnames or (), n_words=any_word_defaults(bundle).fill(config).vocab_words,
                                  words_file=config.vocab, seed=config.seed)
    return list(vocabulary.heldout_words)
