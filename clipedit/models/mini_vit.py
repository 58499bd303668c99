"""The bundled mini ViT CLIPs (``assets/mini-vit``, ``assets/mini-vit-deep``): open_clip's ``CLIP`` with a
ViT image tower. ``mini-vit``: 4 blocks of 2 heads; ``mini-vit-deep``: 6 blocks of 4 heads (head width 32),
enough heads for head-level defenses to choose among. Both load the same way from their folder.

The image tower is open_clip's ``VisionTransformer`` built from the config, with one change made
after construction: its patchify ``conv1`` is replaced by a small convolutional stem (stride-2 3x3
convs; Xiao et al. 2021, "Early convolutions help transformers see better") that yields the same
token grid, so the transformer blocks, the class token first and the row-major patch tokens are
exactly open_clip's. The text tower, tokenizer, class names and prompts are the ResNet mini's
(``assets/mini``): only the image tower's weights are shipped here.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from clipedit.errors import ModelLoadError
from clipedit.mini.world import MiniWorld
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import (
    SOURCE_DTYPES,
    SOURCE_METADATA,
    checkpoint_dtypes,
    load_state_dict_file,
    original_metadata,
)
from clipedit.models.mini import bundled_asset_dir, mini_asset_dir

NAME = "mini-vit"
WEIGHTS_FILE = "visual.safetensors"
IMAGE_PREFIX = "visual."
#: The ViT minis: name -> (the environment variable that points at another folder, its train-mini --arch).
VIT_MINIS: dict[str, tuple[str, str]] = {
    "mini-vit": ("CLIPEDIT_MINI_VIT_DIR", "vit"),
    "mini-vit-deep": ("CLIPEDIT_MINI_VIT_DEEP_DIR", "vit-deep"),
}


def regen_hint(name: str = NAME) -> str:
    """How to rebuild the asset of ``name``."""
    env, arch = VIT_MINIS[name]
    return f"rebuild it with `clipedit train-mini --arch {arch} --out DIR` and point ${env} at DIR"


REGEN = regen_hint(NAME)


def mini_vit_asset_dir(name: str = NAME) -> Path:
    """``$CLIPEDIT_MINI_VIT_DIR`` (``…_DEEP_DIR`` for mini-vit-deep), else the installed package data
    ``clipedit.assets/<name>``."""
    env = os.environ.get(VIT_MINIS[name][0])
    return Path(env) if env else bundled_asset_dir(name)


def conv_stem(channels: list[int], kernel_size: int = 3, stride: int = 2, in_channels: int = 3) -> nn.Sequential:
    """Stride-``stride`` convs ``in -> channels[0] -> … -> channels[-1]``: BatchNorm + ReLU between them,
    the last conv linear (it plays the patch embedding's part, bias-free like open_clip's ``conv1``)."""
    layers: list[nn.Module] = []
    widths = [in_channels, *channels]
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(channels) - 1
        layers.append(nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False))
        if not last:
            layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def build_mini_vit(model_cfg: dict, stem: dict | None) -> nn.Module:
    """open_clip's ``CLIP`` from ``model_cfg``, its ``visual.conv1`` swapped for :func:`conv_stem` (``stem``).

    Raises:
        ModelLoadError: a stem whose output width or grid differs from the patchify conv's.
    """
    import open_clip

    model = open_clip.model.CLIP(**model_cfg)
    if stem:
        visual = model.visual
        new = conv_stem(**stem)
        size = model_cfg["vision_cfg"]["image_size"]
        with torch.no_grad():
            probe = new.eval()(torch.zeros(1, 3, size, size))
        if probe.shape[1] != visual.conv1.out_channels or tuple(probe.shape[2:]) != tuple(visual.grid_size):
            raise ModelLoadError(f"stem {stem} gives a {tuple(probe.shape[1:])} map; the transformer wants "
                                 f"({visual.conv1.out_channels}, {visual.grid_size[0]}, {visual.grid_size[1]})")
        visual.conv1 = new
    return model


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_mini_vit_config(asset_dir: Path, name: str = NAME) -> dict:
    """The mini ViT's config.json (model config + stem, classes, templates, shared text tower, figures)."""
    path = asset_dir / "config.json"
    hint = regen_hint(name)
    try:
        cfg = json.loads(path.read_text())
        cfg["model_cfg"]["vision_cfg"], cfg["stem"], cfg["classnames"], cfg["templates"]  # noqa: B018
        cfg["text_tower"]["asset"], cfg["text_tower"]["sha256"]  # noqa: B018 - schema check
    except FileNotFoundError:
        raise ModelLoadError(f"{name} model config missing: {path}; {hint}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{name} model config {path} is corrupt ({type(e).__name__}: {e}); {hint}") from None
    return cfg


def text_tower_weights(cfg: dict, name: str = NAME) -> dict[str, torch.Tensor]:
    """The shared text tower (every non-``visual.`` tensor of the ResNet mini's checkpoint), checked by hash."""
    path = mini_asset_dir() / "model.safetensors"
    if not path.is_file():
        raise ModelLoadError(f"{name} shares the text tower of {path}, which is missing; "
                             f"rebuild the mini with `clipedit train-mini`, then {name}")
    if file_sha256(path) != cfg["text_tower"]["sha256"]:
        raise ModelLoadError(f"{path} is not the mini checkpoint {name} was distilled from (sha256 differs); "
                             f"{regen_hint(name)}")
    state = load_state_dict_file(path)
    return {k: v for k, v in state.items() if not k.startswith(IMAGE_PREFIX)}


def load_mini_vit(tag: str, checkpoint, device: torch.device, name: str = NAME) -> ModelBundle:
    """Build the mini ViT CLIP ``name`` from its config; image tower from the bundle (or ``checkpoint``), text
    tower from the ResNet mini. ``checkpoint`` may hold the image tower alone or a whole CLIP state dict."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    asset_dir = mini_vit_asset_dir(name)
    cfg = read_mini_vit_config(asset_dir, name)
    hint = regen_hint(name)
    weights = Path(checkpoint) if checkpoint else asset_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{name} image tower weights missing: {weights}; {hint}")
    try:
        state = load_state_dict_file(weights)
    except ModelLoadError as e:
        raise ModelLoadError(f"{e}; {hint}") from None
    if not any(not k.startswith(IMAGE_PREFIX) for k in state):
        state = {**text_tower_weights(cfg, name), **state}
    model = build_mini_vit(cfg["model_cfg"], cfg["stem"])
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{name} weights {weights} do not fit its config ({str(e).splitlines()[0]}); "
                             f"{hint}") from None
    model.to(device).eval()
    image_size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(image_size, is_train=False,
                                           mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))
    tokenizer = SimpleTokenizer(context_length=cfg["model_cfg"]["text_cfg"]["context_length"])
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name,
                       pretrained=str(checkpoint) if checkpoint else "bundled", kind="clip",
                       classnames=list(cfg["classnames"]), templates=list(cfg["templates"]),
                       world=MiniWorld(), extra={"config": cfg, SOURCE_DTYPES: checkpoint_dtypes(weights, state),
                                                    SOURCE_METADATA: original_metadata(weights)})


#: The deeper ViT mini (``assets/mini-vit-deep``).
load_mini_vit_deep = functools.partial(load_mini_vit, name="mini-vit-deep")
