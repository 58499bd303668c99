"""On-disk cache of tensors keyed by the arguments that made them (after davidbau/rewriting)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

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


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                   enabled: bool = True) -> dict[str, torch.Tensor]:
    """Return ``compute()``'s tensors, read from (or written to) ``cache_dir()/kind/key.safetensors``."""
    from safetensors.torch import load_file, save_file

    from clipedit.io import atomic_path

    path = cache_dir() / kind / f"{key}.safetensors"
    if enabled and path.is_file():
        try:
            log.info("cache hit %s", path)
            return load_file(str(path))
        except Exception as e:  # a corrupt entry is recomputed
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
    tensors = compute()
    if enabled:
        try:
            with atomic_path(path) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        except Exception as e:  # caching is best effort
            log.warning("could not write cache entry %s: %s", path, e)
    return tensors
