"""A layer edit as data: the rank-r factors, the original weight, and checks that keep it honest.

``apply_edit`` adds ΔW = Λ Dᵀ to the layer; ``revert_edit`` restores the original weight bit-exactly
(only while the layer still holds exactly what the edit made). Files are ``.safetensors``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from clipedit.core.sites import site_weight
from clipedit.errors import EditError, SiteError, check_argument
from clipedit.io import read_safetensors_metadata, require_file, save_state_dict

FORMAT = "clipedit-edit/1"


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

    layer: str
    lam: torch.Tensor
    directions: torch.Tensor
    orig_weight: torch.Tensor
    meta: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.lam.shape[1]

    def delta(self) -> torch.Tensor:
        """ΔW in the weight's shape and dtype (computed on the CPU in float64, so it is reproducible)."""
        d = self.lam.double().cpu() @ self.directions.double().cpu().T
        return d.reshape(self.orig_weight.shape).to(self.orig_weight.dtype)

    def check_finite(self) -> None:
        """Refuse an edit with NaN or inf in any of its tensors."""
        for name, t in self.tensors().items():
            if not torch.isfinite(t).all():
                raise EditError(f"the edit of {self.layer} has NaN or inf in its {name}; refusing to use it")

    def verify(self) -> None:
        """Refuse an edit that is not finite, not self-consistent, or does not match the digests it carries.

        ``orig_sha256`` must be the digest of ``orig_weight`` and ``edited_sha256`` that of
        ``orig_weight + Λ Dᵀ``: a tampered Λ, D or original weight is caught before it is used.
        """
        self.check_finite()
        out, key_dim = self.orig_weight.shape[0], self.orig_weight[0].numel() if self.orig_weight.ndim else 0
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

    def tensors(self) -> dict[str, torch.Tensor]:
        """The edit's tensors by their names in the edit file."""
        return {"lambda": self.lam, "directions": self.directions, "orig_weight": self.orig_weight}


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
    check_argument(model, nn.Module, "model", "apply_edit")  # issue 21
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
    check_argument(model, nn.Module, "model", "revert_edit")  # issue 21
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


def save_edit(path: str | os.PathLike, edit: LayerEdit) -> Path:
    """Write the edit as ``.safetensors`` (atomically); refuses NaN/inf."""
    check_argument(edit, LayerEdit, "edit", "save_edit")  # issue 21
    edit.check_finite()
    meta = {"format": FORMAT, "layer": edit.layer, **edit.meta}
    return save_state_dict(path, edit.tensors(), metadata=meta)


def load_edit(path: str | os.PathLike) -> LayerEdit:
    """Read an edit file written by ``save_edit``."""
    from safetensors.torch import load_file

    path = Path(path)
    require_file(path, "edit file", EditError)  # issue 21: a device or folder is no edit file
    try:
        meta = read_safetensors_metadata(path)
        tensors = load_file(str(path))
    except Exception as e:
        raise EditError(f"cannot read edit file {path}: {str(e).splitlines()[0]}") from None
    if meta.get("format") != FORMAT or not {"lambda", "directions", "orig_weight"} <= set(tensors):
        raise EditError(f"{path} is not a clipedit edit file")
    layer = meta.pop("layer")
    meta.pop("format")
    meta = {k: _maybe_json(v) for k, v in meta.items()}
    return LayerEdit(layer=layer, lam=tensors["lambda"], directions=tensors["directions"],
                     orig_weight=tensors["orig_weight"], meta=meta)


def _maybe_json(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v
