"""File output that never leaves a half-written file: atomic writes of JSON, images, ``.safetensors``
and of whole output sets (a run's files appear together or not at all)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.errors import ClipeditError

log = logging.getLogger(__name__)

# Temporaries are ``.<name>.<8 random characters>.tmp[<suffix>]`` (what ``tempfile`` makes with our prefix).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp(\.[^/]*)?$")


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


def remove_stale_temporaries(folder: str | os.PathLike, name: Optional[str] = None) -> list[Path]:
    """Delete the temporaries that killed runs left in ``folder`` (only those of ``name`` when given)."""
    removed = []
    prefix = f".{name}." if name is not None else "."
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry_name in names:
        match = _TEMPORARY.match(entry_name)
        if match is None or (name is not None and match["name"] != name):
            continue
        entry = Path(folder) / entry_name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        log.info("removed a stale temporary %s", entry)
    return removed


def write_failure(path: str | os.PathLike, error: BaseException) -> ClipeditError:
    """A one-line error for a write that failed (full disk, name too long, permissions …)."""
    text = str(error).strip()
    if "StorageFull" in text or "No space left" in text:
        reason = "No space left on device"
    else:
        reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    return ClipeditError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The file gets the usual mode (0666 less the umask); errors while writing become ``ClipeditError``.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    remove_stale_temporaries(path.parent, path.name)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise write_failure(path, e) from None
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except (OSError, ClipeditError):
            raise
        except Exception as e:  # writers' own wrappers of I/O errors (safetensors, PIL)
            if _is_io_error(e):
                raise write_failure(path, e) from None
            raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 and some writers replace the file
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_set(out: str | os.PathLike, replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; what is written into it appears in ``out`` together,
    only when the block succeeds. On any failure nothing in ``out`` changes and no temporary stays.

    A missing or empty ``out`` is replaced by the folder in one rename. Into a folder that already
    holds files, every file is moved only after all were written (renames need no space), and the
    names in ``replaces`` that this set does not write are removed, so that no file of an older run
    sits beside the new set.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClipeditError(f"output directory {out} is a file")
    ensure_writable_dir(out.parent)
    remove_stale_temporaries(out.parent, out.name)
    if out.is_dir():
        remove_stale_temporaries(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise write_failure(out, e) from None
    try:
        try:
            yield stage
        except OSError as e:
            raise write_failure(out, e) from None
        _move_set_into_place(stage, out, set(replaces))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_set_into_place(stage: Path, out: Path, replaces: set[str]) -> None:
    os.chmod(stage, 0o777 & ~_umask())
    try:
        if not out.exists() or (not out.is_symlink() and not any(out.iterdir())):
            os.replace(stage, out)
            return
        names = {p.name for p in stage.iterdir()}
        for old in sorted(replaces - names):
            if (out / old).is_file():
                os.replace(out / old, stage / old)  # removed with the stage
        for name in sorted(names):
            os.replace(stage / name, out / name)
    except OSError as e:
        raise write_failure(out, e) from None


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


def _is_io_error(error: Exception) -> bool:
    """Whether a writer's exception wraps an operating-system I/O error (safetensors raises its own type)."""
    text = str(error)
    return any(mark in text for mark in ("I/O error", "IoError", "No space left", "StorageFull"))


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
