"""Replacing a folder or a set of files whole: the lock two writers of one output take turns on, the
authenticated journal of a swap, and finishing or rolling back a swap a killed run left half-done."""
from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from clipedit.errors import ClipeditError
from clipedit.io.checks import _umask, write_failure
from clipedit.io.owners import _mac, _temp_name, authentic_temporary

log = logging.getLogger(__name__)


_SWAP_JOURNAL = ".swap.json"  # suffix of the journal of a directory swap beside the folder
_SET_JOURNAL = ".set.json"  # suffix of the journal of a file set beside its first file


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
