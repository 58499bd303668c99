"""What a loaded model carries: the module, its preprocessing and tokenizer, and where it came from."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from clipedit.data.worlds import World


@dataclass
class ModelBundle:
    """A model with the preprocessing (and, for CLIP, the tokenizer) that come with its weights.

    Attributes:
        model: the module, in eval mode, on its device.
        preprocess: PIL image -> normalised tensor (C, H, W).
        tokenizer: text -> token ids (CLIP only).
        name: architecture name (``ViT-B-32``, ``mini``, ``tf_efficientnet_lite0`` …).
        pretrained: weight tag, checkpoint path, or ``none``.
        kind: ``clip`` (zero-shot through text) or ``classifier`` (fixed label head).
        classnames: default class names (the mini world, ImageNet classifiers).
        templates: default prompt templates (CLIP).
        source: the spec string the user gave.
        world: where exemplars, reference images and held-out scenes come from (None: photographs).
        image_tower: dotted name of a CLIP's image tower in ``model`` (open_clip ``visual``; Hugging Face
            ``vision_model``).
        image_encoder, text_encoder: ``fn(model, images)`` / ``fn(model, token_ids)`` -> embeddings, for
            models without open_clip's ``encode_image`` / ``encode_text`` (Hugging Face); None: those methods.
            They take the model as an argument, so a copy of the bundle with another model encodes with it.
    """

    model: nn.Module
    preprocess: Callable
    tokenizer: Optional[Callable] = None
    name: str = ""
    pretrained: str = "none"
    kind: str = "clip"
    classnames: Optional[list[str]] = None
    templates: Optional[list[str]] = None
    source: str = ""
    world: Optional[World] = None
    extra: dict = field(default_factory=dict)
    image_tower: str = "visual"
    image_encoder: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None
    text_encoder: Optional[Callable[[nn.Module, torch.Tensor], torch.Tensor]] = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_module(self) -> nn.Module:
        """The module that maps images to features (CLIP's :attr:`image_tower` or the classifier itself)."""
        return self.model.get_submodule(self.image_tower) if self.kind == "clip" else self.model

    @property
    def image_prefix(self) -> str:
        """Dotted-name prefix of :attr:`image_module` inside :attr:`model`."""
        return self.image_tower + "." if self.kind == "clip" else ""

    @property
    def architecture(self) -> str:
        """The image tower's family as the default files key it: its class name, and for open_clip's timm
        adapter the trunk's too (``TimmModel/VisionTransformer``, ``TimmModel/ConvNeXt``)."""
        tower = self.image_module
        name = type(tower).__name__
        trunk = getattr(tower, "trunk", None)
        return f"{name}/{type(trunk).__name__}" if name == "TimmModel" and trunk is not None else name

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Features for a batch of preprocessed images: CLIP embeddings (unnormalised) or logits."""
        images = images.to(self.device)
        if self.kind == "clip":
            return self.image_encoder(self.model, images) if self.image_encoder else self.model.encode_image(images)
        return self.model(images)

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP text embeddings (unnormalised) of token ids."""
        tokens = tokens.to(self.device)
        return self.text_encoder(self.model, tokens) if self.text_encoder else self.model.encode_text(tokens)
