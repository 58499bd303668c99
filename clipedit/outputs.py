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
from clipedit.io import check_replaceable

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class OutputSet:
    """A folder a run writes as a whole; ``names`` are the files it writes there (None: any)."""

    folder: PathLike
    names: Optional[Iterable[str]] = None


def bundled_assets() -> Path:
    """The installed ``clipedit.assets`` folder (the bundled minis' weights and configs)."""
    from importlib import resources

    return Path(str(resources.files("clipedit.assets"))).resolve()


def _resolved(path: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _claims(label: str, value: Union[PathLike, OutputSet]) -> list[tuple[str, Path, Optional[Path]]]:
    """(label, path, folder of the set or None) for each path an output writes."""
    if isinstance(value, OutputSet):
        folder = _resolved(value.folder)
        if value.names is None:
            return [(label, folder, folder)]
        return [(f"{label} {Path(value.folder) / n}", folder / n, folder) for n in value.names] + \
               [(label, folder, None)]
    return [(label, _resolved(value), None)]


def check_outputs(outputs: Mapping[str, Union[PathLike, OutputSet, None]],
                  inputs: Optional[Mapping[str, Union[PathLike, Iterable[PathLike], None]]] = None) -> None:
    """Refuse, in one line naming both, an output that is an input, lies in the bundled assets, is
    another output of the same run, or is an existing special file.

    Args:
        outputs: label (``--out``, ``--report`` …) -> file, :class:`OutputSet`, or None (not written).
        inputs: label -> a file or folder read by the run (or several), or None.
    """
    claims = [c for label, value in outputs.items() if value is not None for c in _claims(label, value)]
    assets = bundled_assets()
    for label, value in outputs.items():
        if value is None:
            continue
        folder = isinstance(value, OutputSet)
        path = Path(value.folder if folder else value)
        check_replaceable(_resolved(path), directory=folder)
        if _inside(_resolved(path), assets) or (folder and _inside(assets, _resolved(path))):
            raise ClipeditError(f"{label} {path} would write into the bundled assets ({assets}); "
                                "write elsewhere (e.g. runs/)")
    for i, (label, path, set_folder) in enumerate(claims):
        for other_label, other, other_set in claims[i + 1:]:
            if other_label.split()[0] == label.split()[0]:
                continue  # the files of one set
            hit = path == other or (other_set is not None and _inside(path, other_set)) or \
                (set_folder is not None and _inside(other, set_folder))
            if hit:
                raise ClipeditError(f"{label} and {other_label} are the same file ({path}); give them different "
                                    "paths")
    for in_label, value in (inputs or {}).items():
        for source in _paths(value):
            src = _resolved(source)
            for label, path, set_folder in claims:
                if src == path and set_folder is None and label in outputs and isinstance(outputs[label], OutputSet):
                    raise ClipeditError(f"{label} {outputs[label].folder} is the input {in_label} {source}: the "
                                        "run would replace the folder it reads; write elsewhere")
                if src == path or (set_folder is not None and _inside(src, set_folder)):
                    raise ClipeditError(f"{label} would overwrite the input {in_label} {source}"
                                        + (f" (both are {path})" if Path(source) != path else "")
                                        + "; write elsewhere")


def _paths(value) -> list[PathLike]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return [v for v in value if v is not None]
