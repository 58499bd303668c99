"""File output that never leaves a half-written file: atomic writes of JSON, images and ``.safetensors``."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from clipedit.errors import ClipeditError


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written into it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClipeditError(f"cannot create output directory {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ClipeditError(f"output directory {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(path)


def save_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=_pil_format(path))
    return path


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}.get(ext, "PNG")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a ``.safetensors`` header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ClipeditError(f"cannot read {path}: {e}") from None


def save_state_dict(path: str | os.PathLike, state: dict[str, torch.Tensor],
                    metadata: Optional[dict] = None) -> Path:
    """Save tensors as ``.safetensors`` atomically; ``metadata`` values are JSON-encoded if not str."""
    from safetensors.torch import save_file

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)
