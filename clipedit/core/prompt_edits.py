"""Edit-set member kind ``class-prefix``: a learnt token embedding before every class name (Defense-Prefix).

Defense-Prefix (Azuma & Matsui, ICCVW 2023; azuma164/Defense-Prefix) changes no weight: prompts are
written ``template.format("* " + classname)`` and the embedding of the placeholder token ``*`` is
replaced by a learnt vector inside the text tower (``utils/non_nv.py``
``encode_text_with_learnt_tokens``: ``x = token_embedding(text)``, the row at the ``*`` token swapped
for ``learnable_codes``, then the usual positional embedding, transformer and EOT pooling; ``eval.py``
builds its prompts the same way). Here the swap is a forward hook on the text tower's token
embedding module (``open_clip`` ``token_embedding`` / ``text.token_embedding``; transformers'
``text_model.embeddings.token_embedding``): rows whose id is the placeholder's come out as the
vector, every other row as the module computed it. While the member is on, the model carries the
placeholder (:func:`class_prefix`) and :func:`clipedit.eval.zeroshot.zero_shot_weights` writes each
class name as ``"* name"``: the prompts and the hook go on and come off together.

One placeholder token, one vector (the published ``prefix_num`` = 1; with more, ``non_nv.py``'s
insertion shifts the EOT token past the index it pools). A ``*`` in a prompt for another reason would
be swapped too; none of clipedit's templates has one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

import torch
from torch import nn

from clipedit.core.edit_sets import (
    MODEL_IDENTITY,
    check_made_on,
    identity_meta,
    recorded_identity,
    register_edit_kind,
    require_identity,
)
from clipedit.core.nethook import get_module
from clipedit.errors import EditError, SiteError

#: The published placeholder (``train.py``: ``prompt.format("* " + class_i)``).
PLACEHOLDER = "*"
PREFIX_ATTR = "_clipedit_class_prefix"
#: Where text towers keep their token embedding, in the order they are tried.
TOKEN_EMBEDDINGS = ("token_embedding", "text.token_embedding", "text_model.embeddings.token_embedding",
                    "text.transformer.embeddings.word_embeddings")
NOT_EXPORTABLE = ("class-prefix edit on {layer} changes the prompts, not the weights; load it with "
                  "load_model(..., edits=[FILE]) or audit --edit FILE")


def token_embedding_name(model: nn.Module) -> Optional[str]:
    """Dotted name of the text tower's token embedding (an ``nn.Embedding``), None when it has none."""
    for name in TOKEN_EMBEDDINGS:
        try:
            module = get_module(model, name)
        except SiteError:
            continue
        if isinstance(module, nn.Embedding):
            return name
    return None


def placeholder_token_id(tokenizer, placeholder: str = PLACEHOLDER) -> int:
    """The one token id ``placeholder`` tokenizes to (special and padding ids left out).

    Raises:
        EditError: it is not exactly one token for this tokenizer.
    """
    special = set(_ids(tokenizer, ""))
    ids = [i for i in _ids(tokenizer, placeholder) if i not in special]
    if len(ids) != 1:
        raise EditError(f"the placeholder {placeholder!r} is {len(ids)} tokens for this tokenizer; a class "
                        "prefix needs one")
    return ids[0]


def _ids(tokenizer, text: str) -> list[int]:
    tokens = tokenizer([text])
    tokens = tokens["input_ids"] if isinstance(tokens, dict) else tokens
    return [int(t) for t in torch.as_tensor(tokens)[0].tolist()]


def class_prefix(model: nn.Module) -> Optional[str]:
    """The placeholder to write before class names while a class-prefix member is on (else None)."""
    state = getattr(model, PREFIX_ATTR, None)
    return state[0] if state else None


def class_prefix_digest(model: nn.Module) -> str:
    """The digest of the class-prefix member on the model ("" when none): part of any text-side cache key."""
    state = getattr(model, PREFIX_ATTR, None)
    return state[1] if state else ""


def with_placeholder(classname: str, placeholder: str = PLACEHOLDER) -> str:
    """``classname`` with the placeholder before it (``"* name"``), as Defense-Prefix writes its prompts."""
    return f"{placeholder} {classname}"


def prefixed(classname: str, model: nn.Module) -> str:
    """``classname`` as the prompts write it on ``model`` (``"* name"`` while a class prefix is on)."""
    prefix = class_prefix(model)
    return with_placeholder(classname, prefix) if prefix else classname


class ClassPrefix:
    """Swap the placeholder token's embedding for ``vector`` and write it before every class name.

    Attributes:
        layer: dotted name of the text tower's token embedding module.
        vector: the learnt embedding (1, width).
        token_id: the placeholder's token id.
        placeholder: the placeholder text written before class names.
        meta: free metadata (model, method, training record …) and, when made with ``model``, that model's
            identity (the vector is trained against the whole model: needed to save the member, checked
            when it is applied).
    """

    kind = "class-prefix"
    exportable = False

    def __init__(self, layer: str, vector: torch.Tensor, token_id: int, placeholder: str = PLACEHOLDER,
                 meta: Optional[dict] = None, model: Optional[nn.Module] = None) -> None:
        if not isinstance(layer, str) or not layer:
            raise EditError(f"a class-prefix edit needs the dotted name of a token embedding, got {layer!r}")
        try:
            vector = torch.as_tensor(vector).detach()
        except (TypeError, ValueError, RuntimeError):
            raise EditError(f"the class-prefix vector for {layer} is a {type(vector).__name__}, not a tensor") from None
        if vector.numel() == 0 or not vector.is_floating_point() or vector.ndim > 2 or (
                vector.ndim == 2 and vector.shape[0] != 1):
            raise EditError(f"the class-prefix vector for {layer} must be a non-empty float tensor of shape "
                            f"(width,) or (1, width) (got {vector.dtype}, shape {tuple(vector.shape)})")
        vector = vector.float().cpu().reshape(1, -1)
        if not torch.isfinite(vector).all():
            raise EditError(f"the class-prefix vector for {layer} holds NaN or inf")
        if isinstance(token_id, bool) or not hasattr(token_id, "__index__") or int(token_id.__index__()) < 0:
            raise EditError(f"the class-prefix token id for {layer} must be a whole number >= 0, got {token_id!r}")
        self.layer, self.vector, self.token_id = layer, vector.contiguous(), int(token_id.__index__())
        self.placeholder = placeholder
        self.meta = {**identity_meta(meta, model), "placeholder": placeholder}

    def __repr__(self) -> str:
        return f"ClassPrefix({self.layer!r}, width={self.vector.shape[1]}, token {self.token_id})"

    def to_tensors(self) -> dict[str, torch.Tensor]:
        require_identity(self.kind, self.layer, self.meta)
        return {"vector": self.vector, "token_id": torch.tensor([self.token_id], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, layer: str, tensors: dict[str, torch.Tensor], meta: dict) -> ClassPrefix:
        if set(tensors) != {"vector", "token_id"}:
            raise EditError(f"{cls.kind} edit of {layer} holds tensors {sorted(tensors)}; it needs 'vector' "
                            "and 'token_id'")
        token = tensors["token_id"]
        if token.numel() != 1 or token.is_floating_point() or token.is_complex() or token.dtype == torch.bool:
            raise EditError(f"{cls.kind} edit of {layer}: its 'token_id' must be one integer (got {token.dtype}, "
                            f"shape {tuple(token.shape)})")
        placeholder = meta.get("placeholder", PLACEHOLDER)
        if not isinstance(placeholder, str) or not placeholder.strip():
            raise EditError(f"{cls.kind} edit of {layer} has no placeholder text")
        recorded_identity(cls.kind, layer, meta)
        return cls(layer, tensors["vector"], int(token.reshape(-1)[0]), placeholder, meta)

    def digest(self) -> str:
        """sha256 over the kind, layer, placeholder, token id, the vector's bytes and the model it was made on."""
        head = json.dumps({"kind": self.kind, "layer": self.layer, "placeholder": self.placeholder,
                           "token_id": self.token_id, "shape": list(self.vector.shape),
                           "model": self.meta.get(MODEL_IDENTITY)}, sort_keys=True)
        return hashlib.sha256(head.encode() + self.vector.numpy().tobytes()).hexdigest()

    def export_error(self) -> str:
        return NOT_EXPORTABLE.format(layer=self.layer)

    def _module(self, model: nn.Module) -> nn.Embedding:
        try:
            module = get_module(model, self.layer)
        except SiteError:
            raise EditError(f"the model has no {self.layer} (a class-prefix edit needs a text tower)") from None
        if not isinstance(module, nn.Embedding):
            raise EditError(f"{self.layer} is a {type(module).__name__}, not a token embedding")
        if module.embedding_dim != self.vector.shape[1] or not 0 <= self.token_id < module.num_embeddings:
            raise EditError(f"{self.layer} embeds {module.num_embeddings} tokens of width {module.embedding_dim}; "
                            f"the prefix is width {self.vector.shape[1]}, token {self.token_id}")
        return module

    def is_applied(self, model: nn.Module) -> bool:
        return class_prefix_digest(model) == self.digest()

    def apply(self, model: nn.Module) -> None:
        module = self._module(model)
        check_made_on(self.kind, self.layer, self.meta, model)
        if getattr(model, PREFIX_ATTR, None):
            raise EditError(f"a class-prefix edit is already applied to {self.layer}")
        handle = module.register_forward_hook(prefix_hook(self.vector, self.token_id))
        object.__setattr__(model, PREFIX_ATTR, (self.placeholder, self.digest(), handle))

    def revert(self, model: nn.Module) -> None:
        state = getattr(model, PREFIX_ATTR, None)
        if not state or state[1] != self.digest():
            raise EditError(f"the class-prefix edit of {self.layer} is not applied")
        state[2].remove()
        object.__setattr__(model, PREFIX_ATTR, None)


def prefix_hook(vector: torch.Tensor, token_id: int):
    """A forward hook on an ``nn.Embedding``: rows whose id is ``token_id`` come out as ``vector``."""

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> Any:
        ids = args[0]
        mask = (ids == token_id).unsqueeze(-1)
        if not bool(mask.any()):
            return None
        return torch.where(mask, vector.to(device=output.device, dtype=output.dtype), output)

    return hook


register_edit_kind(ClassPrefix.kind, ClassPrefix)
