"""Several layer edits made as one (a multi-site edit), applied and reverted like a single edit.

An ``EditSet`` is an ordered list of :class:`~clipedit.core.edits.LayerEdit`: ``apply_edit_set``
applies them in order and ``revert_edit_set`` takes them off in reverse, each through
``apply_edit`` / ``revert_edit`` (so every digest check of a single edit holds for each site). Either
call leaves the model as it found it when one edit is refused. One ``.safetensors`` file holds the
set: each edit's tensors under ``{i}.lambda`` … and its metadata in the header.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from clipedit.core.edits import FORMAT as EDIT_FORMAT
from clipedit.core.edits import LayerEdit, apply_edit, load_edit, revert_edit
from clipedit.errors import EditError
from clipedit.io import read_safetensors_metadata, require_file, save_state_dict

FORMAT = "clipedit-edit-set/1"


@dataclass
class EditSet:
    """Layer edits applied in order, as one edit.

    Attributes:
        edits: the sites' edits, in the order they were made (each on the weights the previous left).
        meta: model name, words, hyperparameters shared by the set.
    """

    edits: list[LayerEdit]
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return [e.layer for e in self.edits]


def apply_edit_set(model: nn.Module, edit_set: EditSet, check_weights: bool = True) -> None:
    """Apply every edit in order; if one is refused, take the ones already applied off again."""
    applied: list[LayerEdit] = []
    try:
        for edit in edit_set.edits:
            apply_edit(model, edit, check_weights=check_weights)
            applied.append(edit)
    except EditError:
        for edit in reversed(applied):
            revert_edit(model, edit)
        raise


def revert_edit_set(model: nn.Module, edit_set: EditSet) -> None:
    """Revert every edit, last first, bit-exactly; if one is refused, re-apply the ones already reverted."""
    reverted: list[LayerEdit] = []
    try:
        for edit in reversed(edit_set.edits):
            revert_edit(model, edit)
            reverted.append(edit)
    except EditError:
        for edit in reversed(reverted):
            apply_edit(model, edit)
        raise


def save_edit_set(path: str | os.PathLike, edit_set: EditSet) -> Path:
    """Write the set as one ``.safetensors`` file (atomically); refuses NaN/inf in any edit."""
    if not edit_set.edits:
        raise EditError("an edit set needs at least one edit")
    tensors = {}
    for i, edit in enumerate(edit_set.edits):
        edit.check_finite()
        tensors.update({f"{i}.{name}": t for name, t in edit.tensors().items()})
    sites = [{"layer": e.layer, **e.meta} for e in edit_set.edits]
    return save_state_dict(path, tensors, metadata={"format": FORMAT, "sites": sites, **edit_set.meta})


def load_edit_set(path: str | os.PathLike) -> EditSet:
    """Read a file of ``save_edit_set``; each edit is verified against its digests before it is returned."""
    path = Path(path)
    require_file(path, "edit file", EditError)  # issue 21: a device or folder is no edit file
    meta = read_safetensors_metadata(path)
    if meta.get("format") != FORMAT:
        raise EditError(f"{path} is not a clipedit edit-set file")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        sites = json.loads(meta.pop("sites"))
    except Exception as e:
        raise EditError(f"cannot read edit file {path}: {str(e).splitlines()[0]}") from None
    meta.pop("format")
    edits = []
    for i, site in enumerate(sites):
        names = {"lambda": f"{i}.lambda", "directions": f"{i}.directions", "orig_weight": f"{i}.orig_weight"}
        if not set(names.values()) <= set(tensors):
            raise EditError(f"{path}: site {i} ({site.get('layer', '?')}) has no tensors")
        layer = site.pop("layer")
        edit = LayerEdit(layer=layer, lam=tensors[names["lambda"]], directions=tensors[names["directions"]],
                         orig_weight=tensors[names["orig_weight"]], meta=site)
        edit.verify()
        edits.append(edit)
    return EditSet(edits, {k: _json_or_text(v) for k, v in meta.items()})


def load_edits(path: str | os.PathLike) -> EditSet:
    """An edit file of either kind as an ``EditSet``: a single edit becomes a set of one."""
    path = Path(path)
    require_file(path, "edit file", EditError)  # issue 21: a device or folder is no edit file
    fmt = read_safetensors_metadata(path).get("format")
    if fmt == FORMAT:
        return load_edit_set(path)
    if fmt == EDIT_FORMAT:
        return EditSet([load_edit(path)])
    raise EditError(f"{path} is not a clipedit edit file")


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value
