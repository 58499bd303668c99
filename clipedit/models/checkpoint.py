"""Read and write state dicts (``.safetensors`` or torch pickles) with clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from clipedit.errors import ModelLoadError


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict; strips ``module.`` prefixes and unwraps ``{"state_dict": …}``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_into(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load a checkpoint into ``model`` (strict), with a one-line error when it does not fit."""
    state = load_state_dict_file(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"checkpoint {checkpoint} does not fit this model: {first}") from None
