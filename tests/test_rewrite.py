"""The rewrite core on tiny random-init CLIPs: exactness, the rank-r subspace, solvers, edits, errors."""
from __future__ import annotations

import copy

import pytest
import torch

from clipedit.core import (
    EditRequest,
    RewriteHParams,
    apply_edit,
    apply_rewrite,
    compute_rewrite,
    key_statistics,
    load_edit,
    resolve_site,
    revert_edit,
    save_edits,
)
from clipedit.core import statistics as stats_module
from clipedit.core.keys_values import collect_exemplars
from clipedit.core.nethook import Trace
from clipedit.errors import EditError, SiteError

VIT_SITE = "visual.transformer.resblocks.0.mlp.c_proj"
RN_SITE = "visual.layer2.0.conv3"


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    # open_clip zero-initialises bn3, which would make every conv3 edit a no-op.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.running_var.data = 0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g)
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=g)


def _pair(batch: int = 2, seed: int = 0) -> EditRequest:
    g = torch.Generator().manual_seed(seed)
    blank = torch.randn(batch, 3, 64, 64, generator=g)
    attacked = blank.clone()
    attacked[:, :, 16:32, 16:40] += 2 * torch.randn(batch, 3, 16, 24, generator=g)
    mask = torch.zeros(batch, 64, 64)
    mask[:, 16:32, 16:40] = 1
    return EditRequest(attacked, blank, mask)


def _stats(model, layer, n_batches=4):
    g = torch.Generator().manual_seed(7)
    ref = [torch.randn(16, 3, 64, 64, generator=g) for _ in range(n_batches)]
    return key_statistics(model, layer, lambda: ref, forward=model.encode_image)


def _block_output(model, layer, images):
    site = resolve_site(model, layer)
    with Trace(model, site.block_name, stop=True) as tr:
        model.encode_image(images)
    return site.locations(tr.output)


@pytest.fixture(params=["vit", "rn"])
def model_and_site(request, tiny_vit, tiny_rn):
    if request.param == "vit":
        return tiny_vit.model, VIT_SITE
    _randomise_batchnorm(tiny_rn.model)
    return tiny_rn.model, RN_SITE


def test_full_rank_edit_reproduces_the_blank_block_output(model_and_site):
    model, layer = model_and_site
    req = _pair()
    st = _stats(model, layer)
    edited, orig, edit = apply_rewrite(model, req, RewriteHParams(layer=layer, rank=10_000), st,
                                       forward=model.encode_image, copy=True)
    sel = collect_exemplars(model, resolve_site(model, layer), req.attacked, req.target, req.mask,
                            model.encode_image).location_mask > 0
    blank = _block_output(model, layer, req.target)
    before = (_block_output(model, layer, req.attacked) - blank)[sel].abs().max()
    after = (_block_output(edited, layer, req.attacked) - blank)[sel].abs().max()
    assert before > 1e-3
    assert after < 1e-3 * max(1.0, float(before))
    assert edit.rank == int(sel.sum())  # one direction per exemplar key at full rank
    assert torch.equal(orig[f"{layer}.weight"], resolve_site(model, layer).weight)  # copy=True left it alone


def test_update_is_rank_r_and_ignores_keys_off_its_directions(model_and_site):
    model, layer = model_and_site
    st = _stats(model, layer)
    edit = compute_rewrite(model, _pair(), RewriteHParams(layer=layer, rank=3), st, forward=model.encode_image)
    delta = edit.lam.double() @ edit.directions.double().T
    assert torch.linalg.matrix_rank(delta) == 3
    assert torch.linalg.matrix_rank(edit.delta().reshape(delta.shape).double(), rtol=1e-5) == 3
    D = edit.directions.double()
    k = torch.randn(D.shape[0], 5, dtype=torch.float64)
    k_off = k - D @ torch.linalg.lstsq(D, k).solution  # components along D removed
    assert (delta @ k_off).abs().max() < 1e-4 * (delta @ k).abs().max()


def test_typical_keys_are_barely_touched(tiny_vit):
    model = tiny_vit.model
    req = _pair()
    st = _stats(model, VIT_SITE)
    edit = compute_rewrite(model, req, RewriteHParams(layer=VIT_SITE, rank=4), st, forward=model.encode_image)
    site = resolve_site(model, VIT_SITE)
    ex = collect_exemplars(model, site, req.attacked, req.target, req.mask, model.encode_image)
    delta = edit.delta()
    with Trace(model, VIT_SITE, retain_input=True, stop=True) as tr:
        model.encode_image(torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
    typical = site.keys(tr.input).reshape(-1, site.key_dim)
    on_exemplars = (ex.keys @ delta.T).norm(dim=1).mean()
    on_typical = (typical @ delta.T).norm(dim=1).mean()
    assert on_typical < 0.5 * on_exemplars


def test_optimize_solver_lowers_the_masked_loss_within_the_subspace(tiny_vit):
    model = tiny_vit.model
    req = _pair()
    st = _stats(model, VIT_SITE)
    hp = RewriteHParams(layer=VIT_SITE, rank=4, solver="optimize", steps=60, lr=1e-2, project_every=5)
    w0 = resolve_site(model, VIT_SITE).weight.detach().clone()
    edit = compute_rewrite(model, req, hp, st, forward=model.encode_image)
    assert torch.equal(resolve_site(model, VIT_SITE).weight, w0)  # the solver leaves the model alone
    sel = collect_exemplars(model, resolve_site(model, VIT_SITE), req.attacked, req.target, req.mask,
                            model.encode_image).location_mask > 0
    blank = _block_output(model, VIT_SITE, req.target)
    err_before = (_block_output(model, VIT_SITE, req.attacked) - blank)[sel].pow(2).mean()
    edited = copy.deepcopy(model)
    apply_edit(edited, edit)
    err_after = (_block_output(edited, VIT_SITE, req.attacked) - blank)[sel].pow(2).mean()
    assert err_after < 0.95 * err_before
    assert edit.lam.shape == (w0.shape[0], 4)


def test_revert_is_bit_exact_and_edits_compose_in_order(tiny_vit, tmp_path):
    model = tiny_vit.model
    w0 = resolve_site(model, VIT_SITE).weight.detach().clone()
    st = _stats(model, VIT_SITE)
    _, _, first = apply_rewrite(model, _pair(seed=1), RewriteHParams(layer=VIT_SITE, rank=2), st,
                                forward=model.encode_image)
    _, _, second = apply_rewrite(model, _pair(seed=2), RewriteHParams(layer=VIT_SITE, rank=2), st,
                                 forward=model.encode_image)
    save_edits(tmp_path / "first.safetensors", first)
    first = load_edit(tmp_path / "first.safetensors")
    with pytest.raises(EditError, match="revert that first"):
        revert_edit(model, first)
    revert_edit(model, second)
    revert_edit(model, first)
    assert torch.equal(resolve_site(model, VIT_SITE).weight, w0)


def test_edit_file_for_another_model_is_refused(tiny_vit, tiny_rn, tmp_path):
    st = _stats(tiny_vit.model, VIT_SITE)
    edit = compute_rewrite(tiny_vit.model, _pair(), RewriteHParams(layer=VIT_SITE), st,
                           forward=tiny_vit.model.encode_image, meta={"model": "tiny-vit"})
    path = save_edits(tmp_path / "e.safetensors", edit)
    with pytest.raises(EditError, match="tiny-vit"):
        apply_edit(tiny_rn.model, load_edit(path))
    other = copy.deepcopy(tiny_vit.model)
    with torch.no_grad():
        resolve_site(other, VIT_SITE).weight.add_(1.0)
    with pytest.raises(EditError, match="other weights"):
        apply_edit(other, load_edit(path))


def test_nan_edit_is_refused(tiny_vit, tmp_path):
    st = _stats(tiny_vit.model, VIT_SITE)
    edit = compute_rewrite(tiny_vit.model, _pair(), RewriteHParams(layer=VIT_SITE), st,
                           forward=tiny_vit.model.encode_image)
    edit.lam[0, 0] = float("nan")
    with pytest.raises(EditError, match="NaN"):
        save_edits(tmp_path / "e.safetensors", edit)
    assert not any(tmp_path.iterdir())


def test_unknown_layer_and_unsupported_module(tiny_vit):
    with pytest.raises(SiteError, match="no module named"):
        resolve_site(tiny_vit.model, "visual.transformer.resblocks.9.mlp.c_proj")
    with pytest.raises(SiteError, match="Linear or Conv2d"):
        resolve_site(tiny_vit.model, "visual.transformer.resblocks.0.ln_2")


def test_bad_exemplars(tiny_vit):
    model = tiny_vit.model
    site = resolve_site(model, VIT_SITE)
    req = _pair()
    with pytest.raises(EditError, match="mask is empty"):
        collect_exemplars(model, site, req.attacked, req.target, torch.zeros_like(req.mask), model.encode_image)
    with pytest.raises(EditError, match="differ in size"):
        collect_exemplars(model, site, req.attacked, req.target[:, :, :32], req.mask, model.encode_image)


def test_too_few_reference_keys_warns_and_regularises(tiny_vit):
    model = tiny_vit.model
    st = _stats(model, VIT_SITE, n_batches=1)
    st.n_keys = 10  # pretend: fewer keys than the 256 key dimensions
    with pytest.warns(RuntimeWarning, match="C is singular"):
        edit = compute_rewrite(model, _pair(), RewriteHParams(layer=VIT_SITE), st, forward=model.encode_image)
    assert torch.isfinite(edit.lam).all()


def test_key_statistics_are_cached_by_their_arguments(tiny_vit, monkeypatch):
    model = tiny_vit.model
    calls = []
    real = stats_module.key_second_moment
    monkeypatch.setattr(stats_module, "key_second_moment", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = [torch.randn(4, 3, 64, 64)]
    a = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref-a", forward=model.encode_image)
    b = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref-a", forward=model.encode_image)
    key_statistics(model, VIT_SITE, lambda: ref, data_key="ref-b", forward=model.encode_image)
    assert len(calls) == 2
    assert torch.equal(a.C, b.C) and a.n_keys == b.n_keys == 4 * 65
    assert torch.allclose(a.C, a.C.T)


def test_default_layers(tiny_vit, tiny_rn):
    from clipedit.settings.defaults import default_layer

    assert default_layer(tiny_vit) == VIT_SITE
    assert default_layer(tiny_rn) == "visual.layer3.0.conv3"
    resolve_site(tiny_rn.model, default_layer(tiny_rn))


def test_trace_removes_its_hooks_even_on_error(tiny_vit):
    module = tiny_vit.model.visual.transformer.resblocks[0]
    with pytest.raises(RuntimeError):
        with Trace(module):
            raise RuntimeError("boom")
    assert not module._forward_hooks


def test_an_unknown_layer_names_the_modules_that_exist(tiny_vit):
    from clipedit.core.nethook import get_module
    from clipedit.errors import SiteError

    with pytest.raises(SiteError, match=r"'visual.transformer.resblocks' has: 0-1$"):
        get_module(tiny_vit.model, "visual.transformer.resblocks.7.mlp.c_proj")
    with pytest.raises(SiteError, match="top level has: visual, transformer"):
        get_module(tiny_vit.model, "nonsense")
