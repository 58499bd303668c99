"""Checks of a path before it is read or written (a regular file of bounded size, a replaceable kind of
entry, a writable folder) and the one-line error of a failed write."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

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


def require_file(path: str | os.PathLike, what: str, error: type[ClipeditError] = ClipeditError,
                 max_bytes: Optional[int] = None) -> Path:
    """``path`` if it names a regular file (through symlinks) of at most ``max_bytes``; else ``error``
    saying it is missing, a folder, a device / FIFO (``/dev/zero`` is no input file: reading one never
    ends, opening a FIFO waits for a writer) or too large. Every file a user names goes through here
    (:mod:`clipedit.inputs` reads them; the CLI's file options check them as they are parsed)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise error(f"cannot read {what} {path}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {_kind(info.st_mode)}, not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} such a file may have")
    return path


def write_failure(path: str | os.PathLike, error: BaseException) -> ClipeditError:
    """A one-line error for a write that failed (full disk, name too long, permissions …)."""
    text = str(error).strip()
    if "StorageFull" in text or "No space left" in text:
        reason = "No space left on device"
    else:
        reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    return ClipeditError(f"cannot write {path}: {reason}")


def check_replaceable(path: str | os.PathLike, directory: bool = False) -> None:
    """Refuse to replace what is not a regular file (a device such as ``/dev/full``, a FIFO, a socket)
    or, for ``directory``, not a folder; a missing path is fine."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ClipeditError(f"cannot write {path}: {e.strerror}") from None
    if directory:
        if not stat.S_ISDIR(mode):
            raise ClipeditError(f"output directory {path} is a file" if stat.S_ISREG(mode) else
                                f"output directory {path} is {_kind(mode)}, not a folder; refusing to replace it")
        return
    if stat.S_ISDIR(mode):
        raise ClipeditError(f"cannot write {path}: it is a directory")
    if not stat.S_ISREG(mode):
        raise ClipeditError(f"cannot write {path}: it is {_kind(mode)}, not a regular file; refusing to replace it")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_io_error(error: Exception) -> bool:
    """Whether a writer's exception wraps an operating-system I/O error (safetensors raises its own type)."""
    text = str(error)
    return any(mark in text for mark in ("I/O error", "IoError", "No space left", "StorageFull"))
