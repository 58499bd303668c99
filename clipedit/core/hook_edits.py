"""Edit-set members that act through forward hooks instead of weights.

Kind ``cls-head-ablation`` (Dyslexify, Hufe et al.): chosen heads of one ``nn.MultiheadAttention`` have
their attention *result* zeroed **at the class token only** (token 0), as
``create_zero_cls_attention_result_hook`` does in lowlorenz/dyslexify ``dyslexify/cache/hooks.py``
(``attn_output[:, head_idx, 0, :] = 0`` before the output projection). The module's weights are not
touched: a forward hook on the attention module recomputes the chosen heads' result at the class
token (query of token 0 against every key) and subtracts its image under the output projection from
the module's output at token 0. Because the output projection is linear, that equals zeroing those
heads' result there; every other token's output is left as it was.

A hook member cannot be folded into plain weights (``exportable`` is False). ``apply`` registers its
hook (refused when already on, or on a model other than the one it was made on: the member records that
model's :func:`~clipedit.core.edits.model_identity`, which an edit file must carry), ``revert`` removes it
(refused when not on).

Where the heads write through a projection called as a module (``clipedit.core.heads``: timm ``attn.proj``
of a ViT or EVA, Hugging Face ``self_attn.out_proj``), the same edit is a forward *pre*-hook on that
projection: its input holds the heads side by side, and head ``h``'s columns ``h*head_dim:(h+1)*head_dim``
are zeroed at the spec's query token only (token 0, the class token). Where the result passes a norm
before the projection (EVA02 with ``scale_attn_inner``), the pre-hook sits on that norm instead.

Handles are kept on the model object under ``_clipedit_hooks``, keyed by the member's digest.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipedit.core.edit_sets import (
    MODEL_IDENTITY,
    check_made_on,
    identity_meta,
    recorded_identity,
    register_edit_kind,
    require_identity,
)
from clipedit.core.heads import HeadSpec, head_specs
from clipedit.core.nethook import get_module
from clipedit.errors import EditError

HOOKS_ATTR = "_clipedit_hooks"

#: One line for any plain-weights export of a hook member.
NOT_EXPORTABLE = ("{kind} edit on {layer} needs clipedit's hooks to run; load it with "
                  "load_model(..., edits=[FILE]) or audit --edit FILE")


def _handles(model: nn.Module) -> dict[str, Any]:
    handles = getattr(model, HOOKS_ATTR, None)
    if handles is None:
        handles = {}
        object.__setattr__(model, HOOKS_ATTR, handles)
    return handles


class ClsHeadAblation:
    """Zero the result of ``heads`` of the attention module ``layer`` at the class token (a hook edit).

    Attributes:
        layer: dotted name of an attention module whose token 0 is the class token: an
            ``nn.MultiheadAttention``, or one that ``head_specs`` lists as hookable with a query token.
        heads: head indices (sorted, unique, >= 0).
        meta: free metadata (model, method, scores …) and, when made with ``model``, that model's identity
            (needed to save the member; checked when it is applied).
    """

    kind = "cls-head-ablation"
    exportable = False

    def __init__(self, layer: str, heads: Sequence[int], meta: Optional[dict] = None,
                 model: Optional[nn.Module] = None) -> None:
        if not isinstance(layer, str) or not layer:
            raise EditError(f"a {self.kind} edit needs the dotted name of an attention module, got {layer!r}")
        self.layer = layer
        self.heads = sorted(set(head_indices(heads, f"a {self.kind} edit of {layer}")))
        if not self.heads:
            raise EditError(f"a {self.kind} edit of {layer} needs at least one head")
        self.meta = identity_meta(meta, model)

    def __repr__(self) -> str:
        return f"ClsHeadAblation({self.layer!r}, heads={self.heads})"

    # -- content -------------------------------------------------------------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        require_identity(self.kind, self.layer, self.meta)
        return {"heads": torch.tensor(self.heads, dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, layer: str, tensors: dict[str, torch.Tensor], meta: dict) -> ClsHeadAblation:
        """The member stored as ``tensors`` (``heads``: a non-empty 1-D integer tensor of head indices >= 0)
        with ``meta`` (which must record the model it was made on)."""
        heads = tensors.get("heads")
        if heads is None or set(tensors) != {"heads"}:
            raise EditError(f"{cls.kind} edit of {layer} holds tensors {sorted(tensors)}; it needs 'heads' alone")
        if heads.ndim != 1 or heads.numel() == 0 or heads.is_floating_point() or heads.is_complex() \
                or heads.dtype == torch.bool:
            raise EditError(f"{cls.kind} edit of {layer}: its 'heads' must be a non-empty 1-D integer tensor "
                            f"(got {heads.dtype}, shape {tuple(heads.shape)})")
        recorded_identity(cls.kind, layer, meta)
        return cls(layer, heads.tolist(), meta)

    def digest(self) -> str:
        """sha256 over the kind, the layer, the heads (what the hook does) and the model it was made on."""
        payload = json.dumps({"kind": self.kind, "layer": self.layer, "heads": self.heads,
                              "model": self.meta.get(MODEL_IDENTITY)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def export_error(self) -> str:
        return NOT_EXPORTABLE.format(kind=self.kind, layer=self.layer)

    # -- on / off ------------------------------------------------------------------------------------
    def _module(self, model: nn.Module) -> tuple[nn.Module, Optional[HeadSpec]]:
        """The attention module, and its head spec where the edit is a pre-hook on its projection."""
        module = get_module(model, self.layer)
        if isinstance(module, nn.MultiheadAttention):
            if module.bias_k is not None or module.add_zero_attn:
                raise EditError(f"{self.layer}: attention with bias_k/add_zero_attn is not supported")
            n_heads, spec = module.num_heads, None
        else:
            spec = next((s for s in head_specs(model) if s.attention == self.layer and s.hookable), None)
            if spec is None:
                raise EditError(f"{self.layer} is a {type(module).__name__}, not a multi-head attention "
                                f"whose heads clipedit can reach (a {self.kind} edit needs one with a class token)")
            if spec.query is None:
                raise EditError(f"{self.layer}: its tower pools no single token (no class token), so a "
                                f"{self.kind} edit has no query token to act at")
            n_heads = spec.n_heads
        if self.heads[-1] >= n_heads:
            raise EditError(f"{self.layer} has {n_heads} heads; the edit names head {self.heads[-1]}")
        return module, spec

    def is_applied(self, model: nn.Module) -> bool:
        return self.digest() in _handles(model)

    def apply(self, model: nn.Module) -> None:
        module, spec = self._module(model)
        check_made_on(self.kind, self.layer, self.meta, model)
        handles = _handles(model)
        if self.digest() in handles:
            raise EditError(f"the {self.kind} edit of {self.layer} (heads {self.heads}) is already applied")
        if spec is None:
            handles[self.digest()] = module.register_forward_hook(cls_ablation_hook(self.heads), with_kwargs=True)
            return
        norm = getattr(module, "norm", None)  # EVA02 scale_attn_inner: the result is normed before proj
        target = norm if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity) else \
            get_module(model, spec.proj)
        handles[self.digest()] = target.register_forward_pre_hook(query_zero_hook(spec.columns(self.heads),
                                                                                  spec.query))

    def revert(self, model: nn.Module) -> None:
        handle = _handles(model).pop(self.digest(), None)
        if handle is None:
            raise EditError(f"the {self.kind} edit of {self.layer} (heads {self.heads}) is not applied")
        handle.remove()


def head_indices(heads: Sequence[Any], what: str) -> list[int]:
    """``heads`` as Python ints, refusing anything that is not a whole number >= 0 (NaN, 1.5, -1, "x", True)."""
    if isinstance(heads, (str, bytes)) or not hasattr(heads, "__iter__"):
        raise EditError(f"{what} needs a list of head indices, got {type(heads).__name__}")
    out = []
    for h in heads:
        if isinstance(h, bool) or not isinstance(h, (int, torch.Tensor)) and not hasattr(h, "__index__"):
            raise EditError(f"{what} names head {h!r}; heads are whole numbers >= 0")
        try:
            value = int(h.__index__()) if not isinstance(h, torch.Tensor) else int(h.item()) if \
                h.numel() == 1 and not h.is_floating_point() else None
        except (TypeError, ValueError, RuntimeError):
            value = None
        if value is None or value < 0:
            raise EditError(f"{what} names head {h!r}; heads are whole numbers >= 0")
        out.append(value)
    return out


def _inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("query", "key", "value")
    got = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
    query = got[0]
    key = got[1] if got[1] is not None else query
    value = got[2] if got[2] is not None else key
    return query, key, value


def class_token_head_result(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, heads: Sequence[int], attn_mask: Optional[torch.Tensor] = None,
                            key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The result of ``heads`` at token 0 (batch, len(heads), head_dim), before the output projection,
    for inputs in the module's layout (batch-first or not)."""
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    d, n_heads = module.embed_dim, module.num_heads
    hd = d // n_heads
    if module._qkv_same_embed_dim:
        wq, wk, wv = module.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    bq = bk = bv = None
    if module.in_proj_bias is not None:
        bq, bk, bv = module.in_proj_bias.chunk(3)
    sel = torch.as_tensor(list(heads), device=query.device)
    b, length = key.shape[0], key.shape[1]
    q0 = F.linear(query[:, :1], wq, bq).view(b, 1, n_heads, hd).index_select(2, sel).transpose(1, 2)
    k = F.linear(key, wk, bk).view(b, length, n_heads, hd).index_select(2, sel).transpose(1, 2)
    v = F.linear(value, wv, bv).view(b, length, n_heads, hd).index_select(2, sel).transpose(1, 2)
    scores = q0 @ k.transpose(-1, -2) / math.sqrt(hd)  # (b, h', 1, L)
    if attn_mask is not None:
        mask = attn_mask
        if mask.dim() == 3:  # (b * n_heads, L, L)
            mask = mask.view(b, n_heads, *mask.shape[1:]).index_select(1, sel)[:, :, :1]
        else:
            mask = mask[:1]
        scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
    return (scores.softmax(-1) @ v).squeeze(2)  # (b, h', hd)


def cls_ablation_hook(heads: Sequence[int]):
    """A forward hook (``with_kwargs``) for an ``nn.MultiheadAttention``: its output at token 0 without
    the result of ``heads`` (Dyslexify's ``create_zero_cls_attention_result_hook``)."""
    heads = list(heads)

    def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output):
        query, key, value = _inputs(args, kwargs)
        out, weights = output if isinstance(output, tuple) else (output, None)
        z = class_token_head_result(module, query, key, value, heads, kwargs.get("attn_mask"),
                                    kwargs.get("key_padding_mask"))
        hd = module.embed_dim // module.num_heads
        cols = torch.tensor([h * hd + j for h in heads for j in range(hd)], device=z.device)
        contrib = z.reshape(z.shape[0], -1) @ module.out_proj.weight.index_select(1, cols).T  # (b, d)
        out = out.clone()
        if module.batch_first:
            out[:, 0] = out[:, 0] - contrib.to(out.dtype)
        else:
            out[0] = out[0] - contrib.to(out.dtype)
        return (out, weights) if isinstance(output, tuple) else out

    return hook


def query_zero_hook(columns: torch.Tensor, query: int):
    """A forward pre-hook for a heads' projection (input (batch, tokens, heads * head_dim)): ``columns``
    of its input zeroed at token ``query`` only."""
    def hook(module: nn.Module, args: tuple):
        x = args[0].clone()
        x[:, query, columns.to(x.device)] = 0
        return (x, *args[1:])

    return hook


register_edit_kind(ClsHeadAblation.kind, ClsHeadAblation)
