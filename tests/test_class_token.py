"""A ViT site edited at the class token (alone or with the label's tokens), where a later block holds what the
class token has read."""
from __future__ import annotations

import pytest
import torch
from test_exemplar_sums import _requests
from test_spread import BLOCK, SITE, _output, _statistics

from clipedit.core import RewriteHParams, compute_rewrite
from clipedit.core.edits import apply_edit
from clipedit.core.keys_values import site_locations
from clipedit.core.sites import resolve_site
from clipedit.errors import EditError, SettingsError


def test_locations_are_the_label_the_class_token_or_both(tiny_vit):
    site = resolve_site(tiny_vit.model, SITE.format(1))
    masks = _requests(2, seed=5).mask
    n = 1 + 8 * 8
    label = site_locations(site, masks, n, None, 0.0)
    only = site_locations(site, masks, n, None, 0.0, "only")
    both = site_locations(site, masks, n, None, 0.0, "also")
    assert label[:, 0].sum() == 0 and label[:, 1:].sum() > 0
    assert only[:, 0].tolist() == [1.0, 1.0] and only[:, 1:].sum() == 0
    assert torch.equal(both[:, 1:], label[:, 1:]) and both[:, 0].tolist() == [1.0, 1.0]


def test_a_class_token_edit_meets_the_blank_class_token_at_its_block(tiny_vit):
    model, req = tiny_vit.model, _requests(2, seed=5)
    layer = SITE.format(1)
    blank = _output(model, req.target, BLOCK.format(1))[:, 0]  # open_clip ViT: batch first, class token 0
    before = (_output(model, req.attacked, BLOCK.format(1))[:, 0] - blank).abs().max()
    edit = compute_rewrite(model, [req], RewriteHParams(layer=layer, rank=8, class_token="only"),
                           _statistics(model)(layer), model.encode_image)
    assert edit.meta["n_keys"] == 2  # one class token per exemplar
    apply_edit(model, edit)
    after = (_output(model, req.attacked, BLOCK.format(1))[:, 0] - blank).abs().max()
    edit.revert(model)
    assert after < 1e-4 * before


def test_class_token_needs_a_vit_site_and_a_known_mode(tiny_rn):
    site = resolve_site(tiny_rn.model, "visual.layer3.0.conv3")
    with pytest.raises(EditError, match="class token"):
        site_locations(site, torch.ones(1, 64, 64), 4, (2, 2), 0.0, "only")
    with pytest.raises((EditError, SettingsError)):
        RewriteHParams(class_token="first")


