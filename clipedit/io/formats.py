"""Writers and readers of the file formats clipedit outputs: strict JSON, images, ``.safetensors`` (with
their metadata), each written atomically."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.errors import ClipeditError
from clipedit.io.atomic import atomic_path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON, atomically: a NaN or infinite number is written as null."""
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def save_image(path: str | os.PathLike, image) -> Path:
    """Save a PIL image atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=_pil_format(path))
    return path


def _pil_format(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}.get(ext, "PNG")


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
