"""The mini ViT's token layout, checked against the installed open_clip, and the mask-to-token mapping.

open_clip's ``VisionTransformer`` puts the class token first and the patch tokens after it in
row-major order over the grid; ``Site.location_weights`` must send a label over patch (row, col)
to token ``1 + row * grid + col``. Both are checked on random-init towers with the mini ViT's
config: the plain patchify stem (each token sees only its own patch) and the convolutional stem
(each token sees mostly its own patch).
"""
from __future__ import annotations

import functools

import pytest
import torch

from clipedit.core.nethook import Trace
from clipedit.core.sites import resolve_site
from clipedit.mini.training.distill import STEM, VISION_CFG
from clipedit.models.mini_vit import build_mini_vit

TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
GRID = VISION_CFG["image_size"] // VISION_CFG["patch_size"]
PATCH = VISION_CFG["patch_size"]
SITE = "visual.transformer.resblocks.0.mlp.c_proj"


@functools.cache
def tower(conv_stem: bool) -> torch.nn.Module:
    """A random-init mini ViT: the conv stem of the bundled model, or open_clip's patchify conv."""
    torch.manual_seed(0)
    cfg = {"embed_dim": 32, "vision_cfg": dict(VISION_CFG), "text_cfg": TEXT_CFG}
    return build_mini_vit(cfg, STEM if conv_stem else None).eval()


def block0_tokens(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0, (batch, tokens, width) whatever open_clip's layout."""
    with Trace(model, "visual.transformer.resblocks.0", retain_input=True, stop=True) as trace:
        model.encode_image(images)
    x = trace.input
    return x if x.shape[0] == images.shape[0] else x.transpose(0, 1)


def changed_tokens(model: torch.nn.Module, row: int, col: int) -> torch.Tensor:
    """How much each token moves when the pixels of patch (row, col) change."""
    torch.manual_seed(1)
    image = torch.randn(1, 3, VISION_CFG["image_size"], VISION_CFG["image_size"])
    poked = image.clone()
    poked[..., row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] += 3.0
    return (block0_tokens(model, poked) - block0_tokens(model, image)).norm(dim=-1)[0]


def patch_mask(row: int, col: int) -> torch.Tensor:
    mask = torch.zeros(1, VISION_CFG["image_size"], VISION_CFG["image_size"])
    mask[:, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = 1
    return mask


@pytest.mark.parametrize("row,col", [(0, 0), (2, 5), (7, 1), (7, 7)])
def test_patch_tokens_are_row_major_after_the_class_token(row, col):
    moved = changed_tokens(tower(conv_stem=False), row, col)
    assert moved.shape[0] == 1 + GRID * GRID
    assert (moved > 1e-6).nonzero().flatten().tolist() == [1 + row * GRID + col]


@pytest.mark.parametrize("row,col", [(0, 0), (2, 5), (7, 1), (7, 7)])
def test_conv_stem_token_of_a_patch_is_the_one_its_pixels_move_most(row, col):
    moved = changed_tokens(tower(conv_stem=True), row, col)
    assert moved.shape[0] == 1 + GRID * GRID
    assert int(moved.argmax()) == 1 + row * GRID + col
    assert moved[0] == 0  # the class token enters block 0 untouched by pixels


@pytest.mark.parametrize("conv_stem", [False, True])
@pytest.mark.parametrize("row,col", [(0, 0), (2, 5), (7, 1), (7, 7)])
def test_mask_over_a_patch_selects_that_patch_token(conv_stem, row, col):
    site = resolve_site(tower(conv_stem), SITE)
    weights = site.location_weights(patch_mask(row, col), n_locations=1 + GRID * GRID)
    assert weights.nonzero()[:, 1].tolist() == [1 + row * GRID + col]
    # and the token that the pixels under the mask move most is the same one
    assert int(changed_tokens(tower(conv_stem), row, col).argmax()) == 1 + row * GRID + col


def test_mask_threshold_drops_barely_covered_tokens():
    site = resolve_site(tower(True), SITE)
    mask = patch_mask(3, 3)
    mask[:, 3 * PATCH:4 * PATCH, 4 * PATCH] = 1  # one pixel column of patch (3, 4)
    assert site.location_weights(mask, 1 + GRID * GRID).nonzero()[:, 1].tolist() == [1 + 3 * GRID + 3,
                                                                                      1 + 3 * GRID + 4]
    assert site.location_weights(mask, 1 + GRID * GRID, threshold=0.25).nonzero()[:, 1].tolist() == [1 + 3 * GRID + 3]
