"""A layer edit as data: the rank-r factors, the original weight, and checks that keep it honest.

``LayerEdit.create`` is the one constructor of a new edit (finiteness checked, digests set);
``apply_edit`` adds ΔW = Λ Dᵀ to the layer; ``revert_edit`` restores the original weight bit-exactly
(only while the layer still holds exactly what the edit made). A ``LayerEdit`` is the ``weight`` kind of
member of an :class:`~clipedit.core.edit_sets.EditSet`, which also writes and reads the files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import nn

from clipedit.core.sites import site_weight
from clipedit.errors import EditError, SiteError, check_argument

TENSOR_NAMES = ("lambda", "directions", "orig_weight")


#: Values of each tensor that :func:`model_identity` reads (evenly strided; all of a smaller tensor).
IDENTITY_SAMPLE = 4096


@torch.no_grad()
def model_identity(module: nn.Module) -> str:
    """SHA-256 over every parameter's and buffer's name, dtype and shape and up to :data:`IDENTITY_SAMPLE`
    evenly strided values of it: which weights a hook edit was made on. Exact bytes, so the same on any
    device; a sample, so cheap on a large model (a model trained or fine-tuned differently differs in the
    sampled values of every tensor it changed)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        flat = t.detach().reshape(-1)
        if flat.numel() > IDENTITY_SAMPLE:
            index = torch.arange(IDENTITY_SAMPLE, dtype=torch.int64) * (flat.numel() - 1) // (IDENTITY_SAMPLE - 1)
            flat = flat[index.to(flat.device)]  # integer strides: the same values read on any device
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class LayerEdit:
    """A rank-r update of one layer's weight.

    Attributes:
        layer: dotted name of the edited module.
        lam: Λ, (out, r).
        directions: D, (key_dim, r).
        orig_weight: the weight before the edit (for a bit-exact revert).
        meta: model name, hyperparameters, words, digests.
    """

    kind: ClassVar[str] = "weight"
    exportable: ClassVar[bool] = True  # folded into plain weights by `clipedit apply --out`

    layer: str
    lam: torch.Tensor
    directions: torch.Tensor
    orig_weight: torch.Tensor
    meta: dict = field(default_factory=dict)

    @classmethod
    def create(cls, layer: str, lam: torch.Tensor, directions: torch.Tensor, weight: torch.Tensor,
               meta: Optional[dict] = None) -> LayerEdit:
        """The edit ΔW = Λ Dᵀ of ``weight`` (the layer's current weight, copied as the original): Λ and D
        stored as float32 on the CPU, refused when not finite, digests of the original and of the edited
        weight set (so it can be checked on apply and reverted bit-exactly)."""
        w = weight.detach()
        edit = cls(layer=layer, lam=lam.detach().float().cpu(), directions=directions.detach().float().cpu(),
                   orig_weight=w.cpu().clone(), meta={**(meta or {}), "orig_sha256": tensor_digest(w)})
        edit.check_finite()
        edit.meta["edited_sha256"] = edited_digest(edit)
        return edit

    @property
    def rank(self) -> int:
        return self.lam.shape[1]

    def delta(self) -> torch.Tensor:
        """ΔW in the weight's shape and dtype (computed on the CPU in float64, so it is reproducible)."""
        d = self.lam.double().cpu() @ self.directions.double().cpu().T
        return d.reshape(self.orig_weight.shape).to(self.orig_weight.dtype)

    def check_finite(self) -> None:
        """Refuse an edit with NaN or inf in any of its tensors."""
        for name, t in self.to_tensors().items():
            if not torch.isfinite(t).all():
                raise EditError(f"the edit of {self.layer} has NaN or inf in its {name}; refusing to use it")

    def verify(self) -> None:
        """Refuse an edit that is not finite, not self-consistent, or does not match the digests it carries.

        ``orig_sha256`` must be the digest of ``orig_weight`` and ``edited_sha256`` that of
        ``orig_weight + Λ Dᵀ``: a tampered Λ, D or original weight is caught before it is used.
        """
        wrong = [n for n, t in self.to_tensors().items()
                 if not isinstance(t, torch.Tensor) or not t.is_floating_point()]
        if wrong:
            raise EditError(f"the edit of {self.layer} has a {wrong[0]} that is not a floating-point tensor")
        self.check_finite()
        if self.orig_weight.ndim < 2 or self.orig_weight.numel() == 0:
            raise EditError(f"the edit of {self.layer} has an orig_weight of shape {tuple(self.orig_weight.shape)}; "
                            "a layer's weight has at least two dimensions")
        out, key_dim = self.orig_weight.shape[0], self.orig_weight[0].numel()
        if (self.lam.ndim != 2 or self.directions.ndim != 2 or self.lam.shape[0] != out
                or self.directions.shape != (key_dim, self.lam.shape[1])):
            raise EditError(f"the edit of {self.layer} has inconsistent shapes: lambda {tuple(self.lam.shape)}, "
                            f"directions {tuple(self.directions.shape)}, orig_weight {tuple(self.orig_weight.shape)}")
        for key, what, actual in (("orig_sha256", "orig_weight", lambda: tensor_digest(self.orig_weight)),
                                  ("edited_sha256", "orig_weight + lambda directionsᵀ", lambda: edited_digest(self))):
            expected = self.meta.get(key)
            if not expected:
                raise EditError(f"the edit of {self.layer} carries no {key}; refusing to use it")
            if actual() != expected:
                raise EditError(f"the edit of {self.layer} is corrupt or was altered: its {what} does not match "
                                f"its {key}")

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The edit's tensors by their names in the edit file."""
        return {"lambda": self.lam, "directions": self.directions, "orig_weight": self.orig_weight}

    @classmethod
    def from_tensors(cls, layer: str, tensors: dict[str, torch.Tensor], meta: dict) -> LayerEdit:
        """The edit stored as ``tensors`` (names of :meth:`to_tensors`); verified against its digests."""
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        if missing:
            raise EditError(f"the edit of {layer} has no {missing[0]} tensor")
        edit = cls(layer=layer, lam=tensors["lambda"], directions=tensors["directions"],
                   orig_weight=tensors["orig_weight"], meta=dict(meta))
        edit.verify()
        return edit

    def digest(self) -> str:
        """SHA-256 over the layer, the tensors and the digests the edit carries (its identity in a set)."""
        content = {"kind": self.kind, "layer": self.layer,
                   "tensors": {n: tensor_digest(t) for n, t in self.to_tensors().items()},
                   "orig_sha256": self.meta.get("orig_sha256"), "edited_sha256": self.meta.get("edited_sha256")}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def apply(self, model: nn.Module, check_weights: bool = True) -> None:
        """:func:`apply_edit` (the member protocol of an edit set)."""
        apply_edit(model, self, check_weights=check_weights)

    def revert(self, model: nn.Module) -> None:
        """:func:`revert_edit` (the member protocol of an edit set)."""
        revert_edit(model, self)


def _weight(model: nn.Module, edit: LayerEdit) -> torch.Tensor:
    try:
        w = site_weight(model, edit.layer)
    except SiteError:
        raise EditError(f"this edit is for layer {edit.layer} of {edit.meta.get('model', '?')}, "
                        "which this model does not have") from None
    if w is None or tuple(w.shape) != tuple(edit.orig_weight.shape):
        shape = None if w is None else tuple(w.shape)
        raise EditError(f"this edit is for {edit.meta.get('model', '?')} ({edit.layer} weight "
                        f"{tuple(edit.orig_weight.shape)}); this model's is {shape}")
    return w


@torch.no_grad()
def apply_edit(model: nn.Module, edit: LayerEdit, check_weights: bool = True) -> None:
    """Add the edit to ``model`` in place.

    Args:
        check_weights: refuse unless the layer holds exactly the weight the edit was made on.
    """
    check_argument(model, nn.Module, "model", "apply_edit")  # a wrong type is one line, not an AttributeError
    check_argument(edit, LayerEdit, "edit", "apply_edit")
    edit.verify()
    w = _weight(model, edit)
    if check_weights and tensor_digest(w) != edit.meta.get("orig_sha256"):
        raise EditError(f"this edit was made on other weights of {edit.layer} "
                        f"({edit.meta.get('model', '?')}:{edit.meta.get('pretrained', '?')}); "
                        "apply earlier edits first, or pass --force")
    w.copy_(w.detach().cpu().add(edit.delta()).to(w.device))


@torch.no_grad()
def revert_edit(model: nn.Module, edit: LayerEdit) -> None:
    """Restore the layer's original weight, bit-exactly.

    Raises:
        EditError: the layer does not hold what this edit made (not applied, or another edit on top).
    """
    check_argument(model, nn.Module, "model", "revert_edit")  # a wrong type is one line, not an AttributeError
    check_argument(edit, LayerEdit, "edit", "revert_edit")
    edit.verify()
    w = _weight(model, edit)
    if tensor_digest(w) != edit.meta.get("edited_sha256"):
        raise EditError(f"{edit.layer} does not hold this edit's result (not applied, or another edit "
                        "was applied after it: revert that first)")
    w.copy_(edit.orig_weight.to(w.device, w.dtype))


def edited_digest(edit: LayerEdit) -> str:
    """Digest of orig_weight + ΔW, as ``apply_edit`` computes it."""
    return tensor_digest(edit.orig_weight.detach().cpu().add(edit.delta()))
