"""The ways to make a model treat attacked exemplars like their targets, behind one call: the rank-r
rewrite (``edit``), the paper's fine-tuning baselines (``finetune-local``/``-global``) and the peer
defenses tuned on the validation split (``head-ablation``, ``paint``)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from clipedit.core import (
    EditRequest,
    KeyStatistics,
    LayerEdit,
    RewriteHParams,
    apply_edit,
    compute_rewrite,
    resolve_site,
)
from clipedit.core.edit_sets import EditSet
from clipedit.core.multisite import apply_multisite_rewrite
from clipedit.defenses.defaults import default_layer
from clipedit.defenses.finetune import FinetuneHParams, finetune
from clipedit.defenses.head_ablation import HeadAblationHParams, ablate_heads
from clipedit.defenses.paint import PaintHParams, paint
from clipedit.errors import ClipeditError, EditError
from clipedit.models.bundle import ModelBundle

METHODS = ("edit", "finetune-local", "finetune-global", "head-ablation", "paint")


@dataclass
class MethodResult:
    """Which layer was targeted, by which method, and the edit (``edit`` only)."""

    layer: str
    method: str
    edit: Optional[LayerEdit]
    details: Optional[Any] = None  # head-ablation: the HeadAblation; paint: the PaintResult
    edit_set: Optional[EditSet] = None  # head-ablation: the edits that zero the heads (a file like an edit)


def run_method(bundle: ModelBundle, request: EditRequest, method: str, hparams: RewriteHParams,
               finetune_hparams: FinetuneHParams, statistics: Callable[[str], KeyStatistics],
               meta: Optional[dict] = None) -> MethodResult:
    """Change ``bundle.model`` in place so the request's attacked images look like its targets.

    Args:
        hparams: the rewrite's settings; ``hparams.layer`` None = the model's default site (also the
            layer ``finetune-local`` trains).
        statistics: ``layer -> KeyStatistics`` (only called for ``edit``).
        meta: stored with the edit.
    """
    if method not in METHODS:
        raise ClipeditError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method in ("head-ablation", "paint"):
        return _run_peer(bundle, request, method, finetune_hparams, meta or {})
    layer = hparams.layer or default_layer(bundle)
    site = resolve_site(bundle.model, layer)
    if method == "edit":
        hp = RewriteHParams(**{**hparams.to_dict(), "layer": layer})
        meta = {"model": bundle.name, "pretrained": bundle.pretrained, **(meta or {})}
        edit = compute_rewrite(bundle.model, request, hp, statistics(layer), forward=bundle.encode_images,
                               meta=meta)
        apply_edit(bundle.model, edit)
        return MethodResult(layer, method, edit)
    if method == "finetune-local" and not isinstance(site.weight, torch.nn.Parameter):
        raise ClipeditError(f"finetune-local trains a whole weight; {layer} is part of one (pass a module's "
                            "layer, e.g. an mlp.c_proj)")
    params = [site.weight] if method == "finetune-local" else list(bundle.image_module.parameters())
    finetune(bundle.model, params, request, finetune_hparams, forward=bundle.encode_images)
    for name, p in bundle.model.named_parameters():
        if not torch.isfinite(p).all():
            raise EditError(f"fine-tuning produced NaN or inf in {name}")
    return MethodResult(layer, method, None)


def run_multisite_edit(bundle: ModelBundle, requests: Callable[[], Iterable[EditRequest]], hparams: RewriteHParams,
                       sites: Sequence[str], statistics: Callable[[str], KeyStatistics],
                       meta: Optional[dict] = None) -> MethodResult:
    """The rewrite over several ``sites`` of ``bundle.model``, solved in order, in place; one edit set.

    Args:
        requests: returns a fresh iterable of exemplar batches (called once per site).
    """
    meta = {"model": bundle.name, "pretrained": bundle.pretrained, **(meta or {})}
    edit_set = apply_multisite_rewrite(bundle.model, requests, hparams, sites, statistics,
                                       forward=bundle.encode_images, meta=meta)
    return MethodResult(",".join(sites), "edit", None, edit_set=edit_set)


def _run_peer(bundle: ModelBundle, request: EditRequest, method: str, finetune_hparams: FinetuneHParams,
              meta: dict) -> MethodResult:
    """The peer defenses, tuned on the validation split of the model's world for ``meta["words"]``."""
    words = meta.get("words") or []
    if method == "head-ablation":
        ablation = ablate_heads(bundle, request, words, HeadAblationHParams(), meta=meta)
        layers = ",".join(ablation.edit_set.layers) if ablation.edit_set is not None else "none"
        return MethodResult(layers, method, None, ablation, ablation.edit_set)
    result = paint(bundle, request, words, PaintHParams(finetune=finetune_hparams))
    return MethodResult(bundle.image_prefix.rstrip(".") or "model", method, None, result)
