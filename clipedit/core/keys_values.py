"""Keys and values of a site from attacked/target exemplar pairs, read through forward hooks."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clipedit.core.nethook import TraceDict
from clipedit.core.sites import Site
from clipedit.errors import EditError, SiteError


class EmptyMaskError(EditError):
    """The label masks cover no location of the site (batched collection skips such batches)."""


@dataclass
class Exemplars:
    """What a solver needs, at the locations the label covers.

    Attributes:
        keys: (n, key_dim) site inputs of the attacked exemplars.
        values: (n, out) site outputs that make the block reproduce the target exemplars.
        weights: (n,) location weights.
        block_input: (batch, …) the attacked exemplars' block input (``optimize``).
        block_target: (batch, …) the target exemplars' block output (``optimize``).
        location_mask: (batch, locations) which locations are edited.
        target_keys: (n, key_dim) site inputs of the target exemplars at the same locations (their outputs
            there are what ``keep_targets`` keeps).
    """

    keys: torch.Tensor
    values: torch.Tensor
    weights: torch.Tensor
    block_input: Optional[torch.Tensor]
    block_target: Optional[torch.Tensor]
    location_mask: torch.Tensor
    target_keys: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Spread:
    """A share of one target taken at a later block (MEMIT's residual spreading): the site's value is its
    attacked contribution plus ``share`` of the gap between the blank and the attacked output of ``block``
    (the last site's block), instead of the gap at its own block.

    Attributes:
        original: a context in which the model is as it was before the spread began (the earlier sites'
            edits taken off): the blank exemplars are traced in it, so the target is one and fixed, however
            the earlier sites changed the blank image's own path.
    """

    block: str
    share: float
    original: Optional[Callable[[], contextlib.AbstractContextManager]] = None


#: Where a token site is edited besides (or instead of) the label's tokens: ``off`` (the label's tokens),
#: ``only`` (the class token alone), ``also`` (the label's tokens and the class token).
CLASS_TOKEN_MODES = ("off", "only", "also")


def site_locations(site: Site, masks: torch.Tensor, n_locations: int, out_hw, threshold: float,
                   class_token: str = "off") -> torch.Tensor:
    """(batch, locations) weights of the edited locations: the label's (``site.location_weights``), and/or the
    class token (token 0 of a ViT tower) per ``class_token``."""
    loc = site.location_weights(masks, n_locations, out_hw, threshold)
    if class_token == "off":
        return loc
    if class_token not in CLASS_TOKEN_MODES:
        raise EditError(f"class_token must be one of {', '.join(CLASS_TOKEN_MODES)}, got {class_token!r}")
    if not site.token_layout or out_hw is not None or not site.prefix_tokens:
        raise EditError(f"{site.layer}: class_token={class_token!r} needs a site of a ViT tower with a class token")
    if class_token == "only":
        loc = torch.zeros_like(loc)
    loc[:, 0] = 1
    return loc


def spread_check(site: Site, spread: Optional[Spread]) -> None:
    """Refuse a spread at a site that does not write the residual stream (its block's output)."""
    if spread is not None and (site.residual != "output" or site.block_name is None or not site.token_layout):
        raise EditError(f"{site.layer}: spreading one target over sites needs sites that add to the residual "
                        "stream of a transformer block (e.g. a ViT block's mlp.c_proj)")
    if spread is not None and not 0 < spread.share <= 1:
        raise EditError(f"a spread share must be in (0, 1], got {spread.share}")


def _run(model: nn.Module, site: Site, images: torch.Tensor, forward: Callable,
         spread: Optional[Spread] = None) -> TraceDict:
    # clone: blocks add the shortcut in place (`out += identity`) onto the traced tensors
    layers = list(dict.fromkeys([*site.trace_layers(), *([spread.block] if spread else [])]))
    with TraceDict(model, layers, retain_input=True, clone=True, stop=True) as td:
        forward(images)
    return td


@torch.no_grad()
def collect_exemplars(model: nn.Module, site: Site, attacked: torch.Tensor, target: torch.Tensor,
                      masks: torch.Tensor, forward: Optional[Callable] = None,
                      threshold: float = 0.0, spread: Optional[Spread] = None,
                      class_token: str = "off") -> Exemplars:
    """Read keys at the attacked exemplars and the values that reproduce the target there.

    For a site inside a residual block the value keeps the attacked residual path and replaces the
    site's contribution: ``contribution* = pre_target - (pre_attacked - contribution_attacked)``,
    mapped back through the eval-mode norm (an affine map) when there is one.

    Args:
        attacked, target: (batch, 3, H, W) preprocessed images of equal shape.
        masks: (batch, H, W) label masks in [0, 1] at the same resolution.
        spread: take ``spread.share`` of the gap at a later block instead (``contribution_attacked +
            share * (out_target - out_attacked)`` of ``spread.block``); with the site's own block and share 1
            this is the value above.
        class_token: edit the class token too (``also``) or alone (``only``), :func:`site_locations`.
    """
    _check_pairs(attacked, target, masks)
    spread_check(site, spread)
    forward = forward or model
    dev = next(model.parameters()).device
    att = _run(model, site, attacked.to(dev), forward, spread)
    with spread.original() if spread is not None and spread.original is not None else contextlib.nullcontext():
        tgt = _run(model, site, target.to(dev), forward, spread)
    return _exemplars_from_traces(model, site, att, tgt, masks.to(dev), threshold, spread, class_token)


@torch.no_grad()
def collect_exemplars_at(model: nn.Module, sites: Sequence[Site], attacked: torch.Tensor, target: torch.Tensor,
                         masks: torch.Tensor, forward: Optional[Callable] = None,
                         threshold: float = 0.0, class_token: str = "off") -> dict[str, Exemplars]:
    """:func:`collect_exemplars` for several sites from one traced pass of the attacked and one of the
    target exemplars (every site's modules hooked at once); keyed by site name.

    Raises:
        SiteError: a site whose module the forward pass never calls (e.g. an attention projection
            used through its weights): its keys and values are not defined.
    """
    _check_pairs(attacked, target, masks)
    forward = forward or model
    dev = next(model.parameters()).device
    layers = [name for site in sites for name in site.trace_layers()]
    traces = []
    for images in (attacked, target):
        with TraceDict(model, layers, retain_input=True, clone=True) as td:
            forward(images.to(dev))
        traces.append(td)
    att, tgt = traces
    for site in sites:
        unseen = [name for name in site.trace_layers() if att[name].output is None]
        if unseen:
            raise SiteError(f"{site.layer}: the forward pass never calls {unseen[0]} as a module (its weights "
                            "are used directly), so the site's keys and values are not defined")
    return {site.layer: _exemplars_from_traces(model, site, att, tgt, masks.to(dev), threshold,
                                               class_token=class_token) for site in sites}


@torch.no_grad()
def collect_kept_keys_at(model: nn.Module, sites: Sequence[Site], images: torch.Tensor, masks: torch.Tensor,
                         forward: Optional[Callable] = None, threshold: float = 0.0, class_token: str = "off"
                         ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Keys of images whose site outputs are to stay as they are (e.g. signs): ``(keys, weights)`` at the
    locations ``masks`` cover, for each site from one traced pass; keyed by site name. Their values are the
    sites' current outputs, so the closed form needs only their weighted gram (the keep term).

    Raises:
        EmptyMaskError: the masks cover no location of a site.
    """
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise EditError(f"mask size {tuple(masks.shape)} does not match the images {tuple(images.shape)}")
    if not (masks > 0).any():
        raise EmptyMaskError("the mask is empty: no pixel of the label lies inside the image")
    forward = forward or model
    dev = next(model.parameters()).device
    with TraceDict(model, list(dict.fromkeys(site.hook_name for site in sites)), retain_input=True, clone=True) as td:
        forward(images.to(dev))
    out = {}
    for site in sites:
        if td[site.hook_name].output is None:
            raise SiteError(f"{site.layer}: the forward pass never calls {site.hook_name} as a module, so the "
                            "site's keys are not defined")
        keys = site.keys(site.input_of(td[site.hook_name]))
        loc = site_locations(site, masks.to(dev), keys.shape[1], site.grid_hw(site.output_of(td[site.hook_name])),
                             threshold, class_token)
        if not (loc > 0).any():
            raise EmptyMaskError("the mask covers no location of the site (label too small for the grid?)")
        sel = loc > 0
        out[site.layer] = (keys[sel], loc[sel].float())
    return out


def _check_pairs(attacked: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> None:
    if attacked.shape != target.shape:
        raise EditError(f"attacked and blank exemplars differ in size: {tuple(attacked.shape)} "
                        f"vs {tuple(target.shape)}")
    if masks.shape[0] != attacked.shape[0] or masks.shape[-2:] != attacked.shape[-2:]:
        raise EditError(f"mask size {tuple(masks.shape)} does not match the exemplars {tuple(attacked.shape)}")
    if not (masks > 0).any():
        raise EmptyMaskError("the mask is empty: no pixel of the label lies inside the image")


def _exemplars_from_traces(model: nn.Module, site: Site, att: TraceDict, tgt: TraceDict, masks: torch.Tensor,
                           threshold: float, spread: Optional[Spread] = None, class_token: str = "off") -> Exemplars:
    """Keys at the attacked exemplars and the values that reproduce the target, from traced passes."""
    keys = site.keys(site.input_of(att[site.hook_name]))
    n_loc = keys.shape[1]
    out_hw = site.grid_hw(site.output_of(att[site.hook_name]))
    loc = site_locations(site, masks, n_loc, out_hw, threshold, class_token)
    if not (loc > 0).any():
        raise EmptyMaskError("the mask covers no location of the site (label too small for the grid?)")

    contrib_att = _contribution(model, site, att)
    contrib_tgt = _contribution(model, site, tgt)
    residual_att = _pre_activation(site, att, contrib_att) - contrib_att
    residual_tgt = _pre_activation(site, tgt, contrib_tgt) - contrib_tgt
    contrib_star = contrib_tgt + residual_tgt - residual_att
    if spread is not None:  # a share of the gap that remains at the later block
        gap = site.site_layout(tgt[spread.block].output) - site.site_layout(att[spread.block].output)
        contrib_star = contrib_att + spread.share * gap
    scale, shift = site.norm_affine(model)
    # Channels the norm zeroes cannot be changed by the site: keep their current output there.
    dead = scale.abs() < 1e-12
    values = (site.locations(contrib_star) - shift) / torch.where(dead, torch.ones_like(scale), scale)
    values = torch.where(dead, site.locations(site.output_of(att[site.hook_name])), values)

    sel = loc > 0
    block_in = att[site.block_name].input if site.block_name else None  # the block's own layout
    block_tgt = tgt[site.block_name].output if site.block_name else None
    target_keys = site.keys(site.input_of(tgt[site.hook_name]))[sel]
    return Exemplars(keys=keys[sel], values=values[sel], weights=loc[sel].float(),
                     block_input=block_in, block_target=block_tgt, location_mask=loc, target_keys=target_keys)


def _contribution(model: nn.Module, site: Site, trace: TraceDict) -> torch.Tensor:
    """What the site adds to the block: its output through the eval-mode norm or LayerScale after it."""
    if site.norm_name:
        return trace[site.norm_name].output
    out = site.output_of(trace[site.hook_name])
    if site.scale_name is None:
        return out
    gamma = site.norm_affine(model)[0].to(out.dtype)
    return out * (gamma if site.token_layout else gamma.view(1, -1, 1, 1))


def _pre_activation(site: Site, trace: TraceDict, contribution: torch.Tensor) -> torch.Tensor:
    if site.residual == "output":
        return site.site_layout(trace[site.block_name].output)
    if site.residual == "shortcut":
        shortcut = trace[site.shortcut_name].output if site.shortcut_name else trace[site.block_name].input
        return contribution + site.site_layout(shortcut)
    return contribution  # no residual: the target is the contribution itself
