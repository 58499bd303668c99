"""File output that never leaves a half-written file: atomic writes of JSON, images, ``.safetensors``
and of whole output sets (a run's files appear together or not at all).

Temporaries carry their owner in their name (``.<name>.<pid>-<start time>.<random>.tmp``): a run
removes only those whose process is gone, never a live run's. Writers of one output set hold a lock
beside it (``.<name>.lock``, removed after), so that two runs on one ``--out`` take turns; a set
replacing an older one swaps whole directories (old aside, new in, old deleted), and a swap that a
kill interrupted is finished or rolled back by the next run on that folder."""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.errors import ClipeditError

log = logging.getLogger(__name__)

# Temporaries are ``.<name>.<pid>-<start>.<8 random characters>.tmp[<suffix>]``; those of clipedit before
# owners were recorded (``.<name>.<8 random>.tmp[…]``) have no owner and count as stale.
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)-(?P<start>\d+)\.)?[a-z0-9_]{8}"
                        r"\.(?:tmp|old)(\.[^/]*)?$")
_SWAP_JOURNAL = ".swap.json"  # suffix of the journal of a directory swap beside the folder


def _start_time(pid: int) -> Optional[int]:
    """The start time of process ``pid`` (clock ticks since boot; None where it is gone or unknown)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text.rpartition(")")[2].split()[19])
    except (IndexError, ValueError):
        return None


def owner_tag() -> str:
    """``<pid>-<start time>`` of this process: what names it as the owner of a temporary."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}"


def _owner_alive(pid: Optional[str], start: Optional[str]) -> bool:
    """Whether the process that made a temporary still runs (the same pid and start time)."""
    if pid is None:
        return False  # no owner recorded: an older clipedit's
    now = _start_time(int(pid))
    if now is not None:
        return int(start) in (0, now)
    if Path("/proc/self/stat").exists():
        return False  # /proc works here and has no such process
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _temp_name(name: str, suffix: str = "", kind: str = "tmp") -> str:
    """``.<name>.<owner>.<random>.<kind><suffix>``: a temporary (``tmp``) or an old set put aside (``old``)."""
    return f".{name}.{owner_tag()}.{secrets.token_hex(4)}.{kind}{suffix}"


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
    """Delete the temporaries that killed runs left in ``folder`` (only those of ``name`` when given);
    a temporary whose owner still runs is left alone."""
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
        if _owner_alive(match["pid"], match["start"]):
            continue
        entry = Path(folder) / entry_name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        log.info("removed a stale temporary %s", entry)
    return removed


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The file gets the usual mode (0666 less the umask); errors while writing become ``ClipeditError``.
    """
    path = Path(os.path.realpath(path))  # through symlinks: the file they name is replaced, not the link
    check_replaceable(path)
    ensure_writable_dir(path.parent)
    remove_stale_temporaries(path.parent, path.name)
    tmp = path.parent / _temp_name(path.name, path.suffix)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise write_failure(path, e) from None
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

    Runs writing one ``out`` take turns (a lock beside it). A missing or empty ``out`` is replaced by
    the folder in one rename. A folder that already holds files is swapped whole: the old one is
    renamed aside, the new one in, the old one's files that are not the set's (neither written nor
    named in ``replaces``) are moved into the new one, and the old one is deleted. A journal beside
    ``out`` lets the next run finish a swap a kill interrupted, or roll it back to the old folder.
    """
    out = Path(os.path.realpath(out))  # a symlinked folder: the folder it names is replaced, the link kept
    check_replaceable(out, directory=True)
    ensure_writable_dir(out.parent)
    with _lock(out):
        recover_interrupted_swap(out)
        remove_stale_temporaries(out.parent, out.name)
        if out.is_dir():
            remove_stale_temporaries(out)
        stage = out.parent / _temp_name(out.name)
        try:
            stage.mkdir()
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


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold ``.<out>.lock`` beside ``out`` (waiting for another run that holds it); removed after."""
    path = out.parent / f".{out.name}.lock"
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_failure(out, e) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.warning("another run is writing %s; waiting for it to finish", out)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file as we waited: lock the new one
                continue
            try:
                yield
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            return
        finally:
            os.close(fd)


def _journal_path(out: Path) -> Path:
    return out.parent / f".{out.name}{_SWAP_JOURNAL}"


def recover_interrupted_swap(out: str | os.PathLike) -> Optional[str]:
    """Finish or roll back a swap of ``out`` that a kill interrupted (call with ``out``'s lock held).

    Returns what was done (``"rolled back"``, ``"finished"``) or None when there was nothing to do.
    """
    out = Path(out)
    journal = _journal_path(out)
    try:
        record = json.loads(journal.read_text())
        aside = out.parent / record["aside"]
        carry = [str(n) for n in record["carry"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable swap journal %s", journal)
        journal.unlink(missing_ok=True)
        return None
    done = None
    if aside.is_dir() and not out.exists():  # killed between "old aside" and "new in": the old one back
        os.replace(aside, out)
        done = "rolled back"
    elif aside.is_dir():  # the new set is in: finish moving the old folder's other files, then delete it
        for name in carry:
            if (aside / name).exists() and not (out / name).exists():
                os.replace(aside / name, out / name)
        shutil.rmtree(aside, ignore_errors=True)
        done = "finished"
    journal.unlink(missing_ok=True)
    if done:
        log.warning("%s an interrupted replacement of %s", done, out)
    return done


def _move_set_into_place(stage: Path, out: Path, replaces: set[str]) -> None:
    os.chmod(stage, 0o777 & ~_umask())
    try:
        if not out.exists() or not any(out.iterdir()):
            os.replace(stage, out)  # onto nothing or an empty folder: one rename
            return
        names = {p.name for p in stage.iterdir()}
        carry = sorted(p.name for p in out.iterdir() if p.name not in names and p.name not in replaces)
        aside = out.parent / _temp_name(out.name, kind="old")
        journal = _journal_path(out)
        journal_tmp = out.parent / _temp_name(out.name + _SWAP_JOURNAL)
        journal_tmp.write_text(json.dumps({"aside": aside.name, "carry": carry}))
        os.replace(journal_tmp, journal)
        os.replace(out, aside)  # 1. the old set aside
        os.replace(stage, out)  # 2. the new one in
        for name in carry:  # 3. what is not the set's stays with the folder
            os.replace(aside / name, out / name)
        shutil.rmtree(aside, ignore_errors=True)  # 4. the old set gone
        journal.unlink(missing_ok=True)
    except OSError as e:
        raise write_failure(out, e) from None


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
