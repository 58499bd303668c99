"""On-disk cache of tensors keyed by the arguments that made them (after davidbau/rewriting)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from clipedit.core.edits import tensor_digest

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$CLIPEDIT_CACHE`` or ``~/.cache/clipedit``."""
    return Path(os.environ.get("CLIPEDIT_CACHE", Path.home() / ".cache" / "clipedit"))


def module_fingerprint(module: nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """A short hash of the parameters and buffers of ``module`` (names, shapes, dtypes, bytes).

    Args:
        exclude: name prefixes to leave out (e.g. ``("visual.",)``).
    """
    h = hashlib.blake2b(digest_size=12)
    for name, t in module.state_dict().items():
        if name.startswith(exclude):
            continue
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(**parts) -> str:
    """A hash of JSON-serialisable ``parts`` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


FORMAT = "clipedit-cache/1"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(f"{name}:{tensor_digest(tensors[name])};".encode())
    return h.hexdigest()


def _args_text(args: Optional[dict]) -> str:
    return json.dumps(args or {}, sort_keys=True, default=str)


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                   enabled: bool = True, args: Optional[dict] = None,
                   shapes: Optional[dict[str, tuple[int, ...]]] = None) -> dict[str, torch.Tensor]:
    """Return ``compute()``'s tensors, read from (or written to) ``cache_dir()/kind/key.safetensors``.

    An entry records the arguments that made it (``args``) and a digest of its tensors. It is used only
    when both match, every tensor is finite and has its expected shape (``shapes``: name -> shape, the
    model's and site's, so that an entry re-digested with other shapes is not taken); otherwise it is
    recomputed with a warning and rewritten.
    """
    return cached_record(kind, key, lambda: (compute(), None), enabled, args, shapes)[0]


def cached_record(kind: str, key: str, compute: Callable[[], tuple[dict[str, torch.Tensor], Optional[dict]]],
                  enabled: bool = True, args: Optional[dict] = None,
                  shapes: Optional[dict[str, tuple[int, ...]]] = None
                  ) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """:func:`cached_tensors` for ``compute()`` = (tensors, info): ``info`` (JSON-serialisable, or None)
    is kept beside the tensors in the entry's header and covered by its digest (e.g. the words and styles
    of rendered scenes)."""
    path = cache_dir() / kind / f"{key}.safetensors"
    if enabled and path.is_file():
        tensors, info, problem = _read_entry(path, args)
        if problem is None and shapes:
            wrong = [f"{n} {tuple(tensors[n].shape) if n in tensors else 'missing'} (expected {tuple(s)})"
                     for n, s in shapes.items() if n not in tensors or tuple(tensors[n].shape) != tuple(s)]
            problem = f"has the wrong shape: {wrong[0]}" if wrong else None
        if problem is None:
            log.info("cache hit %s", path)
            return tensors, info
        log.warning("cache entry %s %s; recomputing it", path, problem)
    tensors, info = compute()
    if enabled:
        _write_entry(path, tensors, args, info)
    return tensors, info


def _entry_digest(tensors: dict[str, torch.Tensor], info_text: Optional[str]) -> str:
    digest = tensors_digest(tensors)
    return digest if info_text is None else hashlib.sha256(f"{digest};{info_text}".encode()).hexdigest()


def _read_entry(path: Path, args: Optional[dict]
                ) -> tuple[Optional[dict[str, torch.Tensor]], Optional[dict], Optional[str]]:
    """(tensors, info, None) for a sound entry, else (None, None, what is wrong with it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:
        return None, None, f"is unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if meta.get("format") != FORMAT:
        return None, None, "has no integrity record (written by an older version)"
    if meta.get("args") != _args_text(args):
        return None, None, f"was made by other arguments ({meta.get('args')})"
    if meta.get("digest") != _entry_digest(tensors, meta.get("info")):
        return None, None, "does not match its digest (altered or corrupt)"
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        return None, None, f"has NaN or inf in {bad[0]}"
    try:
        info = json.loads(meta["info"]) if "info" in meta else None
    except ValueError:
        return None, None, "has an unreadable record"
    return tensors, info, None


def _write_entry(path: Path, tensors: dict[str, torch.Tensor], args: Optional[dict],
                 info: Optional[dict] = None) -> None:
    from safetensors.torch import save_file

    from clipedit.io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    info_text = None if info is None else json.dumps(info, sort_keys=True)
    meta = {"format": FORMAT, "args": _args_text(args), "digest": _entry_digest(tensors, info_text)}
    if info_text is not None:
        meta["info"] = info_text
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except Exception as e:  # caching is best effort
        log.warning("could not write cache entry %s: %s", path, e)
