"""The one edit type: an ordered set of members, applied and reverted as one, in one sealed file format.

A single-site edit is a set of one. A member is an object of a registered *kind*:

- ``weight``: a :class:`~clipedit.core.edits.LayerEdit` (ΔW = Λ Dᵀ on one site, with digests);
- hook kinds, registered with :func:`register_edit_kind` by the modules that define them (e.g. a
  class-token head ablation through a forward hook).

Every member class provides ``kind`` and ``exportable`` (class attributes), ``layer``, ``meta``,
``apply(model)``, ``revert(model)``, ``to_tensors()``, ``from_tensors(layer, tensors, meta)`` (a
classmethod that checks what it reads) and ``digest()`` (SHA-256 of its content). ``apply_edit_set``
applies the members in order and ``revert_edit_set`` takes them off in reverse; either leaves the model
as it found it when a member is refused.

File (``.safetensors``, format ``clipedit-edits/2``): member ``i``'s tensors under ``{i}.{name}``; the
header holds ``members`` (the ordered list of ``{kind, layer, meta, digest}``), ``seal`` (SHA-256 over
the ordered ``(kind, layer, digest)`` list) and the set's own metadata. :func:`load_edits` checks the
seal, every member's digest, and that every tensor belongs to a member, before anything is returned (so
before anything is applied). Files of the unsealed formats of clipedit's first releases (a single edit,
``clipedit-edit/1``; a set, ``clipedit-edit-set/1``) are refused in one line saying how to re-make them:
nothing in them bound the list of members to the tensors, so a member could be dropped unseen.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from clipedit.core.edits import LayerEdit, apply_edit, model_identity
from clipedit.errors import EditError, check_argument
from clipedit.io import read_safetensors_metadata, require_file, save_state_dict

FORMAT = "clipedit-edits/2"
#: Unsealed formats of the first releases, refused with a hint (their member list was not bound to the tensors).
LEGACY_FORMATS = ("clipedit-edit/1", "clipedit-edit-set/1")


@runtime_checkable
class EditMember(Protocol):
    """What every member of an :class:`EditSet` provides (see the module docstring)."""

    kind: str
    exportable: bool
    layer: str
    meta: dict

    def apply(self, model: nn.Module) -> None: ...
    def revert(self, model: nn.Module) -> None: ...
    def to_tensors(self) -> dict[str, torch.Tensor]: ...
    def digest(self) -> str: ...


#: kind -> member class; hook kinds add themselves with :func:`register_edit_kind`.
EDIT_KINDS: dict[str, type] = {LayerEdit.kind: LayerEdit}


def register_edit_kind(kind: str, cls: type) -> type:
    """Make ``kind`` loadable from edit files (``cls.from_tensors``); returns ``cls`` (usable as a decorator
    helper). Registering another class under a taken kind is an error."""
    if EDIT_KINDS.get(kind, cls) is not cls:
        raise EditError(f"edit kind {kind!r} is already registered to {EDIT_KINDS[kind].__name__}")
    EDIT_KINDS[kind] = cls
    return cls


#: The meta key under which a hook member records the model it was made on (:func:`model_identity`).
MODEL_IDENTITY = "model_sha256"


def identity_meta(meta: Optional[dict], model: Optional[nn.Module]) -> dict:
    """``meta`` (copied) with the identity of ``model`` recorded, when a model is given (hook members made on
    a model carry it; a weight member is tied to its layer's weight by its own digests instead)."""
    meta = dict(meta or {})
    if model is not None:
        meta[MODEL_IDENTITY] = model_identity(model)
    return meta


def recorded_identity(kind: str, layer: str, meta: dict) -> str:
    """The model identity a hook member read from a file records; refused when absent or malformed."""
    identity = meta.get(MODEL_IDENTITY)
    if not isinstance(identity, str) or len(identity) != 64:
        raise EditError(f"the {kind} edit of {layer} records no identity of the model it was made on; re-make "
                        "it with this clipedit")
    return identity


def check_made_on(kind: str, layer: str, meta: dict, model: nn.Module) -> None:
    """Refuse to apply a hook member to a model other than the one it was made on (when it records one)."""
    identity = meta.get(MODEL_IDENTITY)
    if identity is not None and identity != model_identity(model):
        made_on = ":".join(str(meta[k]) for k in ("model", "pretrained") if meta.get(k) is not None) or "?"
        raise EditError(f"this {kind} edit of {layer} was made on another model ({made_on}); its weights are "
                        "not this model's, so it does not apply here")


def require_identity(kind: str, layer: str, meta: dict) -> None:
    """Refuse to write a hook member that records no model identity (it could not be checked when read)."""
    if MODEL_IDENTITY not in meta:
        raise EditError(f"the {kind} edit of {layer} records no model identity; make it with model=THE_MODEL "
                        "to save it")


@dataclass
class EditSet:
    """Members applied in order, as one edit.

    Attributes:
        edits: the members, in the order they were made (each on the model the previous ones left).
        meta: model name, words, the resolved configuration … shared by the set.
    """

    edits: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @classmethod
    def of(cls, edits: EditSet | EditMember | Sequence[EditMember], meta: dict | None = None) -> EditSet:
        """``edits`` as a set: a set as it is, one member as a set of one, a list as a set."""
        if isinstance(edits, EditSet):
            return edits
        members = [edits] if isinstance(edits, EditMember) else list(edits)
        return cls(members, dict(meta or {}))

    @property
    def layers(self) -> list[str]:
        return [e.layer for e in self.edits]

    @property
    def exportable(self) -> bool:
        """Whether every member can be folded into plain weights (hook members cannot)."""
        return all(e.exportable for e in self.edits)

    def seal(self) -> str:
        """SHA-256 over the ordered (kind, layer, digest) of the members."""
        return seal_of([(e.kind, e.layer, e.digest()) for e in self.edits])

    def apply(self, model: nn.Module, check_weights: bool = True) -> None:
        apply_edit_set(model, self, check_weights)

    def revert(self, model: nn.Module) -> None:
        revert_edit_set(model, self)


def seal_of(entries: Sequence[tuple[str, str, str]]) -> str:
    """The seal of an ordered list of (kind, layer, digest)."""
    return hashlib.sha256(json.dumps([list(e) for e in entries]).encode()).hexdigest()


def _apply_member(model: nn.Module, member: EditMember, check_weights: bool) -> None:
    if isinstance(member, LayerEdit):
        apply_edit(model, member, check_weights=check_weights)
    else:
        member.apply(model)


def apply_edit_set(model: nn.Module, edit_set: EditSet, check_weights: bool = True) -> None:
    """Apply every member in order; if one is refused, take the ones already applied off again.

    Args:
        check_weights: weight members refuse unless their layer holds the weight they were made on.
    """
    check_argument(model, nn.Module, "model", "apply_edit_set")  # a wrong type is one line
    check_argument(edit_set, EditSet, "edit_set", "apply_edit_set")
    applied: list = []
    try:
        for member in edit_set.edits:
            _apply_member(model, member, check_weights)
            applied.append(member)
    except EditError:
        for member in reversed(applied):
            member.revert(model)
        raise


def revert_edit_set(model: nn.Module, edit_set: EditSet) -> None:
    """Revert every member, last first (weights bit-exactly); if one is refused, re-apply those reverted."""
    check_argument(model, nn.Module, "model", "revert_edit_set")  # a wrong type is one line
    check_argument(edit_set, EditSet, "edit_set", "revert_edit_set")
    reverted: list = []
    try:
        for member in reversed(edit_set.edits):
            member.revert(model)
            reverted.append(member)
    except EditError:
        for member in reversed(reverted):
            _apply_member(model, member, True)
        raise


def save_edits(path: str | os.PathLike, edits: EditSet | EditMember) -> Path:
    """Write an edit set (or one member, as a set of one) as one sealed ``.safetensors`` file, atomically;
    refuses an empty set and NaN/inf in any weight member."""
    check_argument(path, (str, os.PathLike), "path", "save_edits")  # wrong types are one line
    check_argument(edits, (EditSet, EditMember), "edits", "save_edits")
    edit_set = EditSet.of(edits)
    if not edit_set.edits:
        raise EditError("an edit set needs at least one edit")
    tensors: dict[str, torch.Tensor] = {}
    members = []
    for i, member in enumerate(edit_set.edits):
        if isinstance(member, LayerEdit):
            member.check_finite()
        tensors.update({f"{i}.{name}": t for name, t in member.to_tensors().items()})
        members.append({"kind": member.kind, "layer": member.layer, "meta": member.meta, "digest": member.digest()})
    seal = seal_of([(m["kind"], m["layer"], m["digest"]) for m in members])
    meta = {k: v for k, v in edit_set.meta.items() if k not in ("format", "members", "seal")}
    return save_state_dict(path, tensors, metadata={"format": FORMAT, "members": members, "seal": seal, **meta})


def load_edits(path: str | os.PathLike) -> EditSet:
    """The edit set in ``path`` (a sealed ``clipedit-edits/2`` file), checked whole before it is returned.

    Raises:
        EditError: not found, not an edit file, a legacy unsealed format, malformed metadata, a broken seal
            or member digest, tensors no member claims, no members, or an unknown member kind (one line each).
    """
    check_argument(path, (str, os.PathLike), "path", "load_edits")
    if not os.fspath(path):
        raise EditError("the edit file's path is empty")
    path = Path(path)
    require_file(path, "edit file", EditError)  # a device, FIFO or folder is no edit file
    try:
        header = read_safetensors_metadata(path)
    except Exception as e:
        reason = str(e).splitlines()[0].removeprefix(f"cannot read {path}: ")
        raise EditError(f"cannot read edit file {path}: {reason}") from None
    fmt = header.get("format")
    if fmt in LEGACY_FORMATS:
        raise EditError(f"{path} is an edit file of the legacy unsealed format {fmt}, which clipedit no longer "
                        f"reads (its member list is not sealed); re-make it with this clipedit (clipedit defend "
                        f"... --out DIR) to get a sealed {FORMAT} file")
    if fmt != FORMAT:
        raise EditError(f"{path} is not a clipedit edit file")
    tensors = _read_tensors(path)
    try:
        return _load_sealed(header, tensors)
    except EditError as e:
        raise EditError(f"{path}: {e}") from None


def load_edit(path: str | os.PathLike) -> LayerEdit:
    """The single weight edit in ``path``; refuses a file holding a set of several members."""
    edit_set = load_edits(path)
    if len(edit_set.edits) != 1 or not isinstance(edit_set.edits[0], LayerEdit):
        raise EditError(f"{path} holds an edit set of {len(edit_set.edits)} members; read it with load_edits")
    return edit_set.edits[0]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise EditError(f"cannot read edit file {path}: {str(e).splitlines()[0]}") from None


#: How deeply the JSON values of an edit file's header may nest (clipedit writes at most a few levels).
MAX_HEADER_DEPTH = 32


def _loads(key: str, text: str) -> Any:
    """``text`` parsed as JSON; a ValueError for text that is not JSON, an EditError for JSON nested more
    than :data:`MAX_HEADER_DEPTH` levels (which would exhaust the recursion of what reads it)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise EditError(f"its header's {key!r} is nested too deeply") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_HEADER_DEPTH:
                raise EditError(f"its header's {key!r} is nested more than {MAX_HEADER_DEPTH} levels deep")
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return value


def _json_field(header: dict[str, str], key: str, kind: type) -> Any:
    if key not in header:
        raise EditError(f"its header has no {key!r}")
    try:
        value = _loads(key, header[key])
    except ValueError:
        raise EditError(f"its header's {key!r} is not JSON") from None
    if not isinstance(value, kind):
        raise EditError(f"its header's {key!r} is not a {'list' if kind is list else kind.__name__}")
    return value


def _entry(i: int, entry: Any, key: str = "layer") -> str:
    """Member ``i``'s layer name, refusing a malformed entry."""
    if not isinstance(entry, dict):
        raise EditError(f"member {i} of its header is not an object (got {type(entry).__name__})")
    layer = entry.get(key)
    if not isinstance(layer, str) or not layer:
        raise EditError(f"member {i} of its header names no layer")
    return layer


def _member_tensors(tensors: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    prefix = f"{i}."
    return {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}


def _check_all_claimed(tensors: dict[str, torch.Tensor], n_members: int) -> None:
    claimed = {str(i) for i in range(n_members)}
    stray = sorted(k for k in tensors if k.partition(".")[0] not in claimed)
    if stray:
        raise EditError(f"{len(stray)} tensor(s) belong to no member listed in its header (first: {stray[0]}); "
                        "the set was altered")


def _set_meta(header: dict[str, str], skip: tuple[str, ...]) -> dict:
    return {k: _json_or_text(k, v) for k, v in header.items() if k not in skip}


def _load_sealed(header: dict[str, str], tensors: dict[str, torch.Tensor]) -> EditSet:
    entries = _json_field(header, "members", list)
    if not entries:
        raise EditError("its header lists no members")
    listed = []
    for i, entry in enumerate(entries):
        layer = _entry(i, entry)
        kind, digest = entry.get("kind"), entry.get("digest")
        if not isinstance(kind, str) or not isinstance(digest, str) or not isinstance(entry.get("meta", {}), dict):
            raise EditError(f"member {i} ({layer}) of its header lacks a kind, digest or meta object")
        listed.append((kind, layer, digest))
    if header.get("seal") != seal_of(listed):
        raise EditError("its seal does not match the members its header lists (members removed, reordered "
                        "or altered)")
    _check_all_claimed(tensors, len(entries))
    members = []
    for i, (entry, (kind, layer, digest)) in enumerate(zip(entries, listed)):
        cls = EDIT_KINDS.get(kind)
        if cls is None:
            raise EditError(f"member {i} ({layer}) is of kind {kind!r}, which this clipedit does not know "
                            f"(known: {', '.join(sorted(EDIT_KINDS))})")
        member = cls.from_tensors(layer, _member_tensors(tensors, i), entry.get("meta", {}))
        if member.digest() != digest:
            raise EditError(f"member {i} ({layer}) does not match its digest: it is corrupt or was altered")
        members.append(member)
    return EditSet(members, _set_meta(header, ("format", "members", "seal")))


def _json_or_text(key: str, value: str):
    try:
        return _loads(key, value)
    except ValueError:
        return value
