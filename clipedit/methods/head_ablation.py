"""Training-free attention-head ablation against written words (after Dyslexify, Hufe et al.).

1. **Score** every attention head of the image tower by how much the pooling query attends to the
   text: the share of its attention over image locations that lands on the exemplars' glyphs (the
   class token of an open_clip ViT block, ``resblocks.{i}.attn``; the mean-token query of a CLIP
   ResNet's ``attnpool``). Attention weights are read through forward hooks on the loaded model.
2. **Ablate greedily** in score order: zero a head's write (its columns of the output projection);
   keep it when the defended word's text-note accuracy on the validation split rises by at least
   ``min_gain`` and clean and blank-note accuracy each stay within ``tolerance`` of the unedited
   model; stop after ``patience`` heads in a row are not kept.
3. **Store** the result as an :class:`~clipedit.core.edit_sets.EditSet` of rank-k layer edits (one per
   output projection: Λ = -W[:, head columns], D = the unit vectors of those columns, so ΔW = Λ Dᵀ
   zeroes them): one ``.safetensors`` file with digests, applied and reverted (checked, bit-exact) by
   ``save_edit_set`` / ``apply_edit_set`` / ``revert_edit_set`` and ``clipedit apply`` / ``revert``.

Simplifications against the published method: a head is zeroed at every token (Dyslexify zeroes
its write at the class token only, through a hook on the attention result); for the last block and
for ``attnpool`` (whose only output is the query token) the two agree. A head that breaks the
tolerance is skipped instead of ending the search. Text locations come from the exemplars' glyph
masks instead of a fixed band of rows.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clipedit.core import EditRequest, LayerEdit
from clipedit.core.edit_sets import EditSet, apply_edit_set
from clipedit.core.hparams import COUNT, COUNT0, FRACTION, NONNEGATIVE, HParams
from clipedit.core.nethook import get_module
from clipedit.errors import ClipeditError
from clipedit.eval.pick import PICK_TOLERANCE, HeldoutData, admissible, heldout_data, scene_tolerance, score
from clipedit.methods.spec import DefenseData, DefenseResult, MethodContext, budget, run_meta
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

@dataclass
class HeadAblationHParams(HParams):
    """Greedy search settings (Dyslexify: eps 0.001, stop after 10 skips, 1-point clean budget).

    Attributes:
        tolerance: largest clean / blank-note loss on validation (a fraction).
        min_gain: smallest rise of defended-word text-note accuracy for a head to be kept.
        patience: heads in a row not kept before the search stops.
        n_val: validation scenes scored at each step (defended words only).
        max_heads: most heads ablated (None: no limit).
    """

    tolerance: float = PICK_TOLERANCE
    min_gain: float = 0.001
    patience: int = 10
    n_val: int = 160
    max_heads: Optional[int] = None

    BOUNDS = {"tolerance": FRACTION, "min_gain": NONNEGATIVE, "patience": COUNT0, "n_val": COUNT,
              "max_heads": COUNT}


@dataclass(frozen=True)
class AttentionSite:
    """An attention module whose heads can be scored and ablated.

    Attributes:
        name: dotted name of the attention module (``…attn`` or ``…attnpool``).
        proj: dotted name of the Linear its heads write through.
        n_heads: number of heads; head ``h`` owns input columns ``h*d:(h+1)*d`` of ``proj``.
    """

    name: str
    proj: str
    n_heads: int

    def columns(self, model: nn.Module, heads: Sequence[int]) -> torch.Tensor:
        width = get_module(model, self.proj).weight.shape[1] // self.n_heads
        return torch.tensor([h * width + j for h in sorted(heads) for j in range(width)], dtype=torch.long)


@dataclass
class HeadAblation:
    """The ablated heads, the edits that zero them (None when no head was kept), and the search."""

    heads: list[tuple[str, int]]
    edit_set: Optional[EditSet]
    scores: dict[str, list[float]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)  # the keep rule, its tolerance and scenes allowed


def attention_sites(bundle: ModelBundle) -> list[AttentionSite]:
    """The image tower's attention modules: ViT blocks' ``attn`` and a ResNet's ``attnpool``."""
    sites = []
    for name, module in bundle.image_module.named_modules():
        full = bundle.image_prefix + name
        if isinstance(module, nn.MultiheadAttention):
            sites.append(AttentionSite(full, f"{full}.out_proj", module.num_heads))
        elif type(module).__name__ == "AttentionPool2d":
            sites.append(AttentionSite(full, f"{full}.c_proj", module.num_heads))
    if not sites:
        raise ClipeditError(f"{bundle.name}'s image tower has no attention heads to ablate")
    return sites


# -- scoring -----------------------------------------------------------------------------------------
def class_row_hook(store: list, module: nn.MultiheadAttention):
    """A forward hook (``with_kwargs``) that appends the module's per-head attention row of token 0
    (batch, heads, tokens) to ``store`` (the module's forward is run once more, asking for weights)."""
    def hook(mod, args, kwargs, output):
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
        _, weights = mod.forward(q, k, v, need_weights=True, average_attn_weights=False,
                                 attn_mask=kwargs.get("attn_mask"), key_padding_mask=kwargs.get("key_padding_mask"))
        store.append(weights[:, :, 0, :].detach())  # (batch, heads, tokens): the class token's row
    return hook


def query_row_hook(store: list, module: nn.Module, query: int = 0):
    """A forward hook (``with_kwargs``) that appends the per-head attention row of token ``query``
    (batch, heads, tokens) to ``store``: ``nn.MultiheadAttention`` (token 0, :func:`class_row_hook`);
    timm attention (its forward once more on its unfused path, the probabilities read where they pass
    ``attn_drop``, so rope and q/k norms are timm's own); Hugging Face attention (from its q/k projections)."""
    if isinstance(module, nn.MultiheadAttention):
        return class_row_hook(store, module)
    if isinstance(getattr(module, "attn_drop", None), nn.Module) and hasattr(module, "fused_attn"):
        def timm_hook(mod, args, kwargs, output):
            seen: list = []
            handle = mod.attn_drop.register_forward_hook(lambda m, a, o: seen.append(o))
            fused, mod.fused_attn = mod.fused_attn, False
            try:
                mod.forward(*args, **kwargs)
            finally:
                mod.fused_attn = fused
                handle.remove()
            store.append(seen[0][:, :, query, :].detach())
        return timm_hook
    if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj")) and hasattr(module, "scale"):
        def hf_hook(mod, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            b, n = x.shape[:2]
            q = mod.q_proj(x[:, query:query + 1]).view(b, 1, mod.num_heads, -1).transpose(1, 2)
            k = mod.k_proj(x).view(b, n, mod.num_heads, -1).transpose(1, 2)
            store.append(((q @ k.transpose(-1, -2)) * mod.scale).float().softmax(-1)[:, :, 0].detach())
        return hf_hook
    raise ClipeditError(f"no attention row hook for a {type(module).__name__}")


def _attnpool_hook(store: list):
    def hook(mod, args, output):
        x = args[0]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)  # as AttentionPool2d.forward: (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + mod.positional_embedding[:, None, :].to(x.dtype)
        _, weights = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=mod.num_heads,
            q_proj_weight=mod.q_proj.weight, k_proj_weight=mod.k_proj.weight, v_proj_weight=mod.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([mod.q_proj.bias, mod.k_proj.bias, mod.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=mod.c_proj.weight,
            out_proj_bias=mod.c_proj.bias, use_separate_proj_weight=True, training=False, need_weights=True,
            average_attn_weights=False)
        store.append(weights[:, :, 0, :].detach())  # (batch, heads, tokens): the query's row
    return hook


@torch.no_grad()
def head_scores(bundle: ModelBundle, sites: Sequence[AttentionSite], request: EditRequest,
                batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per site, (n_heads,) mean share of the query's attention over image locations that lands on
    the text (request.mask pooled to the token grid)."""
    model = bundle.model
    sums = {s.name: torch.zeros(s.n_heads, dtype=torch.float64) for s in sites}
    for start in range(0, request.attacked.shape[0], batch_size):
        images = request.attacked[start:start + batch_size]
        masks = request.mask[start:start + batch_size].float().unsqueeze(1)
        stores: dict[str, list] = {s.name: [] for s in sites}
        with ExitStack() as stack:
            for s in sites:
                module = get_module(model, s.name)
                if isinstance(module, nn.MultiheadAttention):
                    handle = module.register_forward_hook(class_row_hook(stores[s.name], module), with_kwargs=True)
                else:
                    handle = module.register_forward_hook(_attnpool_hook(stores[s.name]))
                stack.callback(handle.remove)
            bundle.encode_images(images)
        for s in sites:
            attn = stores[s.name][0].float().cpu()  # (batch, heads, tokens), token 0 = the query / class token
            grid = math.isqrt(attn.shape[-1] - 1)
            frac = F.adaptive_avg_pool2d(masks, (grid, grid)).flatten(1)  # (batch, grid*grid)
            spatial = attn[:, :, attn.shape[-1] - grid * grid:]
            share = (spatial * frac[:, None, :]).sum(-1) / spatial.sum(-1).clamp_min(1e-12)
            sums[s.name] += share.sum(0).double()
    n = request.attacked.shape[0]
    return {name: (total / n).float() for name, total in sums.items()}


# -- the greedy search ------------------------------------------------------------------------------
def ablate_heads(bundle: ModelBundle, request: EditRequest, words: Sequence[str],
                 hparams: Optional[HeadAblationHParams] = None, data: Optional[HeldoutData] = None,
                 meta: Optional[dict] = None) -> HeadAblation:
    """Score heads on the request's exemplars, ablate greedily on validation, leave the ablation applied.

    Args:
        bundle: the model (changed in place).
        request: attacked exemplars and their glyph masks (targets are not used).
        words: the defended word(s) (the validation split writes them).
        data: validation data (default: ``hparams.n_val`` scenes of the model's world, defended words only).
    """
    hp = hparams or HeadAblationHParams()
    sites = attention_sites(bundle)
    data = data or heldout_data(bundle, words, hp.n_val)
    data = replace(data, sets=replace(data.sets, other=None), signs=None)  # each step scores what it needs
    scores = head_scores(bundle, sites, request)
    order = sorted(((float(v), s, h) for s in sites for h, v in enumerate(scores[s.name].tolist())),
                   key=lambda t: -t[0])
    originals = {s.proj: get_module(bundle.model, s.proj).weight.detach().clone() for s in sites}
    base = current = score(data)
    tolerance = scene_tolerance(hp.tolerance, int(base["n"]), "head-ablation-weights' keep-rule tolerance")
    kept: list[tuple[AttentionSite, int]] = []
    steps, skipped = [], 0
    try:
        for value, site, head in tqdm(order, desc="head ablation (greedy)", unit="head", leave=False, disable=None):
            if skipped > hp.patience or (hp.max_heads is not None and len(kept) >= hp.max_heads):
                break
            weight = get_module(bundle.model, site.proj).weight
            cols = site.columns(bundle.model, [head])
            with torch.no_grad():
                weight[:, cols] = 0
            figures = score(data)
            keep = (figures["text_acc"] - current["text_acc"] >= hp.min_gain - 1e-9
                    and admissible(figures, base, tolerance))
            steps.append({"site": site.name, "head": head, "score": value, "text_acc": figures["text_acc"],
                          "clean_acc": figures["clean_acc"], "blank_acc": figures["blank_acc"], "kept": keep})
            if keep:
                kept.append((site, head))
                current, skipped = figures, 0
            else:
                with torch.no_grad():
                    weight[:, cols] = originals[site.proj][:, cols].to(weight.device)
                skipped += 1
    finally:
        with torch.no_grad():
            for proj, w in originals.items():
                get_module(bundle.model, proj).weight.copy_(w)
    heads = [(s.name, h) for s, h in kept]
    edit_set = None
    if kept:
        edits = ablation_edits(bundle, [s for s in sites if any(k[0] is s for k in kept)], kept, meta)
        edit_set = EditSet(edits, {"model": bundle.name, "pretrained": bundle.pretrained, **(meta or {}),
                                   "method": "head-ablation-weights", "heads": heads,
                                   "hparams": dataclasses.asdict(hp)})
        apply_edit_set(bundle.model, edit_set)
    log.info("head ablation: %d of %d heads ablated: %s", len(heads), len(order), heads)
    selection = {"split": "validation", "n": int(base["n"]), "tolerance": tolerance.to_dict(),
                 "rule": f"keep a head when defended-word text-note accuracy rises by >= {hp.min_gain:g} and clean "
                         f"and blank-note accuracy each lose <= {tolerance.text()}; stop after more than "
                         f"{hp.patience} heads in a row not kept"}
    return HeadAblation(heads=heads, edit_set=edit_set, scores={k: v.tolist() for k, v in scores.items()},
                        steps=steps, selection=selection)


def ablation_edits(bundle: ModelBundle, sites: Sequence[AttentionSite], heads: Sequence[tuple[AttentionSite, int]],
                   meta: Optional[dict] = None) -> list[LayerEdit]:
    """One LayerEdit per site that zeroes the given heads' columns of its output projection."""
    edits = []
    for site in sites:
        chosen = [h for s, h in heads if s is site]
        w = get_module(bundle.model, site.proj).weight.detach()
        cols = site.columns(bundle.model, chosen)
        directions = torch.zeros(w.shape[1], len(cols), dtype=torch.float32)
        directions[cols, torch.arange(len(cols))] = 1.0
        edits.append(LayerEdit.create(site.proj, -w[:, cols], directions, w,
                                      {"model": bundle.name, **(meta or {}), "method": "head-ablation-weights",
                                       "heads": chosen}))
    return edits


def run_head_ablation(bundle: ModelBundle, data: DefenseData, hparams: HeadAblationHParams,
                      context: MethodContext) -> DefenseResult:
    """The table's run: greedy ablation of the heads that read the text, tuned on the validation split."""
    ablation = ablate_heads(bundle, data.merged(), data.words, hparams, meta=run_meta(bundle, context))
    layers = "+".join(ablation.edit_set.layers) if ablation.edit_set is not None else "none"
    details = {"heads": [list(h) for h in ablation.heads], "scores": ablation.scores, "steps": ablation.steps,
               "selection": ablation.selection,
               "budget": budget(data.images, 0, len(ablation.steps) + 1, train_images=data.images,
                                validation_images=ablation.selection.get("n", 0))}
    return DefenseResult("head-ablation-weights", layers, edit_set=ablation.edit_set, details=details)
