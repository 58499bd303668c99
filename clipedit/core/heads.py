"""Where the attention heads of an image tower are, as data: what a head-level method (Dyslexify-style
ablation at the class token, head scores) needs per family.

A head's *result* is its slice of the attention output before the output projection: the projection's
input holds the heads side by side, head ``h`` in columns ``h*head_dim:(h+1)*head_dim``. Where the
projection is called as a module (timm ``attn.proj``, Hugging Face ``self_attn.out_proj``, timm's
``attn_pool.proj``), a forward pre-hook on it sees that per-head result at every token and can change
it at one token only. ``nn.MultiheadAttention`` (open_clip's ViT, Hugging Face SigLIP's pooling head)
and open_clip's ``AttentionPool2d`` apply their projection's weight inside
``F.multi_head_attention_forward``: there the result is not hookable, and a head is reached through
its columns of the projection weight (or by recomputing the attention in a hook).

The *query* is the token whose row the tower pools: the class token (index 0) of a ViT pooled by its
class token; for an attention-pool head (timm ``AttentionPoolLatent`` of SigLIP, Hugging Face SigLIP's
``head.attention``, ResNet ``attnpool``) its own first query row (the learned probe / mean token).
Blocks of a tower without a class token (SigLIP, average pooling) have no query: ``query`` is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionKind:
    """How one attention class holds its heads (names relative to the attention module).

    Attributes:
        proj: the Linear the heads write through.
        pooling: the module is the tower's pooling (its outputs are its query rows only).
        hookable: ``proj`` is called as a module (a pre-hook on it sees the per-head result).
    """

    proj: str
    pooling: bool = False
    hookable: bool = True


#: attention class name -> how it holds its heads (all keep the head count in ``num_heads``).
ATTENTION_KINDS: dict[str, AttentionKind] = {
    "MultiheadAttention": AttentionKind("out_proj", hookable=False),  # open_clip ViT; HF SigLIP head.attention
    "AttentionPool2d": AttentionKind("c_proj", pooling=True, hookable=False),  # open_clip ModifiedResNet attnpool
    "Attention": AttentionKind("proj"),  # timm ViT Block (SigLIP, MobileCLIP-B, ViTamin)
    "EvaAttention": AttentionKind("proj"),  # timm EVA01/02 (EVA02: the result passes attn.norm before proj)
    "AttentionRope": AttentionKind("proj"),  # timm PE-Core
    "AttentionPoolLatent": AttentionKind("proj", pooling=True),  # timm attention pool (SigLIP's attn_pool)
    "CLIPAttention": AttentionKind("out_proj"),  # Hugging Face CLIP
    "SiglipAttention": AttentionKind("out_proj"),  # Hugging Face SigLIP
}
POOLING_PARENTS = ("SiglipMultiheadAttentionPoolingHead",)  # modules whose attention child is the pooling


@dataclass(frozen=True)
class HeadSpec:
    """One attention module's heads.

    Attributes:
        attention: dotted name of the attention module.
        proj: dotted name of the Linear whose input is the per-head result (head ``h``: columns
            ``h*head_dim:(h+1)*head_dim``).
        n_heads, head_dim: number and width of the heads.
        query: token index of the pooled query (class token 0; an attention pool's first query row 0);
            None when the tower pools no single token there.
        pooling: the attention is the tower's pooling (its outputs are its query rows only).
        hookable: ``proj`` is called as a module, so a forward pre-hook on it sees the per-head result.
    """

    attention: str
    proj: str
    n_heads: int
    head_dim: int
    query: Optional[int]
    pooling: bool
    hookable: bool

    def columns(self, heads: list[int]) -> torch.Tensor:
        """The projection-input columns of ``heads``."""
        return torch.tensor([h * self.head_dim + j for h in sorted(heads) for j in range(self.head_dim)],
                            dtype=torch.long)


def head_specs(model: nn.Module, prefix: str = "") -> list[HeadSpec]:
    """Every attention of ``model`` (an image tower) that ``ATTENTION_KINDS`` knows, in forward order,
    names as ``prefix`` + name."""
    parents = {name: type(m).__name__ for name, m in model.named_modules()}
    specs = []
    for name, module in model.named_modules():
        kind = ATTENTION_KINDS.get(type(module).__name__)
        n_heads = getattr(module, "num_heads", None)
        if kind is None or not isinstance(n_heads, int):
            continue
        proj = getattr(module, kind.proj, None)
        if not isinstance(proj, nn.Linear):
            continue
        pooling = kind.pooling or parents.get(name.rpartition(".")[0]) in POOLING_PARENTS
        query = 0 if pooling else _pooled_token(model, name)
        specs.append(HeadSpec(attention=prefix + name, proj=f"{prefix}{name}.{kind.proj}", n_heads=n_heads,
                              head_dim=proj.in_features // n_heads, query=query, pooling=pooling,
                              hookable=kind.hookable))
    return specs


def _pooled_token(model: nn.Module, name: str) -> Optional[int]:
    """The token index the tower above ``name`` pools (0 for a class token), None when it pools none."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        m = model.get_submodule(".".join(parts[:cut])) if cut else model
        if isinstance(getattr(m, "global_pool", None), str) and hasattr(m, "num_prefix_tokens"):  # timm
            return 0 if m.global_pool == "token" and m.num_prefix_tokens > 0 else None
        if isinstance(getattr(m, "pool_type", None), str) and hasattr(m, "class_embedding"):  # open_clip ViT
            return 0 if m.pool_type == "tok" else None
        embeddings = getattr(m, "embeddings", None)  # Hugging Face: CLIP pools token 0; SigLIP has no class token
        if isinstance(embeddings, nn.Module) and hasattr(embeddings, "patch_embedding"):
            return 0 if isinstance(getattr(embeddings, "class_embedding", None), torch.Tensor) else None
    return None
