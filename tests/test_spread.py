"""A rewrite spread over consecutive blocks (MEMIT's residual spreading): one target at the last site's block,
each site taking its share of the gap that remains there."""
from __future__ import annotations

import pytest
import torch
from test_exemplar_sums import _requests

from clipedit.core import RewriteHParams, key_statistics
from clipedit.core.edit_sets import revert_edit_set
from clipedit.core.multisite import apply_multisite_rewrite
from clipedit.core.nethook import TraceDict
from clipedit.core.sites import resolve_site
from clipedit.errors import EditError

SITE = "visual.transformer.resblocks.{}.mlp.c_proj"
BLOCK = "visual.transformer.resblocks.{}"


def _statistics(model):
    g = torch.Generator().manual_seed(7)
    ref = [torch.randn(16, 3, 64, 64, generator=g) for _ in range(4)]
    return lambda layer: key_statistics(model, layer, lambda: ref, forward=model.encode_image)


def _edit(model, layers, req, spread, rank=8):
    return apply_multisite_rewrite(model, lambda: [req], RewriteHParams(rank=rank, spread=spread), layers,
                                   _statistics(model), forward=model.encode_image)


def _output(model, images, block: str) -> torch.Tensor:
    with TraceDict(model, [block]) as td:
        model.encode_image(images)
    return td[block].output


def _gap(model, req, block: str, blank=None) -> float:
    """Mean squared gap between the attacked exemplars' output of ``block`` and ``blank`` (default: the blank
    exemplars' in the model as it is) at the label's tokens."""
    attacked = _output(model, req.attacked, block)
    blank = _output(model, req.target, block) if blank is None else blank
    site = resolve_site(model, SITE.format(1))
    diff = site.locations(attacked - blank)  # (images, tokens, width), whatever the tower's layout
    sel = site.location_weights(req.mask, diff.shape[1]) > 0
    return float((diff[sel] ** 2).mean())


def test_one_site_spread_is_the_single_site_edit(tiny_vit):
    model, req = tiny_vit.model, _requests(6, seed=3)
    plain = _edit(model, [SITE.format(0)], req, spread=False)
    delta = plain.edits[0].delta().clone()
    revert_edit_set(model, plain)
    spread = _edit(model, [SITE.format(0)], req, spread=True)
    torch.testing.assert_close(spread.edits[0].delta(), delta, rtol=1e-5, atol=1e-7)
    assert spread.edits[0].meta["spread"] == {"block": BLOCK.format(0), "share": 1.0}
    revert_edit_set(model, spread)


def test_spread_shares_one_target_and_the_last_site_closes_the_gap(tiny_vit):
    """Two exemplars: few enough keys that the last site, at full rank, fits them exactly."""
    model, req = tiny_vit.model, _requests(2, seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [SITE.format(0), SITE.format(1)]
    target = _output(model, req.target, BLOCK.format(1))  # the one target: the unedited blank's
    gap0 = _gap(model, req, BLOCK.format(1), target)
    spread = _edit(model, layers, req, spread=True, rank=256)
    assert [e.meta["spread"]["share"] for e in spread.edits] == [0.5, 1.0]
    assert _gap(model, req, BLOCK.format(1), target) < 1e-6 * gap0  # met at the last block
    revert_edit_set(model, spread)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the first site alone took a part of the gap at the LAST block (not its own block's target)
    first = _edit(model, layers[:1], req, spread=False, rank=256)
    own = _gap(model, req, BLOCK.format(1), target)
    revert_edit_set(model, first)
    spread = _edit(model, layers, req, spread=True, rank=256)
    revert_edit_set(model, EditSetOf(spread.edits[1:]))
    share = _gap(model, req, BLOCK.format(1), target)
    revert_edit_set(model, EditSetOf(spread.edits[:1]))
    assert share < gap0 and abs(share - own) > 1e-3 * gap0
    # without spreading, the last site matches the blank as the first site left it: the fixed target is missed
    plain = _edit(model, layers, req, spread=False, rank=256)
    assert _gap(model, req, BLOCK.format(1), target) > 1e-3 * gap0
    revert_edit_set(model, plain)


def EditSetOf(edits):  # noqa: N802 - a small constructor
    from clipedit.core.edit_sets import EditSet

    return EditSet(list(edits))


@pytest.mark.parametrize("layers, message", [
    (["visual.transformer.resblocks.0.attn.v_proj", SITE.format(1)], "residual stream"),
    ([SITE.format(1), SITE.format(0)], "forward order"),
])
def test_spread_refuses_sites_off_the_residual_stream_or_out_of_order(tiny_vit, layers, message):
    before = {k: v.clone() for k, v in tiny_vit.model.state_dict().items()}
    with pytest.raises(EditError, match=message):
        _edit(tiny_vit.model, layers, _requests(2, seed=5), spread=True)
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.model.state_dict().items())


def test_spread_is_a_closed_form_setting():
    with pytest.raises(EditError, match="closed-form"):
        RewriteHParams(spread=True, solver="optimize")
