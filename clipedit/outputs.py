"""The output-path guard: no run writes over its own inputs, the bundled assets, another of its own
outputs, or a special file (a device, a FIFO). Every command that writes calls :func:`check_outputs`
before it loads anything:

    check_outputs({"--out": OutputSet(out, OUTPUT_SET), "--report": report},
                  inputs={"--checkpoint": checkpoint, "--reference": reference})

Paths are compared after resolving ``..`` and symbolic links. An output set (a folder written whole,
:func:`clipedit.io.atomic_output_set`) owns the names it writes (``names``; None: any name in it), so
an input or another output at one of those names collides with it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from clipedit.errors import ClipeditError
from clipedit.io import bundled_assets, guard_output

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class OutputSet:
    """A folder a run writes as a whole; ``names`` are the files it writes there (None: any)."""

    folder: PathLike
    names: Optional[Iterable[str]] = None


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


__all__ = ["OutputSet", "bundled_assets", "check_outputs"]


@dataclass(frozen=True)
class _Claim:
    """A path an output writes: ``owner`` is its option, ``shown`` how a message names it, ``whole`` the
    folder it is when every name in it belongs to the run (an output set without a list of names)."""

    owner: str
    shown: str
    path: Path
    whole: Optional[Path] = None
    is_set: bool = False


def _claims(label: str, value: Union[PathLike, OutputSet]) -> list[_Claim]:
    if isinstance(value, OutputSet):
        folder = _resolved(value.folder)
        if value.names is None:
            return [_Claim(label, f"{label} {value.folder}", folder, whole=folder, is_set=True)]
        return [_Claim(label, f"{label} {value.folder}", folder, is_set=True)] + \
               [_Claim(label, f"{label} {Path(value.folder) / n}", folder / n) for n in value.names]
    return [_Claim(label, label, _resolved(value))]


def _hits(claim: _Claim, path: Path) -> bool:
    return path == claim.path or (claim.whole is not None and _inside(path, claim.whole))


def check_outputs(outputs: Mapping[str, Union[PathLike, OutputSet, None]],
                  inputs: Optional[Mapping[str, Union[PathLike, Iterable[PathLike], None]]] = None) -> None:
    """Refuse, in one line naming both, an output that is an input, lies in the bundled assets, is
    another output of the same run, or is an existing special file.

    Args:
        outputs: label (``--out``, ``--report`` …) -> file, :class:`OutputSet`, or None (not written).
        inputs: label -> a file or folder read by the run (or several), or None.
    """
    claims: list[_Claim] = []
    for label, value in outputs.items():
        if value is None:
            continue
        folder = isinstance(value, OutputSet)
        guard_output(value.folder if folder else value, directory=folder, label=label)  # the one writers' guard
        claims += _claims(label, value)
    for i, claim in enumerate(claims):
        for other in claims[i + 1:]:
            if other.owner != claim.owner and (_hits(claim, other.path) or _hits(other, claim.path)):
                raise ClipeditError(f"{claim.shown} and {other.shown} are the same file ({other.path}); give them "
                                    "different paths" if claim.path == other.path else
                                    f"{other.shown} lies inside {claim.shown}, a folder this run replaces; write "
                                    "it elsewhere")
    for in_label, value in (inputs or {}).items():
        for source in _paths(value):
            src = _resolved(source)
            for claim in claims:
                if claim.is_set and src == claim.path:
                    raise ClipeditError(f"{claim.shown} is the input {in_label} {source}: the run would replace the "
                                        "folder it reads; write elsewhere")
                if _hits(claim, src):
                    raise ClipeditError(f"{claim.shown} would overwrite the input {in_label} {source}"
                                        + (f" (both are {src})" if Path(source) != src else "") + "; write elsewhere")


def _paths(value) -> list[PathLike]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return [v for v in value if v is not None]
