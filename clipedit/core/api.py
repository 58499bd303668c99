"""Rewrite one layer so the keys of attacked exemplars map to the values of their targets.

    stats = key_statistics(model, "visual.transformer.resblocks.0.mlp.c_proj", batches, data_key="ref-v1")
    model, orig, edit = apply_rewrite(model, EditRequest(attacked, blank, mask), hparams, stats)
"""
from __future__ import annotations

import copy as copy_module
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clipedit.core.edits import LayerEdit, apply_edit
from clipedit.core.exemplar_sums import accumulate_exemplar_sums, accumulate_kept_sums, closed_form_edit
from clipedit.core.hparams import RewriteHParams
from clipedit.core.keys_values import Spread, collect_exemplars
from clipedit.core.sites import resolve_site
from clipedit.core.solvers import solve_optimize
from clipedit.core.statistics import cached_second_moment
from clipedit.core.subspace import edit_directions, regularise
from clipedit.errors import EditError

log = logging.getLogger(__name__)


@dataclass
class EditRequest:
    """Exemplar pairs: attacked images, what they should look like to the model, and the label masks.

    Attributes:
        attacked: (batch, 3, H, W) preprocessed attacked exemplars.
        target: (batch, 3, H, W) preprocessed targets (the blank-note images).
        mask: (batch, H, W) label masks in [0, 1] at the same resolution.
    """

    attacked: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


@dataclass
class KeepRequest:
    """Images whose outputs at the masked locations the edit keeps as they are (``keep_reading``: signs, a
    class name written alone).

    Attributes:
        images: (batch, 3, H, W) preprocessed images.
        mask: (batch, H, W) masks in [0, 1] at the same resolution (e.g. the signs' labels).
    """

    images: torch.Tensor
    mask: torch.Tensor


@dataclass
class KeyStatistics:
    """Second moment of a site's keys over reference images."""

    layer: str
    C: torch.Tensor
    n_keys: int


def key_statistics(model: nn.Module, layer: str, batches: Callable[[], Iterable[torch.Tensor]],
                   data_key: Optional[str] = None, forward: Optional[Callable] = None,
                   model_key: Optional[str] = None) -> KeyStatistics:
    """C = E[k kᵀ] of ``layer``'s keys over reference batches; cached when ``data_key`` is given."""
    site = resolve_site(model, layer)
    C, n = cached_second_moment(model, site, batches, data_key, forward, model_key)
    return KeyStatistics(layer=layer, C=C, n_keys=n)


def _merge(requests: EditRequest | Sequence[EditRequest]) -> EditRequest:
    reqs = [requests] if isinstance(requests, EditRequest) else list(requests)
    if not reqs:
        raise EditError("no exemplars given")
    return EditRequest(torch.cat([r.attacked for r in reqs]), torch.cat([r.target for r in reqs]),
                       torch.cat([r.mask for r in reqs]))


def compute_rewrite(model: nn.Module, requests: EditRequest | Iterable[EditRequest],
                    hparams: RewriteHParams, stats: KeyStatistics,
                    forward: Optional[Callable] = None, meta: Optional[dict] = None,
                    keep: Optional[KeepRequest | Iterable[KeepRequest]] = None,
                    spread: Optional[Spread] = None) -> LayerEdit:
    """Compute (without applying) the rank-r edit of ``hparams.layer``.

    The closed-form solver accumulates its sums over batches of exemplars (memory flat in their
    number; ``requests`` may be a generator); the optimizer holds all exemplars at once.

    Args:
        forward: runs the model on a batch of images (default ``model``; e.g. ``model.encode_image``).
        meta: extra metadata stored with the edit (model name, words …).
        keep: images to keep as they are at their masks (signs), weighed by ``hparams.keep_reading``; required
            when it is above 0 and ignored at 0.
        spread: the site's values are a share of the gap at a later block (a spread multi-site edit,
            :func:`~clipedit.core.multisite.apply_multisite_rewrite`); closed form only.
    """
    if hparams.layer is None:
        raise EditError("no layer given")
    if stats.layer != hparams.layer:
        raise EditError(f"key statistics are for {stats.layer}, not {hparams.layer}")
    site = resolve_site(model, hparams.layer)
    C = regularise(stats.C, stats.n_keys, hparams.cov_reg)
    meta = {**(meta or {}), "hparams": hparams.to_dict()}
    if hparams.solver == "closed-form":
        sums = accumulate_exemplar_sums(model, site, [requests] if isinstance(requests, EditRequest) else requests,
                                        forward, hparams.mask_threshold, with_targets=hparams.keep_targets > 0,
                                        spread=spread, class_token=hparams.class_token)
        if hparams.keep_reading > 0:
            if keep is None:
                raise EditError("keep_reading needs images to keep (signs, KeepRequest); none were given")
            accumulate_kept_sums(model, [site], {site.layer: sums}, [keep] if isinstance(keep, KeepRequest) else keep,
                                 forward, hparams.mask_threshold, class_token=hparams.class_token)
        edit = closed_form_edit(site, sums, C, hparams.rank, hparams.keep_targets, meta,
                                keep_reading=hparams.keep_reading)
    else:
        if spread is not None or hparams.class_token != "off":
            raise EditError("a spread or class-token edit is solved in closed form; the optimize solver does not "
                            "take it")
        req = _merge(requests)
        ex = collect_exemplars(model, site, req.attacked, req.target, req.mask, forward, hparams.mask_threshold)
        D = edit_directions(ex.keys.cpu(), C, hparams.rank, ex.weights.cpu())
        lam = solve_optimize(model, site, ex, D, hparams)
        edit = LayerEdit.create(hparams.layer, lam, D, site.weight,
                                {**meta, "n_keys": int(ex.keys.shape[0]), "n_exemplars": int(req.attacked.shape[0])})
    if edit.rank != hparams.rank:  # record the rank used (clamped to the keys) and the one asked for
        edit.meta["hparams"] = {**edit.meta["hparams"], "rank": edit.rank, "rank_requested": hparams.rank}
    if not edit.delta().any():  # an update that rounds to zero is no defense
        raise EditError(f"the edit of {edit.layer} changes no weight (its update rounds to zero in "
                        f"{edit.orig_weight.dtype}); lower keep_targets (--keep-blank {hparams.keep_targets:g})")
    log.info("edit of %s: rank %d from %d keys of %d exemplars", edit.layer, edit.rank,
             edit.meta["n_keys"], edit.meta["n_exemplars"])
    return edit


def apply_rewrite(model: nn.Module, requests: EditRequest | Sequence[EditRequest],
                  hparams: RewriteHParams, stats: KeyStatistics, forward: Optional[Callable] = None,
                  copy: bool = False, return_orig_weights: bool = True, meta: Optional[dict] = None,
                  keep: Optional[KeepRequest | Iterable[KeepRequest]] = None
                  ) -> tuple[nn.Module, Optional[dict[str, torch.Tensor]], LayerEdit]:
    """Compute the edit and apply it (ROME's calling convention).

    Args:
        copy: edit a deep copy and leave ``model`` untouched.
        return_orig_weights: also return ``{weight name: original weight}``.
        keep: signs to keep (``hparams.keep_reading``), as in :func:`compute_rewrite`.

    Returns:
        (edited model, original weights or None, the edit).
    """
    edit = compute_rewrite(model, requests, hparams, stats, forward, meta, keep)
    if copy:
        model = copy_module.deepcopy(model)
    orig = {f"{edit.layer}.weight": edit.orig_weight.clone()} if return_orig_weights else None
    apply_edit(model, edit)
    return model, orig, edit
