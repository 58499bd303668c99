"""The closed-form edit from sums accumulated batch by batch equals the all-at-once solve to round-off."""
from __future__ import annotations

import pytest
import torch
from conftest import solve_closed_form
from test_rewrite import RN_SITE, VIT_SITE, _randomise_batchnorm

from clipedit.core import EditRequest, RewriteHParams, compute_rewrite, key_statistics, resolve_site
from clipedit.core.exemplar_sums import accumulate_exemplar_sums, directions_from_sums, solve_closed_form_from_sums
from clipedit.core.keys_values import collect_exemplars
from clipedit.core.subspace import edit_directions, regularise
from clipedit.errors import EditError


def _requests(n: int, seed: int) -> EditRequest:
    g = torch.Generator().manual_seed(seed)
    blank = torch.randn(n, 3, 64, 64, generator=g)
    attacked = blank.clone()
    mask = torch.zeros(n, 64, 64)
    for i in range(n):  # labels of different sizes and places
        y, x = 4 + 5 * i % 30, 6 + 7 * i % 28
        attacked[i, :, y:y + 16, x:x + 20] += 2 * torch.randn(3, 16, 20, generator=g)
        mask[i, y:y + 16, x:x + 20] = 1
    return EditRequest(attacked, blank, mask)


@pytest.fixture(params=["vit", "rn"])
def model_and_site(request, tiny_vit, tiny_rn):
    if request.param == "vit":
        return tiny_vit.model, VIT_SITE
    _randomise_batchnorm(tiny_rn.model)
    return tiny_rn.model, RN_SITE


def _stats_C(model, layer):
    g = torch.Generator().manual_seed(7)
    ref = [torch.randn(16, 3, 64, 64, generator=g) for _ in range(4)]
    stats = key_statistics(model, layer, lambda: ref, forward=model.encode_image)
    return regularise(stats.C, stats.n_keys, 1e-3)


@pytest.mark.parametrize("rank", [1, 6])
@pytest.mark.parametrize("max_kept_keys", [None, 0], ids=["svd-of-kept-keys", "eigh-of-sums"])
def test_batched_sums_give_the_all_at_once_update(model_and_site, rank, max_kept_keys):
    model, layer = model_and_site
    site = resolve_site(model, layer)
    req = _requests(8, seed=3)
    C = _stats_C(model, layer)

    ex = collect_exemplars(model, site, req.attacked, req.target, req.mask, model.encode_image)
    D_ref = edit_directions(ex.keys, C, rank, ex.weights)
    delta_ref = solve_closed_form(site, ex, D_ref) @ D_ref.T

    halves = (EditRequest(req.attacked[:5], req.target[:5], req.mask[:5]),
              EditRequest(req.attacked[5:], req.target[5:], req.mask[5:]))
    sums = accumulate_exemplar_sums(model, site, (h for h in halves), model.encode_image, batch_size=3,
                                    max_kept_keys=max_kept_keys)
    limit = site.key_dim if max_kept_keys is None else max_kept_keys
    assert (sums.weighted_keys is None) == (sums.n_keys > limit)
    D = directions_from_sums(sums, C, rank)
    delta = solve_closed_form_from_sums(sums, D) @ D.T

    assert sums.n_keys == ex.keys.shape[0] and sums.n_exemplars == 8
    assert torch.allclose(delta, delta_ref, rtol=1e-7, atol=1e-9 * delta_ref.abs().max())


def test_compute_rewrite_accepts_a_generator_and_matches_one_request(tiny_vit):
    model = tiny_vit.model
    req = _requests(6, seed=5)
    reference = [torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))]
    stats = key_statistics(model, VIT_SITE, lambda: reference, forward=model.encode_image)
    hp = RewriteHParams(layer=VIT_SITE, rank=4)
    whole = compute_rewrite(model, req, hp, stats, forward=model.encode_image)
    parts = (EditRequest(req.attacked[i:i + 2], req.target[i:i + 2], req.mask[i:i + 2]) for i in range(0, 6, 2))
    streamed = compute_rewrite(model, parts, hp, stats, forward=model.encode_image)
    assert streamed.meta["n_exemplars"] == whole.meta["n_exemplars"] == 6
    assert streamed.meta["n_keys"] == whole.meta["n_keys"]
    delta_whole = whole.lam.double() @ whole.directions.double().T
    delta_streamed = streamed.lam.double() @ streamed.directions.double().T
    assert torch.allclose(delta_streamed, delta_whole, rtol=1e-4, atol=1e-6 * delta_whole.abs().max())


def test_batches_with_empty_masks_add_nothing_but_all_empty_is_an_error(tiny_vit):
    model = tiny_vit.model
    site = resolve_site(model, VIT_SITE)
    req = _requests(4, seed=1)
    empty = EditRequest(req.attacked[:2], req.target[:2], torch.zeros_like(req.mask[:2]))
    alone = accumulate_exemplar_sums(model, site, [req], model.encode_image, batch_size=2)
    mixed = accumulate_exemplar_sums(model, site, [empty, req], model.encode_image, batch_size=2)
    assert mixed.n_keys == alone.n_keys and mixed.n_exemplars == 6
    assert torch.equal(mixed.keys_gram, alone.keys_gram)
    with pytest.raises(EditError, match="mask is empty"):
        accumulate_exemplar_sums(model, site, [empty], model.encode_image)
    with pytest.raises(EditError, match="no exemplars"):
        accumulate_exemplar_sums(model, site, [], model.encode_image)


class _Stream(__import__("io").StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "not-a-terminal"])
def test_progress_bars_show_on_a_terminal_only(tiny_vit, monkeypatch, tty):
    import sys

    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    model = tiny_vit.model
    req = _requests(4, seed=1)
    accumulate_exemplar_sums(model, resolve_site(model, VIT_SITE), [req], model.encode_image, batch_size=2)
    key_statistics(model, VIT_SITE, lambda: [req.target], forward=model.encode_image)
    text = stream.getvalue()
    if tty:
        assert f"exemplar passes ({VIT_SITE})" in text and "key statistics" in text
    else:
        assert text == ""
