"""Temporaries clipedit can prove it made: their names (owner process, random token, a mac keyed by a
per-user secret kept in the cache folder), and the removal of those whose process is gone."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


# Temporaries are ``.<name>.<pid>-<start>.<8 random hex>.<16 hex mac>.<kind>[<suffix>]``: ``tmp`` a file or
# staging folder being written, ``old`` a replaced set put aside, ``set`` the journal of a file set.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.(?P<token>[0-9a-f]{8})"
                        r"\.(?P<mac>[0-9a-f]{16})\.(?P<kind>tmp|old)(?P<suffix>\.[^/]*)?$")


_KEYS: dict[Path, bytes] = {}


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
