"""The attention value projection as a rewrite site (``<attn>.v_proj``), multi-site single-word edits and
``keep_targets`` (keeping the blank exemplars as they are in the closed-form solve)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_error, run_ok, solve_closed_form
from safetensors.torch import load_file
from test_exemplar_sums import _requests, _stats_C

from clipedit.core import (
    RewriteHParams,
    apply_edit,
    compute_rewrite,
    key_statistics,
    load_edit,
    resolve_site,
    revert_edit,
    save_edits,
)
from clipedit.core.edit_sets import load_edits
from clipedit.core.exemplar_sums import accumulate_exemplar_sums, directions_from_sums, solve_closed_form_from_sums
from clipedit.core.keys_values import collect_exemplars
from clipedit.core.nethook import Trace
from clipedit.core.sites import AttentionValueSite, candidate_sites
from clipedit.core.subspace import edit_directions
from clipedit.errors import EditError
from clipedit.models import save_state_dict

V_SITE = "visual.transformer.resblocks.0.attn.v_proj"
ATTN = "visual.transformer.resblocks.0.attn"


def test_value_site_is_the_value_rows_of_the_packed_projection(tiny_vit):
    model = tiny_vit.model
    site = resolve_site(model, V_SITE)
    mha = model.visual.transformer.resblocks[0].attn
    e = mha.embed_dim
    assert isinstance(site, AttentionValueSite) and site.hook_name == ATTN and site.key_dim == e
    assert site.weight.data_ptr() == mha.in_proj_weight[2 * e:].data_ptr() and site.weight.shape == (e, e)
    assert torch.equal(site.bias, mha.in_proj_bias[2 * e:])
    names = candidate_sites(model)
    assert names.index(V_SITE) == names.index("visual.transformer.resblocks.0.mlp.c_proj") - 1


def test_value_site_output_is_what_the_attention_mixes(tiny_vit):
    """The site's output (W_v x + b_v of the traced value input) is the value torch's attention computes."""
    model = tiny_vit.model
    site = resolve_site(model, V_SITE)
    mha = model.visual.transformer.resblocks[0].attn
    x = torch.randn(2, 3, 64, 64)
    with Trace(model, ATTN, retain_input=True) as tr:
        model.encode_image(x)
    value_in = site.input_of(tr)
    # torch's own split of the packed projection: q, k, v = in_projection_packed(...)
    q, k, v = F._in_projection_packed(value_in, value_in, value_in, mha.in_proj_weight, mha.in_proj_bias)
    assert torch.allclose(site.output_of(tr), v, atol=1e-6)
    assert site.keys(value_in).shape == (2, value_in.shape[1], mha.embed_dim)


def test_full_rank_value_edit_reproduces_the_blank_values_and_touches_only_v_rows(tiny_vit):
    """Few keys, full rank: the least squares is exact, so the attacked tokens' values become the blank's."""
    model = copy.deepcopy(tiny_vit.model)
    site = resolve_site(model, V_SITE)
    req = _requests(1, seed=5)
    stats = key_statistics(model, V_SITE, lambda: [torch.randn(4, 3, 64, 64)], forward=model.encode_image)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edit = compute_rewrite(model, req, RewriteHParams(layer=V_SITE, rank=site.key_dim), stats,
                           forward=model.encode_image)
    ex_before = collect_exemplars(model, site, req.attacked, req.target, req.mask, model.encode_image)
    assert ex_before.keys.shape[0] < site.key_dim  # fewer keys than dimensions: an exact fit exists
    apply_edit(model, edit)
    after = model.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == [f"{ATTN}.in_proj_weight"]
    e = site.key_dim
    assert torch.equal(after[f"{ATTN}.in_proj_weight"][:2 * e], before[f"{ATTN}.in_proj_weight"][:2 * e])
    w, b = site.weight.double(), site.bias.double()
    got = ex_before.keys.double() @ w.T + b
    assert torch.allclose(got, ex_before.values.double(), atol=1e-3)
    revert_edit(model, edit)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_value_edit_file_round_trips(tiny_vit, tmp_path):
    model = copy.deepcopy(tiny_vit.model)
    req = _requests(4, seed=2)
    stats = key_statistics(model, V_SITE, lambda: [torch.randn(4, 3, 64, 64)], forward=model.encode_image)
    edit = compute_rewrite(model, req, RewriteHParams(layer=V_SITE, rank=4), stats, forward=model.encode_image)
    path = save_edits(tmp_path / "v.safetensors", edit)
    original = model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    loaded = load_edit(path)
    apply_edit(model, loaded)
    assert not torch.equal(model.visual.transformer.resblocks[0].attn.in_proj_weight, original)
    revert_edit(model, loaded)
    assert torch.equal(model.visual.transformer.resblocks[0].attn.in_proj_weight, original)


def test_optimize_solver_refuses_a_part_of_a_weight(tiny_vit):
    model = tiny_vit.model
    req = _requests(2, seed=1)
    stats = key_statistics(model, V_SITE, lambda: [torch.randn(4, 3, 64, 64)], forward=model.encode_image)
    with pytest.raises(EditError, match="closed-form"):
        compute_rewrite(model, req, RewriteHParams(layer=V_SITE, rank=2, solver="optimize", steps=1), stats,
                        forward=model.encode_image)


@pytest.mark.parametrize("layer", [V_SITE, "visual.transformer.resblocks.0.mlp.c_proj"])
def test_keep_targets_shrinks_the_change_at_the_blank_keys(tiny_vit, layer):
    """β > 0 fits the blank exemplars' keys to their own outputs too: the change there shrinks as β grows,
    β = 0 is the paper's solve, and the batched sums give the all-at-once answer."""
    model = tiny_vit.model
    site = resolve_site(model, layer)
    req = _requests(6, seed=4)
    C = _stats_C(model, layer)
    ex = collect_exemplars(model, site, req.attacked, req.target, req.mask, model.encode_image)
    D = edit_directions(ex.keys, C, 4, ex.weights)
    T = ex.target_keys.double()
    changes = []
    for beta in (0.0, 1.0, 10.0):
        lam = solve_closed_form(site, ex, D, keep_targets=beta)
        changes.append(float((T @ D @ lam.T).norm()))
    assert changes[0] > changes[1] > changes[2]
    sums = accumulate_exemplar_sums(model, site, [req], model.encode_image, batch_size=4, with_targets=True)
    assert accumulate_exemplar_sums(model, site, [req], model.encode_image).target_gram is None
    for beta in (0.0, 1.0):
        assert torch.allclose(solve_closed_form_from_sums(sums, D, beta), solve_closed_form(site, ex, D, beta),
                              rtol=1e-6, atol=1e-8)
    assert torch.allclose(directions_from_sums(sums, C, 4).abs(), D.abs(), atol=1e-6)


def test_keep_targets_must_be_a_non_negative_closed_form_weight():
    with pytest.raises(EditError, match="keep_targets"):
        RewriteHParams(layer=V_SITE, keep_targets=-1)
    with pytest.raises(EditError, match="closed-form"):
        RewriteHParams(layer=V_SITE, keep_targets=1, solver="optimize")


@pytest.mark.slow
def test_cli_defends_over_several_sites_and_reverts(capsys, tmp_path, tiny_vit):
    base = save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())
    out = tmp_path / "d"
    sites = f"{V_SITE}+visual.transformer.resblocks.0.mlp.c_proj"
    text = run_ok(capsys, "defend", "--model", "tiny-vit", "--checkpoint", str(base), "--text", "ipod", "--no-eval",
                  "--renders", "4", "--rank", "2", "--layer", sites, "--keep-blank", "1", "--out", str(out))
    assert f"edit of {sites} against ipod" in text
    edit_set = load_edits(out / "edit.safetensors")
    assert [e.layer for e in edit_set.edits] == sites.split("+")
    assert all(e.meta["hparams"]["keep_targets"] == 1 and e.rank == 2 for e in edit_set.edits)
    record = json.loads((out / "results.json").read_text())
    assert record["layer"] == sites and record["hparams"]["keep_targets"] == 1
    reverted = tmp_path / "reverted.safetensors"
    run_ok(capsys, "revert", str(out / "edit.safetensors"), "--model", "tiny-vit", "--checkpoint",
           str(out / "model.safetensors"), "--out", str(reverted))
    original, restored = load_file(str(base)), load_file(str(reverted))
    assert original.keys() == restored.keys() and all(torch.equal(original[k], restored[k]) for k in original)


def test_cli_refuses_several_sites_with_the_optimizer(capsys, tmp_path):
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--text", "ipod", "--no-eval", "--solver", "optimize",
                     "--layer", f"{V_SITE}+visual.transformer.resblocks.0.mlp.c_proj", "--out", str(tmp_path / "d"))
    assert "closed form" in line and not (tmp_path / "d").exists()


@pytest.mark.filterwarnings("ignore:only .* reference keys")  # small reference set on purpose
def test_sweep_scores_a_value_site_and_leaves_the_model(tiny_vit, cache_dir):
    from test_sweep import SMALL, with_world

    from clipedit.selection.sweep import SweepSettings, sweep

    bundle = with_world(tiny_vit)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    result = sweep(bundle, "ipod", SweepSettings(sites=[V_SITE], ranks=[1, 2], n_val=6, n_signs=0), SMALL)
    assert [(r["site"], r["rank"]) for r in result.rows] == [(V_SITE, 1), (V_SITE, 2)]
    assert all(0.0 <= r["text_acc"] <= 1.0 for r in result.rows)
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


@pytest.mark.slow
def test_query_and_key_rows_are_refused_in_one_line(capsys):
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--text", "ipod", "--no-eval",
                     "--layer", "visual.transformer.resblocks.0.attn.q_proj")
    assert "only the values can be rewritten" in line and "attn.v_proj" in line


def test_finetune_local_refuses_a_value_site(capsys, tmp_path):
    line = run_error(capsys, "defend", "--model", "tiny-vit", "--text", "ipod", "--no-eval", "--renders", "2",
                     "--method", "finetune-local", "--layer", V_SITE, "--out", str(tmp_path / "d"))
    assert "finetune-local" in line and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_defense_save_writes_an_edit_or_an_edit_set(tiny_vit, tmp_path):
    from test_sweep import with_world

    from clipedit.core.edit_sets import load_edits
    from clipedit.defenses.typographic import defend
    from clipedit.errors import ClipeditError
    from clipedit.methods.finetune import FinetuneHParams
    from clipedit.settings.config import DefenseConfig

    sites = (V_SITE, "visual.transformer.resblocks.0.mlp.c_proj")
    for config, n_edits in ((DefenseConfig(hparams=RewriteHParams(layer=V_SITE, rank=2), renders=2), 1),
                            (DefenseConfig(hparams=RewriteHParams(layer=V_SITE, rank=2), renders=2, sites=sites), 2)):
        bundle = with_world(tiny_vit)
        bundle.model = copy.deepcopy(bundle.model)
        path = defend(bundle, "ipod", config).save(tmp_path / f"{n_edits}.safetensors")
        assert len(load_edits(path).edits) == n_edits
    bundle = with_world(tiny_vit)
    bundle.model = copy.deepcopy(bundle.model)
    finetuned = defend(bundle, "ipod", DefenseConfig(method="finetune-global", renders=2,
                                                    hparams=FinetuneHParams(steps=1)))
    with pytest.raises(ClipeditError, match="no edit to save"):
        finetuned.save(tmp_path / "ft.safetensors")
