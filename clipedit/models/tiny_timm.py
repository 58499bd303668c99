"""Tiny timm trunks for open_clip ``TimmModel`` towers: timm's own architectures at toy width.

Each entry is a real timm model (``vit_base_patch16_siglip_224``, ``convnext_base``,
``eva02_base_patch16_clip_224``) created with smaller arguments, registered in timm under a
``clipedit_tiny_*`` name so that an open_clip config can name it (``clipedit/models/configs/tiny-*.json``).
They load with random weights, without any download, for tests and examples on those families.
"""
from __future__ import annotations

from typing import Any

import timm
from timm.models import register_model

# name -> (the timm model it shrinks, the arguments that shrink it)
TINY_TRUNKS: dict[str, tuple[str, dict[str, Any]]] = {
    "clipedit_tiny_vit_siglip": ("vit_base_patch16_siglip_224",
                                 dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2)),
    "clipedit_tiny_convnext": ("convnext_base", dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 64))),
    "clipedit_tiny_eva02": ("eva02_base_patch16_clip_224",
                            dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=2)),
}


def _entrypoint(name: str, base: str, args: dict[str, Any]):
    def create(pretrained: bool = False, **kwargs):
        return timm.create_model(base, pretrained=False, **{**args, **kwargs})

    create.__name__ = name
    create.__qualname__ = name
    create.__doc__ = f"timm's {base} at toy width ({args})."
    return create


def register_tiny_trunks() -> None:
    """Register every ``TINY_TRUNKS`` entry with timm (once)."""
    for name, (base, args) in TINY_TRUNKS.items():
        if not timm.is_model(name):
            register_model(_entrypoint(name, base, args))
