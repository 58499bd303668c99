"""Read and write state dicts (``.safetensors`` or torch pickles) with clear errors."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch

from clipedit.errors import ModelLoadError
from clipedit.io import guard_output, read_safetensors_metadata, save_state_dict

SOURCE_DTYPES = "source_dtypes"  # ModelBundle.extra key: the checkpoint's dtype of every tensor
PRETRAINED_EXPORT = "hf_export"  # ModelBundle.extra key (Hugging Face): fn(bundle, folder) -> save_pretrained
PRETRAINED_WEIGHTS = "model.safetensors"  # the name save_pretrained gives the weights
SOURCE_METADATA = "source_metadata"  # ModelBundle.extra key: the original checkpoint's safetensors metadata
ORIGINAL_METADATA = "clipedit.original_metadata"  # file metadata key: the same, carried by edited checkpoints


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict; strips ``module.`` prefixes and unwraps ``{"state_dict": …}``.

    Raises:
        ModelLoadError: missing or unreadable file, no state dict, or NaN/inf in a tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    state = _read_tensors(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    check_finite_state(state, path)
    return state


def _read_tensors(path: Path) -> object:
    """The file's contents: a ``.safetensors`` file, or a ``torch.save`` file read with tensors only (no code
    runs while reading). Anything else is refused in one line saying it is not a checkpoint."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(f"cannot read checkpoint {path}: not a safetensors file ({first})") from None
    if not _looks_like_torch_file(path):
        raise ModelLoadError(f"cannot read checkpoint {path}: the file is not a checkpoint (clipedit reads "
                             ".safetensors files and torch.save files of tensors: .pt, .pth, .bin)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(f"cannot read checkpoint {path}: it holds Python objects other than tensors, which "
                             "clipedit does not load (save the state dict alone, or as .safetensors)") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}") from None


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive, or a legacy pickle (protocol >= 2)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def check_finite_state(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Raise ModelLoadError naming the first floating-point tensor with NaN or inf."""
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelLoadError(f"checkpoint {source} is corrupt: {name} contains NaN or inf")


def state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> Optional[str]:
    """What keeps ``state`` from loading strictly into ``model`` (first missing, unexpected and
    wrongly-shaped keys), or None when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{label} {len(keys)} key(s), first: {', '.join(keys[:3])}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape in", shapes))
             if keys]
    return "; ".join(parts) or None


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load ``state`` into ``model`` strictly (converting dtypes), or raise a one-line ModelLoadError."""
    problem = state_mismatch(model, state)
    if problem is not None:
        raise ModelLoadError(f"checkpoint {source} does not fit this model ({problem})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"checkpoint {source} does not fit this model: {str(e).strip().splitlines()[0]}") from None


def load_weights_into(model: torch.nn.Module, checkpoint: str | os.PathLike) -> dict[str, torch.dtype]:
    """Load a checkpoint into ``model`` (strict), with a one-line error when it does not fit.

    Returns:
        the source dtype of every tensor (``checkpoint_dtypes``), to save edited weights in that precision.
    """
    state = load_state_dict_file(checkpoint)
    load_state_into(model, state, checkpoint)
    return checkpoint_dtypes(checkpoint, state)


def checkpoint_dtypes(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> dict[str, torch.dtype]:
    """The dtype of every tensor of a loaded checkpoint; a tensor that ``save_model_weights`` had to keep
    wider than its source (an edited layer) reports the source's dtype recorded in the file's metadata."""
    dtypes = {k: v.dtype for k, v in state.items()}
    if Path(path).suffix == ".safetensors":
        recorded = json.loads(read_safetensors_metadata(path).get(SOURCE_DTYPES, "{}"))
        dtypes.update({k: getattr(torch, v) for k, v in recorded.items()
                       if k in dtypes and isinstance(getattr(torch, v, None), torch.dtype)})
    return dtypes


def original_metadata(path: Optional[str | os.PathLike]) -> Optional[dict[str, str]]:
    """The metadata of the original checkpoint behind ``path``: what an edited checkpoint recorded of its
    source (:data:`ORIGINAL_METADATA`), else the file's own; None without a ``.safetensors`` file."""
    if path is None or Path(path).suffix != ".safetensors":
        return None
    meta = read_safetensors_metadata(path)
    if ORIGINAL_METADATA in meta:
        try:
            recorded = json.loads(meta[ORIGINAL_METADATA])
        except json.JSONDecodeError:
            recorded = None
        if isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values()):
            return recorded
    return meta


def stored_dtypes(bundle, layers) -> dict[str, dict[str, str]]:
    """For each edited layer's weight whose source dtype cannot hold the edit (fp16/bf16 sources): its
    source dtype and the dtype :func:`save_model_weights` stores it in, for the edit's metadata."""
    source = bundle.extra.get(SOURCE_DTYPES) or {}
    state = bundle.model.state_dict()
    out = {}
    for layer in layers:
        name = f"{layer}.weight"
        if name in state and name in source and source[name] != state[name].dtype:
            out[name] = {"source": str(source[name]).removeprefix("torch."),
                         "stored": str(state[name].dtype).removeprefix("torch.")}
    return out


def save_model_weights(path: str | os.PathLike, bundle, metadata: Optional[dict] = None,
                       original: bool = False) -> Path:
    """Write a ``ModelBundle``'s weights in its source checkpoint's dtypes, atomically.

    Unchanged weights of an fp16 checkpoint are written in fp16 again (bit-exact with the source). A
    tensor the source dtype cannot hold exactly (an edited layer) keeps its own dtype, and its source
    dtype goes into the metadata, so that reverting the edit writes the source file's dtypes again.

    A Hugging Face model's ``model.safetensors`` is written by ``save_pretrained``, with its config,
    image processor and tokenizer beside it: the folder loads with ``transformers`` alone. Under any other
    name its state dict is written (transformers' own names), for ``--model hf:ID --checkpoint FILE``.

    The source checkpoint's own metadata goes into the file (:data:`ORIGINAL_METADATA`); with ``original``
    (a revert) the file gets that metadata alone instead of ``metadata``, so that a checkpoint whose edits
    were all reverted is byte-identical to its source.
    """
    guard_output(path)  # the folder an export writes into is guarded with it
    export = bundle.extra.get(PRETRAINED_EXPORT)
    if export is not None and Path(path).name == PRETRAINED_WEIGHTS:
        return export(bundle, Path(path).parent)
    if export is not None:
        metadata = {**(metadata or {}), "format": "pt"}
    dtypes = bundle.extra.get(SOURCE_DTYPES) or {}
    state, kept = {}, {}
    for name, t in bundle.model.state_dict().items():
        dtype = dtypes.get(name)
        if dtype is not None and dtype != t.dtype and t.is_floating_point() and dtype.is_floating_point:
            cast = t.to(dtype)
            if torch.equal(cast.to(t.dtype), t):
                t = cast
            else:
                kept[name] = str(dtype).removeprefix("torch.")
        state[name] = t
    source_meta = bundle.extra.get(SOURCE_METADATA)
    if original and source_meta is not None and not kept:
        return save_state_dict(path, state, metadata=dict(source_meta))
    meta = {**(metadata or {}), **({SOURCE_DTYPES: kept} if kept else {})}
    if source_meta is not None:
        meta[ORIGINAL_METADATA] = json.dumps(source_meta, sort_keys=True)
    return save_state_dict(path, state, metadata=meta)
