"""One edit spread over several sites (after MEMIT, which spreads one edit over a range of layers).

Each site's update is the single-site rewrite (rank r, directions whitened by that site's C⁻¹,
closed form): the sites are solved one after another, in the order given, and each later site's
key statistics, keys and values are collected with the earlier sites' edits already applied. A
site's target is the blank exemplar at its own block, so a later site corrects what the earlier
ones left (the text's effect they could not remove within their rank).

With ``hparams.spread`` the sites share ONE target instead (MEMIT's residual spreading): the blank
exemplar's residual stream after the last site's block, in the model as it was before the edit (fixed:
the earlier sites' edits are taken off while the blank exemplars are traced). Site i of n (in forward
order) takes 1/(n - i) of the gap that remains there when it is solved (the attacked exemplars traced
with the earlier sites applied), so the update is divided among the layers and the last site takes
whatever is left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Optional

from torch import nn

from clipedit.core.api import EditRequest, KeepRequest, KeyStatistics, compute_rewrite
from clipedit.core.edit_sets import EditSet, apply_edit_set, revert_edit_set
from clipedit.core.edits import apply_edit
from clipedit.core.hparams import RewriteHParams
from clipedit.core.keys_values import Spread, spread_check
from clipedit.core.sites import resolve_site
from clipedit.errors import EditError

log = logging.getLogger(__name__)


def apply_multisite_rewrite(model: nn.Module, requests: Callable[[], Iterable[EditRequest]],
                            hparams: RewriteHParams, layers: Sequence[str],
                            statistics: Callable[[str], KeyStatistics], forward: Optional[Callable] = None,
                            meta: Optional[dict] = None,
                            keep: Optional[Callable[[], Iterable[KeepRequest]]] = None) -> EditSet:
    """Edit ``layers`` of ``model`` in place, in order, and return the edits as one set.

    Args:
        requests: returns a fresh iterable of exemplar batches (called once per site, so the
            exemplars may be rendered on the fly and never held all at once).
        hparams: the settings every site uses (its ``layer`` is ignored).
        layers: the sites, in the order they are solved (usually input to output).
        statistics: ``layer -> KeyStatistics`` of the model as it is when called (earlier sites edited).
        meta: stored with every site's edit and with the set.
        keep: returns a fresh iterable of images to keep as they are (signs, ``hparams.keep_reading``); called
            once per site, each site keeping their outputs as they are when it is solved.

    If a site fails, the sites already edited are reverted and the error is raised.
    """
    if not layers:
        raise EditError("a multi-site edit needs at least one layer")
    if len(set(layers)) != len(layers):
        raise EditError(f"a layer is listed twice among the sites: {', '.join(layers)}")
    last_block = spread_block(model, layers) if hparams.spread else None
    edit_set = EditSet([], {**(meta or {}), "layers": list(layers), "hparams": hparams.to_dict()})
    try:
        for i, layer in enumerate(layers):
            hp = dataclasses.replace(hparams, layer=layer)
            site_meta = {**(meta or {}), "site": i, "sites": len(layers)}
            spread = (Spread(last_block, 1.0 / (len(layers) - i), lambda: _taken_off(model, edit_set))
                      if last_block is not None else None)
            if spread is not None:
                site_meta["spread"] = {"block": spread.block, "share": spread.share}
            edit = compute_rewrite(model, requests(), hp, statistics(layer), forward, site_meta,
                                   keep() if keep is not None else None, spread)
            apply_edit(model, edit)
            edit_set.edits.append(edit)
            log.info("site %d/%d: %s edited", i + 1, len(layers), layer)
    except Exception:
        revert_edit_set(model, edit_set)
        raise
    return edit_set


def spread_block(model: nn.Module, layers: Sequence[str]) -> str:
    """The block whose output a spread edit over ``layers`` targets: the last site's. Refuses sites that do not
    write a block's residual stream, and sites out of forward order (each site's block must run before or be
    the last one)."""
    sites = [resolve_site(model, layer) for layer in layers]
    for site in sites:
        spread_check(site, Spread(sites[-1].block_name or "", 1.0))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    blocks = [order[site.block_name] for site in sites]
    if blocks != sorted(blocks) or len(set(blocks)) != len(blocks):
        raise EditError("a spread edit needs its sites in distinct blocks, in forward order: "
                        + ", ".join(layers))
    return sites[-1].block_name


@contextlib.contextmanager
def _taken_off(model: nn.Module, edit_set: EditSet) -> Iterator[None]:
    """The edits of ``edit_set`` taken off ``model`` (bit-exactly) for the block, put back after."""
    revert_edit_set(model, edit_set)
    try:
        yield
    finally:
        apply_edit_set(model, edit_set)
