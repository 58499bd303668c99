"""The one check before anything is written (:func:`guard_output`): never the bundled assets, a checkpoint
this process loaded, a special file, the current folder or a mount point; first it finishes what a killed
run left half-done there."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

from clipedit.errors import ClipeditError
from clipedit.io.checks import check_replaceable
from clipedit.io.journals import (
    _journal_path,
    _lock,
    _set_journal_path,
    recover_interrupted_files,
    recover_interrupted_swap,
)

_SOURCES: set[Path] = set()  # checkpoints this process loaded a model from: never written


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
