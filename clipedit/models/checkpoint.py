"""Read and write state dicts (``.safetensors`` or torch pickles) with clear errors."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelLoadError
from ..io import atomic_path


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


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a ``.safetensors`` header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor],
                    metadata: Optional[dict] = None) -> Path:
    """Save tensors as ``.safetensors`` atomically; ``metadata`` values are JSON-encoded if not str."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)
