"""Predictors: a model plus a class list, mapping preprocessed images to class logits."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import torch

from clipedit.core.prompt_edits import class_prefix_digest
from clipedit.data.classnames import check_classnames, class_index
from clipedit.errors import ClipeditError
from clipedit.eval.zeroshot import DEFAULT_TEMPLATES, classifier_weights, zero_shot_logits
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


class Predictor:
    """Images -> logits over ``classnames``.

    For CLIP bundles the logits are scaled cosines against a zero-shot head; for classifier
    bundles they are the model's logit columns of the requested classes. The model is run
    on every call, so edits to its weights take effect at once.

    Attributes:
        bundle: the model.
        classnames: the classes, in logit-column order.
        templates: prompt templates of the zero-shot head (None for classifiers).
    """

    def __init__(self, bundle: ModelBundle, classnames: Sequence[str],
                 templates: Optional[Sequence[str]] = None, *, weights: Optional[torch.Tensor] = None,
                 columns: Optional[torch.Tensor] = None) -> None:
        if (weights is None) == (columns is None):
            raise ValueError("a Predictor needs exactly one of weights (CLIP) or columns (classifier)")
        self.bundle = bundle
        self.classnames = list(classnames)
        self.templates = list(templates) if templates is not None else None
        self.weights = weights
        self.columns = columns
        self.prompts = class_prefix_digest(bundle.model)  # the class-prefix edit the head was built with

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def with_bundle(self, bundle: ModelBundle) -> Predictor:
        """The same head on another model (e.g. an edited copy): the text tower is not run again (unless
        the prompts differ: see ``__call__``)."""
        out = Predictor(bundle, self.classnames, self.templates, weights=self.weights, columns=self.columns)
        out.prompts = self.prompts
        return out

    def _current_weights(self) -> torch.Tensor:
        """The zero-shot head for the prompts the model writes now: a class-prefix edit put on or taken off
        since the head was built (Defense-Prefix) rebuilds it, so what is scored is what is applied."""
        prompts = class_prefix_digest(self.bundle.model)
        if prompts != self.prompts:
            self.weights = classifier_weights(self.bundle, self.classnames, self.templates)
            self.prompts = prompts
        return self.weights

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes) for a batch of preprocessed images (B, C, H, W)."""
        if self.weights is not None:
            return zero_shot_logits(self.bundle, batch, self._current_weights())
        logits = self.bundle.encode_images(batch).float()
        return logits[:, self.columns.to(logits.device)]


def make_predictor(bundle: ModelBundle, classnames: Sequence[str],
                   templates: Optional[Sequence[str]] = None) -> Predictor:
    """A predictor over ``classnames``: zero-shot for CLIP, logit columns for classifiers.

    Args:
        bundle: a loaded model.
        classnames: the classes to predict among.
        templates: prompt templates (CLIP only); default: the bundle's, else open_clip's usual set.

    Raises:
        ClipeditError: empty or duplicate class list; for classifiers, names the model lacks.
    """
    names = check_classnames(classnames)
    if bundle.kind == "clip":
        used = list(templates or bundle.templates or DEFAULT_TEMPLATES)
        weights = classifier_weights(bundle, names, used)
        return Predictor(bundle, names, used, weights=weights)
    if bundle.kind == "classifier":
        if not bundle.classnames:
            raise ClipeditError(f"model {bundle.name} has no class names to select from")
        if templates:
            log.warning("prompt templates are ignored by classifier %s", bundle.name)
        indices = [class_index(n, bundle.classnames) for n in names]
        unknown = [n for n, i in zip(names, indices) if i is None]
        if unknown:
            raise ClipeditError(f"{bundle.name} has no class named {', '.join(repr(u) for u in unknown)}")
        return Predictor(bundle, names, None, columns=torch.tensor(indices, dtype=torch.long))
    raise ClipeditError(f"unsupported model kind {bundle.kind!r}")
