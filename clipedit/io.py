"""File output that never leaves a half-written file: atomic writes of JSON, images, ``.safetensors``,
of several files together and of whole output sets (a run's files appear together or not at all).

Every writer goes through one guard, :func:`guard_output`: it refuses the bundled assets, a checkpoint
this process loaded a model from, a special file, the current folder (or one above it) as an output
folder, and an output folder holding a mount point; and it first finishes or rolls back what a killed
run left half-done on that path.

Temporaries carry their owner and a proof that clipedit made them in their name
(``.<name>.<pid>-<start time>.<random>.<mac>.tmp``; the mac is keyed by a per-user secret): a run
removes only temporaries it can authenticate whose process is gone, never a user's file that merely
looks like one, never a live run's. Writers of one output hold a lock beside it (``.<name>.lock``,
removed after), so that two runs on one ``--out`` take turns; a set replacing an older one swaps whole
directories (old aside, new in, old deleted), and a swap that a kill interrupted is finished or rolled
back by the next writer of that folder, from a journal it can authenticate (one naming anything but
its own output's temporaries is refused in one line)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.errors import ClipeditError

log = logging.getLogger(__name__)

# Temporaries are ``.<name>.<pid>-<start>.<8 random hex>.<16 hex mac>.<kind>[<suffix>]``: ``tmp`` a file or
# staging folder being written, ``old`` a replaced set put aside, ``set`` the journal of a file set.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.(?P<token>[0-9a-f]{8})"
                        r"\.(?P<mac>[0-9a-f]{16})\.(?P<kind>tmp|old)(?P<suffix>\.[^/]*)?$")
_SWAP_JOURNAL = ".swap.json"  # suffix of the journal of a directory swap beside the folder
_SET_JOURNAL = ".set.json"  # suffix of the journal of a file set beside its first file
_KEYS: dict[Path, bytes] = {}
_SOURCES: set[Path] = set()  # checkpoints this process loaded a model from: never written


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


def _owner_alive(pid: str, start: str) -> bool:
    """Whether the process that made a temporary still runs (the same pid and start time)."""
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


def _key() -> bytes:
    """This user's secret for authenticating clipedit's temporaries and journals, kept (0600) in
    ``$CLIPEDIT_CACHE`` or ``~/.cache/clipedit``; where it cannot be kept, one for this process only
    (then only this process's own temporaries are ever removed)."""
    folder = Path(os.environ.get("CLIPEDIT_CACHE") or Path.home() / ".cache" / "clipedit")
    path = folder / "owner.key"
    if path not in _KEYS:
        _KEYS[path] = _read_or_make_key(path)
    return _KEYS[path]


def _read_or_make_key(path: Path) -> bytes:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    key = os.read(fd, 64)
                    if len(key) == 32:
                        return key
            finally:
                os.close(fd)
            break  # there but not a key: use one of this process
        except FileNotFoundError:
            pass
        except OSError:
            break
        try:  # made whole beside, then linked in: two processes creating it at once agree on one
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".owner.key.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            break
    log.debug("no owner key at %s; temporaries of other runs will not be removed", path)
    return secrets.token_bytes(32)


def _mac(text: str) -> str:
    return hmac.new(_key(), text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]


def _name_mac(name: str, owner: str, token: str, kind: str, suffix: str) -> str:
    return _mac("\0".join(("temporary", name, owner, token, kind, suffix)))


def _temp_name(name: str, suffix: str = "", kind: str = "tmp", owner: Optional[str] = None) -> str:
    """``.<name>.<owner>.<random>.<mac>.<kind><suffix>``: a temporary (``tmp``) or an old set put aside
    (``old``), named so that only clipedit (this user's) can have made it."""
    owner = owner or owner_tag()
    token = secrets.token_hex(4)
    return f".{name}.{owner}.{token}.{_name_mac(name, owner, token, kind, suffix)}.{kind}{suffix}"


def temporary_name(name: str, suffix: str = "") -> str:
    """A name for a temporary of ``name`` (file or folder) that clipedit can later prove it made (and so
    remove once its process is gone, :func:`remove_stale_temporaries`)."""
    return _temp_name(name, suffix)


def authentic_temporary(entry_name: str, name: Optional[str] = None, kind: Optional[str] = None):
    """The parts of ``entry_name`` when it is a temporary clipedit made (of ``name``, of ``kind`` when
    given), else None: a user's file that merely looks like one is never taken for one."""
    match = _TEMPORARY.match(entry_name)
    if match is None or (name is not None and match["name"] != name) or (kind is not None and match["kind"] != kind):
        return None
    owner = f"{match['pid']}-{match['start']}"
    expected = _name_mac(match["name"], owner, match["token"], match["kind"], match["suffix"] or "")
    return match if hmac.compare_digest(expected, match["mac"]) else None


def note_source(path: str | os.PathLike) -> None:
    """Record ``path`` as a checkpoint (file or folder) a model was loaded from: no writer replaces it."""
    with contextlib.suppress(OSError, ValueError):
        _SOURCES.add(Path(os.path.realpath(path)))


def bundled_assets() -> Path:
    """The installed ``clipedit.assets`` folder (the bundled minis' weights and configs)."""
    from importlib import resources

    return Path(str(resources.files("clipedit.assets"))).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def guard_output(path: str | os.PathLike, directory: bool = False, label: Optional[str] = None) -> Path:
    """The one check before anything is written to ``path`` (a file, or with ``directory`` a folder written
    whole); returns it resolved (through ``..`` and symbolic links). Refuses, in one line: an empty path, the
    bundled assets, a checkpoint this process loaded, what is not a regular file (folder), an output folder
    that is the current folder, one above it, the home folder, a mount point or holds one. Then finishes or
    rolls back what a killed run left half-done there (a folder swap, a file set).
    """
    raw = os.fspath(path)
    shown = f"{label} {raw}" if label else raw
    if not raw.strip():
        raise ClipeditError(f"{label or 'the output path'} is empty; name a file or folder")
    _check_name_length(raw, shown)
    resolved = Path(os.path.realpath(raw))  # '~' is a name here, as for every writer (the shell expands it)
    check_replaceable(resolved, directory=directory)
    if directory:
        _check_output_folder(resolved, shown)
    assets = bundled_assets()
    if _inside(resolved, assets) or (directory and _inside(assets, resolved)):
        raise ClipeditError(f"{shown} would write into the bundled assets ({assets}); write elsewhere (e.g. runs/)")
    for source in _SOURCES:
        if resolved == source or _inside(resolved, source) or (directory and _inside(source, resolved)):
            raise ClipeditError(f"{shown} would overwrite {source}, a checkpoint a model was loaded from (a source "
                                "is never modified in place); write elsewhere")
    _recover_around(resolved)
    return resolved


#: Bytes a temporary's name adds to the name it stands for (owner, random part, mac, kind, a suffix).
_TEMPORARY_EXTRA = 64


def _check_name_length(raw: str, shown: str) -> None:
    """Refuse a name its temporaries could not carry (file names are at most 255 bytes on most systems)."""
    name = os.path.basename(raw.rstrip("/")) or raw
    limit = 255
    with contextlib.suppress(OSError, ValueError, AttributeError):
        limit = os.pathconf(os.path.dirname(os.path.abspath(raw)) or "/", "PC_NAME_MAX")
    size = len(os.fsencode(name))
    if size + _TEMPORARY_EXTRA > limit:
        raise ClipeditError(f"{shown[:80]}{'…' if len(shown) > 80 else ''}: the name is {size} bytes long; at most "
                            f"{limit - _TEMPORARY_EXTRA} here (its temporaries add to it)")


def _check_output_folder(folder: Path, shown: str) -> None:
    """A folder replaced whole must be a run's own: not the current folder or one above it, not the home
    folder, not a mount point, and holding no mount point (a mount cannot be moved aside and back)."""
    cwd = Path(os.path.realpath(os.getcwd()))
    if _inside(cwd, folder):
        raise ClipeditError(f"{shown} is the current folder{'' if cwd == folder else ' or one above it'}; a run "
                            "replaces its output folder as a whole: name a folder of its own (e.g. runs/NAME)")
    if folder == Path(os.path.realpath(Path.home())):
        raise ClipeditError(f"{shown} is the home folder; name a folder of its own (e.g. runs/NAME)")
    if not folder.is_dir():
        return
    if os.path.ismount(folder):
        raise ClipeditError(f"{shown} is a mount point; a run replaces its output folder as a whole: name a "
                            "folder inside it")
    try:
        with os.scandir(folder) as entries:
            mounts = [e.name for e in entries if e.is_dir(follow_symlinks=False) and os.path.ismount(e.path)]
    except OSError as e:
        raise ClipeditError(f"cannot read {shown}: {e.strerror}") from None
    if mounts:
        raise ClipeditError(f"{shown} holds a mount point ({folder / mounts[0]}); a run replaces its output folder "
                            "as a whole and cannot move a mount: write elsewhere")


def _recover_around(path: Path) -> None:
    """Before writing ``path``: finish or roll back an interrupted swap of a folder it lies in (also one a
    kill left missing, so that it is not recreated empty over the old set put aside), and an interrupted
    file set that ``path`` heads."""
    for folder in [path, *path.parents]:
        if os.path.lexists(_journal_path(folder)):
            with _lock(folder):
                recover_interrupted_swap(folder)
        if folder.exists() and folder != path:
            break
    if os.path.lexists(_set_journal_path(path)):
        with _lock(path):
            recover_interrupted_files(path)


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
    """Delete the temporaries that killed clipedit runs left in ``folder`` (only those of ``name`` when
    given): names this user's clipedit made (authenticated), whose process is gone. A live run's are left
    alone, and so is every name clipedit cannot prove it made, however much it looks like a temporary."""
    removed = []
    prefix = f".{name}." if name is not None else "."
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry_name in names:
        match = authentic_temporary(entry_name, name)
        if match is None or _owner_alive(match["pid"], match["start"]):
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
    path = guard_output(path)  # through symlinks: the file they name is replaced, not the link
    ensure_writable_dir(path.parent)
    remove_stale_temporaries(path.parent, path.name)
    tmp = path.parent / _temp_name(path.name, path.suffix)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise write_failure(path, e) from None
    try:
        with _io_errors(path):
            yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 and some writers replace the file
        os.replace(tmp, path)
    except OSError as e:
        raise write_failure(path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _io_errors(path: Path) -> Iterator[None]:
    """Writers' own wrappers of I/O errors (safetensors, PIL) as one line naming ``path``."""
    try:
        yield
    except (OSError, ClipeditError):
        raise
    except Exception as e:
        if _is_io_error(e):
            raise write_failure(path, e) from None
        raise


@contextlib.contextmanager
def atomic_file_set(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary per file of ``paths`` (files of one folder, e.g. a record and its chart); on
    success they replace ``paths`` together, under the set's lock, so that two writers leave one writer's
    whole set. A journal beside the first file lists the renames: a kill between them is finished by the
    next writer of that set (:func:`recover_interrupted_files`); a kill before it leaves the old set whole.
    """
    finals = [guard_output(p) for p in paths]
    if not finals or len({f.parent for f in finals}) != 1 or len(set(finals)) != len(finals):
        raise ClipeditError("a file set is distinct files of one folder, got " + ", ".join(map(str, paths)))
    folder = finals[0].parent
    ensure_writable_dir(folder)
    tmps = []
    try:
        for final in finals:
            remove_stale_temporaries(folder, final.name)
            tmps.append(folder / _temp_name(final.name, final.suffix))
            os.close(os.open(tmps[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        with _io_errors(finals[0]):
            yield list(tmps)
        for tmp in tmps:
            os.chmod(tmp, 0o666 & ~_umask())
        with _lock(finals[0]):
            recover_interrupted_files(finals[0])
            journal = _set_journal_path(finals[0])
            _write_journal(journal, {"kind": "files", "head": finals[0].name,
                                     "moves": [[t.name, f.name] for t, f in zip(tmps, finals)]})
            for tmp, final in zip(tmps, finals):
                _hook("file-set")
                os.replace(tmp, final)
            journal.unlink()
    except OSError as e:
        raise write_failure(finals[0], e) from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def _hook(point: str) -> None:
    """Tests of kills at a known point: ``CLIPEDIT_KILL_AT=<point>:<n>`` ends this process (SIGKILL) at the
    n-th time it reaches ``point`` (a rename of a swap or of a file set)."""
    spec = os.environ.get("CLIPEDIT_KILL_AT")
    if not spec:
        return
    where, _, count = spec.partition(":")
    if where != point:
        return
    _HOOK_COUNTS[point] = _HOOK_COUNTS.get(point, 0) + 1
    if str(_HOOK_COUNTS[point]) == (count or "1"):
        os.kill(os.getpid(), 9)


_HOOK_COUNTS: dict[str, int] = {}


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
    out = guard_output(out, directory=True)  # a symlinked folder: the folder it names is replaced, the link kept
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
            _check_output_folder(out, str(out))  # a mount may have appeared while the run worked
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
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
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


def _set_journal_path(head: Path) -> Path:
    return head.parent / f".{head.name}{_SET_JOURNAL}"


def _write_journal(path: Path, record: dict) -> None:
    """``record`` with its mac, written whole (beside, then renamed in)."""
    body = json.dumps(record, sort_keys=True)
    tmp = path.parent / _temp_name(path.name)
    try:
        tmp.write_text(json.dumps({"record": record, "mac": _mac("journal\0" + body)}))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_journal(path: Path, what: str) -> Optional[dict]:
    """The record of the journal at ``path`` (None when there is none), refused in one line when clipedit
    cannot prove it wrote it."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise ClipeditError(f"{path} is not a journal clipedit wrote (not a regular file); nothing was "
                                f"changed: remove it if no clipedit run is writing {what}")
        data = json.loads(path.read_text(encoding="utf-8"))
        record, mac = data["record"], data["mac"]
        ok = isinstance(record, dict) and isinstance(mac, str) and \
            hmac.compare_digest(_mac("journal\0" + json.dumps(record, sort_keys=True)), mac)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ClipeditError(f"cannot read the journal {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, RecursionError):
        ok = False
    if not ok:
        raise ClipeditError(f"{path} is not a journal clipedit wrote (it cannot be authenticated); nothing was "
                            f"changed: remove it if no clipedit run is writing {what}")
    return record


def _bare_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def recover_interrupted_swap(out: str | os.PathLike) -> Optional[str]:
    """Finish or roll back a swap of ``out`` that a kill interrupted (call with ``out``'s lock held).

    The journal must be one clipedit wrote for ``out`` and name only ``out``'s own set put aside beside it
    and names of files in it; anything else is refused in one line and nothing is touched. The swap is
    finished only when ``out`` is the very folder the run staged; a missing or empty ``out`` gets the old
    set back; an ``out`` recreated since with files in it is refused (the old set stays aside, named).

    Returns what was done (``"rolled back"``, ``"finished"``) or None when there was nothing to do.
    """
    out = Path(out)
    journal = _journal_path(out)
    record = _read_journal(journal, str(out))
    if record is None:
        return None
    aside_name, carry, staged = record.get("aside"), record.get("carry"), record.get("stage")
    if record.get("kind") != "swap" or record.get("out") != out.name or not _bare_name(aside_name) \
            or authentic_temporary(aside_name, out.name, "old") is None or not isinstance(carry, list) \
            or not all(_bare_name(n) for n in carry) or not (isinstance(staged, list) and len(staged) == 2
                                                           and all(isinstance(v, int) for v in staged)):
        raise ClipeditError(f"the swap journal {journal} names something outside {out}; nothing was changed: "
                            "remove it if no clipedit run is writing there")
    aside = out.parent / aside_name
    done = None
    try:
        if aside.is_dir() and not aside.is_symlink():
            if not os.path.lexists(out):  # killed between "old aside" and "new in": the old one back
                os.replace(aside, out)
                done = "rolled back"
            elif _is_folder(out, tuple(staged)):  # the new set is in: the old folder's other files, then delete it
                for name in carry:
                    if os.path.lexists(aside / name) and not os.path.lexists(out / name):
                        os.replace(aside / name, out / name)
                shutil.rmtree(aside, ignore_errors=True)
                done = "finished"
            elif out.is_dir() and not out.is_symlink() and not any(out.iterdir()):  # recreated empty since
                os.rmdir(out)
                os.replace(aside, out)
                done = "rolled back"
            else:
                raise ClipeditError(f"a killed run left the previous contents of {out} in {aside}, and {out} has "
                                    f"been written since; nothing was changed: move back what you need from "
                                    f"{aside.name}, then remove it and {journal.name}")
        journal.unlink(missing_ok=True)
    except OSError as e:
        raise write_failure(out, e) from None
    if done:
        log.warning("%s an interrupted replacement of %s", done, out)
    return done


def _is_folder(path: Path, dev_ino: tuple[int, int]) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == dev_ino


def recover_interrupted_files(head: str | os.PathLike) -> Optional[str]:
    """Finish a file set (:func:`atomic_file_set`) whose renames a kill interrupted: every temporary the
    journal beside ``head`` lists and that is still there is renamed onto its file (call with the set's
    lock held). A journal naming anything but this set's own temporaries and files is refused in one line.

    Returns ``"finished"`` or None when there was nothing to do.
    """
    head = Path(head)
    journal = _set_journal_path(head)
    record = _read_journal(journal, str(head))
    if record is None:
        return None
    moves = record.get("moves")
    if record.get("kind") != "files" or record.get("head") != head.name or not isinstance(moves, list) or not all(
            isinstance(m, list) and len(m) == 2 and all(_bare_name(n) for n in m)
            and (match := authentic_temporary(m[0], kind="tmp")) is not None and match["name"] == m[1]
            for m in moves):
        raise ClipeditError(f"the journal {journal} names something outside its own files; nothing was changed: "
                            f"remove it if no clipedit run is writing {head}")
    try:
        for tmp, final in moves:
            if os.path.lexists(head.parent / tmp):
                os.replace(head.parent / tmp, head.parent / final)
        journal.unlink(missing_ok=True)
    except OSError as e:
        raise write_failure(head, e) from None
    log.warning("finished an interrupted write of %s", ", ".join(str(head.parent / f) for _, f in moves))
    return "finished"


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
        st = os.stat(stage)
        _write_journal(journal, {"kind": "swap", "out": out.name, "aside": aside.name, "carry": carry,
                                 "stage": [st.st_dev, st.st_ino]})
        _hook("swap")
        os.replace(out, aside)  # 1. the old set aside
        _hook("swap")
        os.replace(stage, out)  # 2. the new one in
        for name in carry:  # 3. what is not the set's stays with the folder
            _hook("swap")
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
