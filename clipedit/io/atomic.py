"""Atomic writes: one file (:func:`atomic_path`), several files together (:func:`atomic_file_set`) and a
whole output folder (:func:`atomic_output_set`): what a block writes appears together or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from clipedit.errors import ClipeditError
from clipedit.io.checks import _is_io_error, _umask, ensure_writable_dir, write_failure
from clipedit.io.guard import _check_output_folder, guard_output
from clipedit.io.journals import (
    _hook,
    _lock,
    _move_set_into_place,
    _set_journal_path,
    _write_journal,
    recover_interrupted_files,
    recover_interrupted_swap,
)
from clipedit.io.owners import _temp_name, remove_stale_temporaries


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
