"""The bundled mini CLIP (``assets/mini``): a small open_clip ``CLIP`` trained on a generated world."""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from clipedit.errors import ModelLoadError
from clipedit.mini.world import MiniWorld
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import (
    SOURCE_DTYPES,
    SOURCE_METADATA,
    checkpoint_dtypes,
    load_state_dict_file,
    load_state_into,
    original_metadata,
)

REGEN = "rebuild it with `clipedit train-mini --out DIR` and point $CLIPEDIT_MINI_DIR at DIR"


def mini_asset_dir() -> Path:
    """``$CLIPEDIT_MINI_DIR``, else the installed package data ``clipedit.assets/mini`` (the repository's
    ``assets/mini``, mapped into the package by ``pyproject.toml``)."""
    env = os.environ.get("CLIPEDIT_MINI_DIR")
    return Path(env) if env else bundled_asset_dir("mini")


def bundled_asset_dir(name: str) -> Path:
    """The folder of a bundled asset inside the installed ``clipedit.assets`` package."""
    return Path(str(resources.files("clipedit.assets").joinpath(name)))


def read_mini_config(asset_dir: Path | None = None) -> dict:
    """The mini model's config.json (model config, class names, templates, figures)."""
    path = (asset_dir or mini_asset_dir()) / "config.json"
    try:
        cfg = json.loads(path.read_text())
        cfg["model_cfg"], cfg["classnames"], cfg["templates"]  # noqa: B018 - schema check
    except FileNotFoundError:
        raise ModelLoadError(f"mini model config missing: {path}; {REGEN}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"mini model config {path} is corrupt ({type(e).__name__}: {e}); {REGEN}") from None
    return cfg


def load_mini(tag: str, checkpoint, device: torch.device) -> ModelBundle:
    """Build the mini CLIP from its config and load the bundled (or given) weights."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    asset_dir = mini_asset_dir()
    cfg = read_mini_config(asset_dir)
    model = open_clip.model.CLIP(**cfg["model_cfg"])
    weights = Path(checkpoint) if checkpoint else asset_dir / "model.safetensors"
    # A user's --checkpoint is the user's to fix; only the bundled weights are rebuilt with train-mini.
    hint = "" if checkpoint else f"; {REGEN}"
    if not weights.is_file():
        raise ModelLoadError(f"mini model weights missing: {weights}{hint}")
    try:
        state = load_state_dict_file(weights)
        load_state_into(model, {k: v.float() for k, v in state.items()}, weights)
    except ModelLoadError as e:
        raise ModelLoadError(f"{e}{hint}") from None
    model.to(device).eval()
    image_size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(image_size, is_train=False,
                                           mean=tuple(cfg["image_mean"]), std=tuple(cfg["image_std"]))
    tokenizer = SimpleTokenizer(context_length=cfg["model_cfg"]["text_cfg"]["context_length"])
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name="mini",
                       pretrained=str(checkpoint) if checkpoint else "bundled", kind="clip",
                       classnames=list(cfg["classnames"]), templates=list(cfg["templates"]),
                       world=MiniWorld(), extra={"config": cfg, SOURCE_DTYPES: checkpoint_dtypes(weights, state),
                                                    SOURCE_METADATA: original_metadata(weights)})
