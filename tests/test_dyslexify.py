"""Dyslexify as published: the class-token hook, its apply/revert, the greedy rule, and the search."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import run_error
from test_families import _load
from torch import nn

from clipedit.core import EditSet, apply_edit_set, load_edits, revert_edit_set, save_edits
from clipedit.core.heads import head_specs
from clipedit.core.hook_edits import ClsHeadAblation
from clipedit.core.nethook import get_module
from clipedit.errors import ClipeditError, EditError
from clipedit.methods.dyslexify import (
    DyslexifyHParams,
    class_token_sites,
    dyslexify,
    greedy_selection,
    rule_text,
    typographic_scores,
)
from clipedit.mini.world import CLASSNAMES, MiniWorld

ATTN = "visual.transformer.resblocks.0.attn"


def with_world(bundle):
    return dataclasses.replace(bundle, world=MiniWorld(), classnames=list(CLASSNAMES))


def attn_output(bundle, images, name=ATTN):
    """The attention module's output (batch, tokens, width) on ``images``."""
    store = []
    handle = get_module(bundle.model, name).register_forward_hook(lambda m, a, o: store.append(o[0].detach()))
    try:
        with torch.no_grad():
            bundle.encode_images(images)
    finally:
        handle.remove()
    return store[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_hook_equals_zeroing_the_head_at_the_class_token_only(batch_first):
    torch.manual_seed(0)
    holder = nn.Module()
    holder.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    with torch.no_grad():
        plain = holder.attn(x, x, x, need_weights=False)[0]
        edit = ClsHeadAblation("attn", [1, 3])
        edit.apply(holder)
        hooked = holder.attn(x, x, x, need_weights=False)[0]
        edit.revert(holder)
        # by hand: head h's result is the slice h*4:(h+1)*4 of the concatenated heads, which the output
        # projection reads through its columns; zeroing those columns removes the head at every token.
        w = holder.attn.out_proj.weight
        saved = w.clone()
        w[:, 4:8] = 0
        w[:, 12:16] = 0
        manual = holder.attn(x, x, x, need_weights=False)[0]
        w.copy_(saved)
    cls, rest = ((slice(None), 0), (slice(None), slice(1, None))) if batch_first else ((0,), (slice(1, None),))
    torch.testing.assert_close(hooked[cls], manual[cls], atol=1e-5, rtol=1e-5)
    assert torch.equal(hooked[rest], plain[rest])  # every other token untouched
    assert (hooked[cls] - plain[cls]).abs().max() > 1e-3  # and the class token did change


def test_hook_edit_on_a_vit_applies_reverts_and_round_trips(tiny_vit):
    images = torch.randn(2, 3, 64, 64)
    before = tiny_vit.encode_images(images).detach()
    plain_attn = attn_output(tiny_vit, images)
    weights = {k: v.clone() for k, v in tiny_vit.model.state_dict().items()}
    edit = ClsHeadAblation(ATTN, [1], {"method": "dyslexify"}, tiny_vit.model)
    edit.apply(tiny_vit.model)
    assert edit.is_applied(tiny_vit.model) and not edit.exportable
    hooked_attn = attn_output(tiny_vit, images)
    assert torch.equal(hooked_attn[:, 1:], plain_attn[:, 1:])
    assert not torch.allclose(tiny_vit.encode_images(images), before)
    assert all(torch.equal(v, weights[k]) for k, v in tiny_vit.model.state_dict().items())  # no weight changed
    with pytest.raises(EditError, match="already applied"):
        edit.apply(tiny_vit.model)
    edit.revert(tiny_vit.model)
    assert torch.equal(tiny_vit.encode_images(images), before)
    with pytest.raises(EditError, match="not applied"):
        edit.revert(tiny_vit.model)
    again = ClsHeadAblation.from_tensors(edit.layer, edit.to_tensors(), edit.meta)
    assert again.heads == [1] and again.digest() == edit.digest()
    assert ClsHeadAblation(ATTN, [0]).digest() != edit.digest()
    assert "needs clipedit's hooks" in edit.export_error()
    with pytest.raises(EditError, match="has 2 heads"):
        ClsHeadAblation(ATTN, [5]).apply(tiny_vit.model)
    with pytest.raises(EditError, match="not a multi-head attention"):
        ClsHeadAblation("visual.conv1", [0]).apply(tiny_vit.model)


def test_dyslexify_refuses_a_resnet_in_one_line(tiny_rn):
    with pytest.raises(ClipeditError, match="class token"):
        class_token_sites(tiny_rn)
    assert [s for s, _ in class_token_sites_of_tiny_vit()] == [f"visual.transformer.resblocks.{i}.attn"
                                                               for i in range(2)]


def class_token_sites_of_tiny_vit():
    from clipedit.models import load_model

    return class_token_sites(load_model("tiny-vit", device="cpu"))


# -- the published greedy rule on a synthetic sequence ------------------------------------------------------
def run(table, n=1000, **kw):
    """``table``: candidate -> (clean, typo) counts once it is added (independent of the others here)."""
    def evaluate(heads):
        if not heads:
            return 900, 300
        return table[heads[-1]]
    return greedy_selection(list(table), evaluate, n, **kw)


def test_greedy_keeps_a_one_scene_rise_and_skips_no_rise():
    kept, steps, base = run({"a": (900, 301), "b": (900, 301), "c": (899, 302)})
    # a: +1 scene (= eps at n=1000) kept; b: no rise over a, skipped; c: +1 over a, kept
    assert kept == ["a", "c"] and [s["skipped"] for s in steps] == [False, True, False]
    assert base == {"clean_acc": 0.9, "typo_acc": 0.3, "n": 1000}
    kept, _, _ = run({"a": (900, 301)}, n=500)  # eps*n = 0.5 scene: a one-scene rise is needed and enough
    assert kept == ["a"]


def test_greedy_stops_after_more_than_ten_skips_in_a_row():
    table = {f"s{i}": (900, 300) for i in range(12)} | {"late": (900, 400)}
    kept, steps, _ = run(table)
    assert kept == []  # the 12th candidate is evaluated, the counter (11 > 10) stops the search there
    assert len(steps) == 12 and steps[-1].get("stopped") == "patience"
    kept, _, _ = run({f"s{i}": (900, 300) for i in range(10)} | {"late": (900, 400)})
    assert kept == ["late"]  # after 10 skips the search goes on


def test_greedy_keeps_the_head_that_breaks_the_clean_budget_then_stops():
    kept, steps, _ = run({"a": (895, 350), "b": (880, 360), "c": (880, 400)})
    assert kept == ["a", "b"]  # b costs 2 points clean (> 1): kept, and the search ends
    assert steps[-1]["stopped"] == "clean budget" and len(steps) == 2
    assert "10 of 1000 scenes" in rule_text(DyslexifyHParams(), 1000)
    assert ">= 1 of 1000 scenes" in rule_text(DyslexifyHParams(), 1000)


def test_dyslexify_searches_in_score_order_and_leaves_hooks_on(tiny_vit):
    bundle = with_world(tiny_vit)
    images = torch.randn(2, 3, 64, 64)
    before = bundle.encode_images(images).detach()
    result = dyslexify(bundle, DyslexifyHParams(n_score=6, n_val=12, patience=1))
    scores = [s["score"] for s in result.steps]
    assert scores == sorted(scores, reverse=True)
    assert set(result.scores) == {f"visual.transformer.resblocks.{i}.attn" for i in range(2)}
    assert all(0 < v < 1 for vs in result.scores.values() for v in vs)
    kept = [tuple(s["head"]) for s in result.steps if not s["skipped"]]
    assert kept == result.heads
    assert sum(len(m.heads) for m in result.members) == len(result.heads)
    assert all(m.is_applied(bundle.model) for m in result.members)
    for m in result.members:
        m.revert(bundle.model)
    assert torch.equal(bundle.encode_images(images), before)


def test_typographic_scores_are_one_when_the_band_is_the_whole_grid(tiny_vit):
    sites = class_token_sites(tiny_vit)
    images = torch.randn(3, 3, 64, 64)
    grid = tiny_vit.image_module.grid_size[0]
    full = typographic_scores(tiny_vit, sites, images, band_rows=grid)
    for name, _ in sites:
        torch.testing.assert_close(full[name], torch.ones_like(full[name]))
    part = typographic_scores(tiny_vit, sites, images, band_rows=1)
    assert all(((part[n] > 0) & (part[n] < 1)).all() for n, _ in sites)


# -- where heads write through a projection module (clipedit.core.heads): timm ViT / EVA, HF CLIP ----------
def proj_input(model, name, images_or_x, run):
    """The input of module ``name`` (batch, tokens, width), seen after any earlier pre-hook."""
    seen: list = []
    handle = get_module(model, name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        with torch.no_grad():
            out = run(images_or_x)
    finally:
        handle.remove()
    return seen[0], out


def timm_vit():
    """A timm ViT with a class token at toy width (random init, no download)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=4, num_classes=0).eval()


def test_pre_hook_zeroes_the_heads_slice_at_the_class_token_only():
    """timm ``attn.proj``: head h's columns of the projection input are zero at token 0, every other entry
    and the projection's output at every other token are bit-identical; the output at token 0 is the
    projection of the zeroed input (by hand)."""
    vit = timm_vit()
    x = torch.randn(2, 3, 32, 32)
    proj = "blocks.0.attn.proj"
    plain_in, plain = proj_input(vit, proj, x, vit.forward_features)
    edit = ClsHeadAblation("blocks.0.attn", [1, 3])
    edit.apply(vit)
    hooked_in, hooked = proj_input(vit, proj, x, vit.forward_features)
    out_seen: list = []
    handle = get_module(vit, proj).register_forward_hook(lambda m, a, o: out_seen.append(o.detach()))
    with torch.no_grad():
        vit.forward_features(x)
    handle.remove()
    edit.revert(vit)
    hd = 32 // 4
    manual = plain_in.clone()
    manual[:, 0, hd:2 * hd] = 0
    manual[:, 0, 3 * hd:4 * hd] = 0
    assert torch.equal(hooked_in, manual)  # exactly the slices at the class token, nothing else
    assert plain_in[:, 0, hd:2 * hd].abs().sum() > 0
    w, b = get_module(vit, proj).weight, get_module(vit, proj).bias
    torch.testing.assert_close(out_seen[0], torch.nn.functional.linear(manual, w, b))
    with torch.no_grad():
        assert torch.equal(vit.forward_features(x), plain)  # reverted: bit-identical
    assert not torch.allclose(hooked, plain)


def test_timm_attention_row_is_the_softmax_of_its_q_and_k():
    from clipedit.methods.head_ablation import query_row_hook

    vit = timm_vit()
    attn = vit.blocks[0].attn
    x = torch.randn(2, 17, 32)
    store: list = []
    handle = attn.register_forward_hook(query_row_hook(store, attn), with_kwargs=True)
    with torch.no_grad():
        attn(x)
        handle.remove()
        q, k, _ = attn.qkv(x).reshape(2, 17, 3, 4, 8).permute(2, 0, 3, 1, 4)
        manual = (q[:, :, :1] @ k.transpose(-1, -2) * attn.scale).softmax(-1)[:, :, 0]
    torch.testing.assert_close(store[0], manual)
    assert attn.fused_attn == vit.blocks[1].attn.fused_attn  # the fused flag is restored


@pytest.mark.parametrize("spec", ["tiny-eva:none", "hf-clip"])
@pytest.mark.slow
def test_hook_edit_on_a_projection_tower_applies_reverts_bit_exactly(spec, hf_folders, tmp_path):
    bundle = _load(f"hf:{hf_folders['clip']}:none" if spec == "hf-clip" else spec)
    sites = class_token_sites(bundle)
    name = sites[0][0]
    module = get_module(bundle.model, name)
    norm = getattr(module, "norm", None)  # EVA02: the result is normed before attn.proj: the hook sits there
    target = f"{name}.norm" if isinstance(norm, nn.LayerNorm) else next(
        s.proj for s in head_specs(bundle.image_module, bundle.image_prefix) if s.attention == name)
    images = torch.randn(2, 3, 64, 64)
    plain_in, before = proj_input(bundle.model, target, images, bundle.encode_images)
    weights = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    edit = ClsHeadAblation(name, [1], model=bundle.model)
    edit.apply(bundle.model)
    hooked_in, after = proj_input(bundle.model, target, images, bundle.encode_images)
    hd = plain_in.shape[-1] // sites[0][1]
    manual = plain_in.clone()
    manual[:, 0, hd:2 * hd] = 0
    assert torch.equal(hooked_in, manual)
    assert not torch.equal(after, before)
    assert all(torch.equal(v, weights[k]) for k, v in bundle.model.state_dict().items())
    with pytest.raises(EditError, match="has 2 heads"):
        ClsHeadAblation(name, [2]).apply(bundle.model)
    edit.revert(bundle.model)
    with torch.no_grad():
        assert torch.equal(bundle.encode_images(images), before)
    # through an edit file: the same hooks, bit-identical outputs on and off
    edits = load_edits(save_edits(tmp_path / "dyslexify.safetensors", EditSet.of([edit])))
    apply_edit_set(bundle.model, edits)
    with torch.no_grad():
        assert torch.equal(bundle.encode_images(images), after)
    revert_edit_set(bundle.model, edits)
    with torch.no_grad():
        assert torch.equal(bundle.encode_images(images), before)


@pytest.mark.parametrize("spec", ["tiny-eva:none", "hf-clip"])
def test_dyslexify_runs_on_a_timm_tower_and_hf_clip(spec, hf_folders):
    bundle = with_world(_load(f"hf:{hf_folders['clip']}:none" if spec == "hf-clip" else spec))
    images = torch.randn(2, 3, 64, 64)
    before = bundle.encode_images(images).detach()
    result = dyslexify(bundle, DyslexifyHParams(n_score=4, n_val=8, patience=0))
    assert set(result.scores) == {n for n, _ in class_token_sites(bundle)}
    assert all(0 < v < 1 for vs in result.scores.values() for v in vs)
    assert [s["score"] for s in result.steps] == sorted((s["score"] for s in result.steps), reverse=True)
    assert all(m.is_applied(bundle.model) for m in result.members)
    for m in result.members:
        m.revert(bundle.model)
    assert torch.equal(bundle.encode_images(images), before)


@pytest.mark.slow
def test_dyslexify_and_the_edit_refuse_siglip(hf_folders):
    for spec in ("tiny-siglip:none", f"hf:{hf_folders['siglip']}:none"):
        with pytest.raises(ClipeditError, match="has none \\(its blocks pool no class token"):
            class_token_sites(_load(spec))
        with pytest.raises(EditError, match="no class token"):
            b = _load(spec)
            name = next(s.attention for s in head_specs(b.image_module, b.image_prefix) if not s.pooling)
            ClsHeadAblation(name, [0]).apply(b.model)


@pytest.mark.slow
def test_defend_refuses_dyslexify_on_siglip_in_one_error_line(capsys, tmp_path):
    line = run_error(capsys, "defend", "--model", "tiny-siglip:none", "--text", "ipod", "--method", "dyslexify",
                     "--no-eval", "--out", str(tmp_path / "run"))
    assert "class token" in line and "pool no class token" in line
    assert not (tmp_path / "run").exists()


def test_a_tower_without_attention_is_not_sent_to_head_ablation(tiny_rn):
    """A tower with no attention at all is offered only methods that apply; an attention pool (a ResNet
    CLIP's) is offered head ablation, which reaches its heads."""
    from types import SimpleNamespace

    from clipedit.methods.dyslexify import class_token_sites

    convs = SimpleNamespace(image_module=nn.Sequential(nn.Conv2d(3, 4, 3)), image_prefix="", name="convnet")
    with pytest.raises(ClipeditError, match="has none") as info:
        class_token_sites(convs)
    assert "head-ablation" not in str(info.value) and "--method edit" in str(info.value)
    with pytest.raises(ClipeditError, match="use head-ablation-weights"):
        class_token_sites(tiny_rn)
