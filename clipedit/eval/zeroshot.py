"""Zero-shot classifier heads built from class names x prompt templates, as open_clip builds them."""
from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from clipedit.core.cache import cache_key, cached_tensors, module_fingerprint
from clipedit.core.prompt_edits import class_prefix_digest, prefixed
from clipedit.errors import ClipeditError
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
                     "a bright photo of a {}.", "a photo of a small {}.", "a photo of a large {}.")


def fill_template(template: str, classname: str) -> str:
    """``template`` with every ``{}`` replaced by ``classname``: a fixed substitution, not ``str.format``
    (a template file's ``{0.__class__}`` or ``{x}`` stays text, never a lookup)."""
    return template.replace("{}", classname)


@torch.no_grad()
def zero_shot_weights(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                      batch_size: int = 256, encode_text=None) -> torch.Tensor:
    """Class embeddings (embed_dim, n_classes): the mean of normalised template embeddings, renormalised.

    ``encode_text`` maps token ids to embeddings (default ``model.encode_text``; ``ModelBundle.encode_texts``).
    While a class-prefix edit is on the model (Defense-Prefix), each class name is written after its
    placeholder (:func:`clipedit.core.prompt_edits.prefixed`).
    """
    if not classnames:
        raise ClipeditError("the class list is empty")
    if not templates:
        raise ClipeditError("the template list is empty")
    device = next(model.parameters()).device
    encode_text = encode_text or model.encode_text
    texts = [fill_template(t, prefixed(c, model)) for c in classnames for t in templates]
    feats = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i:i + batch_size]).to(device)
        feats.append(F.normalize(encode_text(tokens).float(), dim=-1))
    emb = torch.cat(feats).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


def classifier_weights(bundle: ModelBundle, classnames: Sequence[str],
                       templates: Sequence[str] | None = None, use_cache: bool = True) -> torch.Tensor:
    """``zero_shot_weights`` for a CLIP bundle, cached on disk per model weights + classes + templates."""
    templates = list(templates or bundle.templates or DEFAULT_TEMPLATES)
    classnames = list(classnames)
    if not classnames:
        raise ClipeditError("the class list is empty")
    text_tower = _text_tower_fingerprint(bundle.model, bundle.image_prefix)
    prefix = class_prefix_digest(bundle.model)  # the prompts a class-prefix edit writes (none: keys as before)
    key = cache_key(model=bundle.name, text=text_tower, classes=classnames, templates=templates,
                    **({"prefix": prefix} if prefix else {}))
    out = cached_tensors("zeroshot", key, lambda: {
        "weights": zero_shot_weights(bundle.model, bundle.tokenizer, classnames, templates,
                                     encode_text=bundle.encode_texts)},
        enabled=use_cache, shapes=_weight_shape(bundle.model, len(classnames)))
    return out["weights"].to(bundle.device)


def _weight_shape(model, n_classes: int) -> Optional[dict[str, tuple[int, int]]]:
    """The shape a cached class-embedding entry must have (None where the embedding width is unknown)."""
    projection = getattr(model, "text_projection", None)
    width = projection.shape[-1] if isinstance(projection, torch.Tensor) else getattr(projection, "out_features", None)
    return {"weights": (int(width), n_classes)} if width else None


# model -> (stamp of its text-side tensors, fingerprint): a loaded model is hashed once, not per audit.
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_tower_fingerprint(model, image_prefix: str = "visual.") -> str:
    """A hash of everything but the image tower (editing it keeps the cache valid).

    Remembered per model object; the stamp (each tensor's identity and in-place version counter)
    changes whenever a text-side tensor is replaced or written to, and the hash is then taken again.
    """
    stamp = tuple((name, id(t), t._version) for name, t in model.state_dict(keep_vars=True).items()
                  if not name.startswith(image_prefix))
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    fingerprint = module_fingerprint(model, exclude=(image_prefix,))
    _FINGERPRINTS[model] = (stamp, fingerprint)
    return fingerprint


@torch.no_grad()
def zero_shot_logits(bundle: ModelBundle, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scaled cosine logits (batch, n_classes) of preprocessed images against a zero-shot head."""
    feats = F.normalize(bundle.encode_images(images).float(), dim=-1)
    return 100.0 * feats @ weights
