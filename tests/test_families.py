"""Every family beyond open_clip's own towers, on real architectures at toy width built from configs (no
download): open_clip ``TimmModel`` towers (a SigLIP-style timm ViT with an attention pool, EVA02, ConvNeXt)
and Hugging Face ``CLIPModel`` / ``SiglipModel``. Site resolution, keys and values, a closed-form edit,
bit-exact revert, head specs, export, one-line errors, and ``audit`` / ``defend`` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers  # the hf extra, part of dev
from conftest import run_cli, run_error, run_ok
from PIL import Image
from test_exemplar_sums import _requests

from clipedit.core import RewriteHParams, apply_edit, compute_rewrite, key_statistics, revert_edit
from clipedit.core.heads import head_specs
from clipedit.core.keys_values import collect_exemplars
from clipedit.core.nethook import Trace, TraceDict, get_module
from clipedit.core.sites import QKVValueSite, candidate_sites, resolve_site
from clipedit.errors import ModelLoadError
from clipedit.models import load_model, save_state_dict
from clipedit.models.hf import export_pretrained
from clipedit.settings.defaults import defaults_for


def _load(spec: str):
    torch.manual_seed(0)
    return load_model(spec, device="cpu")


# family -> (spec maker, architecture key, default layer, value site of block 0, mlp site of block 0)
FAMILIES = {
    "timm-siglip": (lambda f: "tiny-siglip:none", "TimmModel/VisionTransformer", "visual.trunk.blocks.0.mlp.fc2",
                    "visual.trunk.blocks.0.attn.v_proj", "visual.trunk.blocks.0.mlp.fc2"),
    "timm-eva": (lambda f: "tiny-eva:none", "TimmModel/Eva", "visual.trunk.blocks.0.mlp.fc2",
                 "visual.trunk.blocks.0.attn.v_proj", "visual.trunk.blocks.0.mlp.fc2"),
    "convnext": (lambda f: "tiny-convnext:none", "TimmModel/ConvNeXt", "visual.trunk.stages.2.blocks.1.mlp.fc2",
                 None, "visual.trunk.stages.2.blocks.1.mlp.fc2"),
    "hf-clip": (lambda f: f"hf:{f['clip']}:none", "CLIPVisionModel", "vision_model.encoder.layers.0.mlp.fc2",
                "vision_model.encoder.layers.0.self_attn.v_proj", "vision_model.encoder.layers.0.mlp.fc2"),
    "hf-siglip": (lambda f: f"hf:{f['siglip']}:none", "SiglipVisionModel", "vision_model.encoder.layers.0.mlp.fc2",
                  "vision_model.encoder.layers.0.self_attn.v_proj", "vision_model.encoder.layers.0.mlp.fc2"),
}


@pytest.fixture(params=list(FAMILIES))
def family(request, hf_folders):
    make, arch, default, value, mlp = FAMILIES[request.param]
    return request.param, _load(make(hf_folders)), arch, default, value, mlp


def test_defaults_and_candidates_per_family(family):
    name, bundle, arch, default, value, mlp = family
    assert bundle.architecture == arch
    d = defaults_for(bundle)
    assert d.layer == default and d.rank == 32
    names = candidate_sites(bundle.image_module, bundle.image_prefix)
    assert default in names and mlp in names
    if value is not None:
        assert names.index(value) == names.index(mlp) - 1  # the value site, then the block's MLP
    for layer in names:  # every candidate resolves and is called by the image forward pass
        site = resolve_site(bundle.model, layer)
        with Trace(bundle.model, site.hook_name, retain_input=True) as tr:
            bundle.encode_images(torch.randn(1, 3, 64, 64))
        assert site.keys(site.input_of(tr)).shape[-1] == site.key_dim


def test_prefix_tokens_and_scales_come_from_the_tower(hf_folders):
    siglip, eva, convnext = _load("tiny-siglip:none"), _load("tiny-eva:none"), _load("tiny-convnext:none")
    assert resolve_site(siglip.model, "visual.trunk.blocks.0.mlp.fc2").prefix_tokens == 0  # no class token
    assert resolve_site(eva.model, "visual.trunk.blocks.0.mlp.fc2").prefix_tokens == 1
    hf_clip, hf_siglip = _load(f"hf:{hf_folders['clip']}:none"), _load(f"hf:{hf_folders['siglip']}:none")
    assert resolve_site(hf_clip.model, FAMILIES["hf-clip"][4]).prefix_tokens == 1
    assert resolve_site(hf_siglip.model, FAMILIES["hf-siglip"][4]).prefix_tokens == 0
    site = resolve_site(convnext.model, FAMILIES["convnext"][2])
    assert site.scale_name == "visual.trunk.stages.2.blocks.1.gamma" and site.channels_first_block
    mask = torch.zeros(1, 64, 64)
    mask[0, :16, :16] = 1  # the top-left quarter of a 4x4 grid: location 0 only (no prefix)
    assert site.location_weights(mask, 16, (4, 4)).tolist() == [[1.0] + [0.0] * 15]
    s = resolve_site(siglip.model, "visual.trunk.blocks.0.mlp.fc2")
    loc = s.location_weights(mask, 64)  # 8x8 patches, no prefix: the first two rows' first two columns
    assert loc[0].nonzero().flatten().tolist() == [0, 1, 8, 9]


def test_qkv_value_site_is_the_value_rows_of_timm_qkv():
    bundle = _load("tiny-siglip:none")
    model = bundle.model
    site = resolve_site(model, "visual.trunk.blocks.0.attn.v_proj")
    attn = model.visual.trunk.blocks[0].attn
    e = attn.qkv.in_features
    assert isinstance(site, QKVValueSite) and site.hook_name == "visual.trunk.blocks.0.attn"
    assert site.weight.data_ptr() == attn.qkv.weight[2 * e:].data_ptr() and site.weight.shape == (e, e)
    assert torch.equal(site.bias, attn.qkv.bias[2 * e:])
    with TraceDict(model, [site.hook_name, "visual.trunk.blocks.0.attn.qkv"], retain_input=True) as td:
        bundle.encode_images(torch.randn(2, 3, 64, 64))
    v = td["visual.trunk.blocks.0.attn.qkv"].output[..., 2 * e:]  # what timm splits off as the values
    assert torch.allclose(site.output_of(td[site.hook_name]), v, atol=1e-6)


def _patched_block_output(bundle, site, attacked, values, loc):
    """The block output of ``attacked`` with the site's output at ``loc`` replaced by ``values``."""
    def put(output, layer):
        flat = site.locations(output).clone()
        flat[loc > 0] = values.to(flat.dtype)
        return flat.reshape(output.shape)
    with Trace(bundle.model, site.hook_name, edit_output=put, retain_output=False):
        with Trace(bundle.model, site.block_name) as block:
            bundle.encode_images(attacked)
    return site.locations(site.site_layout(block.output))


def test_values_make_the_attacked_block_emit_the_blank_one(family):
    """Patching the values in at the masked locations reproduces the blank exemplar's block output there
    (LayerScale / ConvNeXt gamma, channels-last MLPs and prefix tokens all accounted for)."""
    name, bundle, _, _, _, mlp = family
    site = resolve_site(bundle.model, mlp)
    req = _requests(3, seed=1)
    ex = collect_exemplars(bundle.model, site, req.attacked, req.target, req.mask, bundle.encode_images)
    patched = _patched_block_output(bundle, site, req.attacked, ex.values, ex.location_mask)
    with Trace(bundle.model, site.block_name) as blank:
        bundle.encode_images(req.target)
    want = site.locations(site.site_layout(blank.output))
    sel = ex.location_mask > 0
    assert sel.any() and torch.allclose(patched[sel], want[sel], atol=1e-4, rtol=1e-3)
    with Trace(bundle.model, site.block_name) as plain:
        bundle.encode_images(req.attacked)
    assert not torch.allclose(site.locations(site.site_layout(plain.output))[sel], want[sel], atol=1e-3)


def _miss(bundle, site, attacked, ex) -> torch.Tensor:
    """How far the site's output at the masked locations is from the values that reproduce the blank."""
    with Trace(bundle.model, site.hook_name, retain_input=True) as tr:
        bundle.encode_images(attacked)
    return (site.locations(site.output_of(tr))[ex.location_mask > 0] - ex.values).norm()


def test_closed_form_edit_moves_attacked_towards_blank_and_reverts_bit_exactly(family):
    name, bundle, _, _, value, mlp = family
    model = bundle.model
    for layer in filter(None, (mlp, value)):
        site = resolve_site(model, layer)
        req = _requests(2, seed=3)
        stats = key_statistics(model, layer, lambda: [torch.randn(8, 3, 64, 64)], forward=bundle.encode_images)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ex = collect_exemplars(model, site, req.attacked, req.target, req.mask, bundle.encode_images)
        rank = min(ex.keys.shape[0], site.key_dim)  # the exemplar keys' span: the fit there is exact
        edit = compute_rewrite(model, req, RewriteHParams(layer=layer, rank=rank), stats,
                               forward=bundle.encode_images)
        gap = _miss(bundle, site, req.attacked, ex)
        apply_edit(model, edit)
        assert _miss(bundle, site, req.attacked, ex) < 0.05 * gap, (name, layer)
        changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
        assert len(changed) == 1 and changed[0].startswith(layer.rpartition(".")[0])
        revert_edit(model, edit)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_head_specs_per_family(hf_folders):
    """What a head method needs: the attention, its projection (whose input is the per-head result), the
    head count and width, and the query row (class token, or an attention pool's probe)."""
    siglip = _load("tiny-siglip:none")
    specs = {s.attention: s for s in head_specs(siglip.image_module, siglip.image_prefix)}
    assert list(specs) == ["visual.trunk.blocks.0.attn", "visual.trunk.blocks.1.attn", "visual.trunk.attn_pool"]
    pool = specs["visual.trunk.attn_pool"]
    assert (pool.proj, pool.n_heads, pool.head_dim, pool.query, pool.pooling, pool.hookable) == (
        "visual.trunk.attn_pool.proj", 2, 32, 0, True, True)
    assert specs["visual.trunk.blocks.0.attn"].query is None  # SigLIP has no class token
    eva = _load("tiny-eva:none")
    assert [(s.query, s.hookable) for s in head_specs(eva.image_module)] == [(0, True), (0, True)]
    assert head_specs(_load("tiny-convnext:none").image_module) == []
    vit = _load("tiny-vit:none")
    assert [(s.proj, s.query, s.hookable) for s in head_specs(vit.image_module, vit.image_prefix)][0] == (
        "visual.transformer.resblocks.0.attn.out_proj", 0, False)
    for fam, query in (("clip", 0), ("siglip", None)):
        b = _load(f"hf:{hf_folders[fam]}:none")
        blocks = [s for s in head_specs(b.image_module, b.image_prefix) if not s.pooling]
        assert blocks[0].proj == "vision_model.encoder.layers.0.self_attn.out_proj" and blocks[0].query == query
        # the per-head result is the projection's input: a pre-hook sees (batch, tokens, heads * head_dim)
        seen: list = []
        handle = get_module(b.model, blocks[0].proj).register_forward_pre_hook(
            lambda m, a, seen=seen: seen.append(a[0].shape))
        b.encode_images(torch.randn(1, 3, 64, 64))
        handle.remove()
        assert seen[0][-1] == blocks[0].n_heads * blocks[0].head_dim
    hf_siglip = _load(f"hf:{hf_folders['siglip']}:none")
    pool = [s for s in head_specs(hf_siglip.image_module, hf_siglip.image_prefix) if s.pooling]
    assert [(s.attention, s.query, s.hookable) for s in pool] == [("vision_model.head.attention", 0, False)]


# -- Hugging Face specifics ---------------------------------------------------------------------------
def test_hf_preprocess_matches_its_processor(hf_folders):
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (80, 100, 3), dtype=np.uint8))
    for fam in ("clip", "siglip"):
        bundle = _load(f"hf:{hf_folders[fam]}:none")
        processor = transformers.AutoImageProcessor.from_pretrained(hf_folders[fam])
        want = processor(images=img, return_tensors="pt")["pixel_values"][0]
        got = bundle.preprocess(img)
        assert got.shape == want.shape and (got - want).abs().max() < 0.05  # resampling differs by < 1 level
        ids = bundle.tokenizer(["a photo of an ipod."])
        assert ids.shape == (1, 16) and ids[0, 0].item() == 49406  # padded to the text tower's length


@pytest.mark.slow
def test_hf_export_loads_with_transformers_alone(hf_folders, tmp_path):
    """An edited HF model saved as model.safetensors is a save_pretrained folder: transformers loads it and
    predicts exactly what the edited bundle predicts; clipedit loads it back with --checkpoint FOLDER."""
    for fam, cls in (("clip", transformers.CLIPModel), ("siglip", transformers.SiglipModel)):
        bundle = _load(f"hf:{hf_folders[fam]}:none")
        layer = defaults_for(bundle).layer
        req = _requests(2, seed=0)
        stats = key_statistics(bundle.model, layer, lambda: [torch.randn(8, 3, 64, 64)],
                               forward=bundle.encode_images)
        apply_edit(bundle.model, compute_rewrite(bundle.model, req, RewriteHParams(layer=layer, rank=4), stats,
                                                 forward=bundle.encode_images))
        from clipedit.models.checkpoint import save_model_weights

        folder = tmp_path / fam
        save_model_weights(folder / "model.safetensors", bundle)
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
        alone = cls.from_pretrained(folder).eval()
        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            want = bundle.encode_images(x)
            got = alone.get_image_features(pixel_values=x)
        got = got if isinstance(got, torch.Tensor) else got.pooler_output
        assert torch.equal(got, want)
        back = load_model("hf", checkpoint=folder, device="cpu")
        with torch.no_grad():
            assert torch.equal(back.encode_images(x), want)
        assert torch.equal(back.tokenizer(["a cat"]), bundle.tokenizer(["a cat"]))
        # a copy of the bundle with another model (an edited twin) encodes and exports that model
        import copy
        import dataclasses

        twin = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
        site = resolve_site(twin.model, layer)
        with torch.no_grad():
            site.weight.mul_(0)
            assert not torch.equal(twin.encode_images(x), want) and torch.equal(bundle.encode_images(x), want)
        save_model_weights(tmp_path / f"{fam}-twin" / "model.safetensors", twin)
        with torch.no_grad():
            got = cls.from_pretrained(tmp_path / f"{fam}-twin").eval().get_image_features(pixel_values=x)
        assert torch.equal(got if isinstance(got, torch.Tensor) else got.pooler_output, twin.encode_images(x))


def test_hf_errors_are_one_line(hf_folders, tmp_path, capsys, monkeypatch, image_folder):
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32).save_pretrained(bert)
    line = run_error(capsys, "audit", "--model", f"hf:{bert}:none", "--data", image_folder)
    assert "BertConfig" in line or "bert" in line
    assert "'clip' (CLIPModel), 'siglip' (SiglipModel)" in line
    line = run_error(capsys, "audit", "--model", "hf:nobody/no-such-clip", "--data", image_folder)
    assert "could not fetch hf:nobody/no-such-clip" in line and "--checkpoint" in line
    line = run_error(capsys, "audit", "--model", "hf", "--data", image_folder)
    assert "hf:ORG/NAME" in line
    line = run_error(capsys, "audit", "--model", f"hf:{hf_folders['clip']}", "--data", image_folder)
    assert f"hf:{hf_folders['clip']}:none" in line  # a config-only folder: says how to load it at random init
    line = run_error(capsys, "audit", "--model", "tiny-vit", "--checkpoint", tmp_path, "--data", image_folder)
    assert "is a folder" in line
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    line = run_error(capsys, "audit", "--model", f"hf:{hf_folders['clip']}:none", "--data", image_folder)
    assert "pip install 'clipedit[hf]'" in line


def test_open_clip_hf_tokenizer_is_one_line_when_missing_or_offline(monkeypatch):
    """open_clip's SigLIP takes its tokenizer from the hub through transformers: without transformers, or
    offline, the model still loads (image-side work runs) and the first text call is one clear error."""
    import importlib.util

    from clipedit.models.registry import _open_clip_tokenizer

    tok = _open_clip_tokenizer("ViT-B-16-SigLIP")  # offline in tests: the hub's files cannot be fetched
    with pytest.raises(ModelLoadError, match="ViT-B-16-SigLIP's tokenizer"):
        tok(["a cat"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a))
    with pytest.raises(ModelLoadError, match=r"needs transformers: pip install 'clipedit\[hf\]'"):
        _open_clip_tokenizer("ViT-B-16-SigLIP")(["a cat"])


def test_a_tower_without_a_default_names_the_supported_families():
    from clipedit.errors import SiteError
    from clipedit.settings.defaults import default_layer

    bundle = _load("tiny-siglip:none")
    bundle.image_module.trunk.__class__ = type("FastVit", (bundle.image_module.trunk.__class__,), {})
    with pytest.raises(SiteError, match=r"TimmModel/FastVit.*TimmModel/ConvNeXt"):
        default_layer(bundle)


# -- end to end on rendered photos --------------------------------------------------------------------
@pytest.mark.parametrize("fam", ["timm-siglip", "convnext", "hf-siglip"])
@pytest.mark.slow
def test_audit_and_defend_end_to_end(fam, hf_folders, image_folder, tmp_path, capsys):
    bundle = _load(FAMILIES[fam][0](hf_folders))
    if fam.startswith("hf"):
        model_args = ["--model", "hf"]
        ckpt = tmp_path / "base"
        export_pretrained(bundle, ckpt, transformers.AutoImageProcessor.from_pretrained(hf_folders["siglip"]),
                          transformers.AutoTokenizer.from_pretrained(hf_folders["siglip"]))
    else:
        model_args = ["--model", FAMILIES[fam][0](hf_folders).split(":")[0]]
        ckpt = save_state_dict(tmp_path / "base.safetensors", bundle.model.state_dict())
    stdout = run_ok(capsys, "audit", *model_args, "--checkpoint", ckpt, "--data", image_folder,
                    "--out", tmp_path / "audit.json", "--batch-size", "6")
    assert "attack success" in stdout
    assert json.loads((tmp_path / "audit.json").read_text())["metrics"]["n"] == 12
    out = tmp_path / "run"
    code, _, err = run_cli(["defend", *model_args, "--checkpoint", ckpt, "--text", "ipod", "--renders", "3",
                            "--rank", "2", "--no-eval", "--out", out], capsys)
    assert code == 0, err
    record = json.loads((out / "results.json").read_text())
    assert record["layer"] == FAMILIES[fam][2]
    restored = tmp_path / "restored"
    restored_file = restored / "model.safetensors" if fam.startswith("hf") else tmp_path / "restored.safetensors"
    restored.mkdir()
    code, _, err = run_cli(["revert", out / "edit.safetensors", *model_args, "--checkpoint",
                            out if fam.startswith("hf") else out / "model.safetensors", "--out", restored_file],
                           capsys)
    assert code == 0, err
    from safetensors.torch import load_file

    base = load_file(str(ckpt / "model.safetensors" if fam.startswith("hf") else ckpt))
    back = load_file(str(restored_file))
    assert base.keys() == back.keys() and all(torch.equal(base[k], back[k]) for k in base)
    edited = load_file(str(out / "model.safetensors"))
    assert not torch.equal(edited[FAMILIES[fam][2] + ".weight"], base[FAMILIES[fam][2] + ".weight"])


# -- the sweep and the fine-tuning methods, family-agnostic ---------------------------------------------
def _with_world(bundle):
    import dataclasses

    from clipedit.mini.world import CLASSNAMES, MiniWorld

    return dataclasses.replace(bundle, world=MiniWorld(), classnames=list(CLASSNAMES))


@pytest.mark.filterwarnings("ignore:only .* reference keys")
@pytest.mark.parametrize("fam", list(FAMILIES))
def test_sweep_scores_every_candidate_of_each_family(fam, hf_folders):
    from clipedit.defenses.typographic import DefenseConfig
    from clipedit.selection.sweep import SweepSettings, sweep

    bundle = _with_world(_load(FAMILIES[fam][0](hf_folders)))
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    result = sweep(bundle, "ipod", SweepSettings(ranks=[1], n_val=4, n_signs=0),
                   DefenseConfig(renders=4, n_reference=8))
    assert [r["site"] for r in result.rows] == candidate_sites(bundle.image_module, bundle.image_prefix)
    assert all(0.0 <= r["text_acc"] <= 1.0 for r in result.rows)
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


@pytest.mark.parametrize("fam,method", [("timm-siglip", "finetune-local"), ("convnext", "finetune-global"),
                                        ("timm-eva", "finetune-local"), ("hf-clip", "finetune-global"),
                                        pytest.param("hf-siglip", "paint", marks=pytest.mark.slow)])
def test_fine_tuning_methods_change_only_the_image_tower(fam, method, hf_folders):
    from clipedit.defenses.typographic import DefenseConfig, defend
    from clipedit.methods.finetune import FinetuneHParams

    small_paint = {"alphas": [1.0], "lrs": [1e-2], "n_val": 4, "n_signs": 0, "n_train": 8, "steps": 2,
                   "checkpoints": 1}
    hparams = small_paint if method == "paint" else FinetuneHParams(steps=1, lr=1e-2)
    bundle = _with_world(_load(FAMILIES[fam][0](hf_folders)))
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    defend(bundle, "ipod", DefenseConfig(method=method, renders=3, hparams=hparams))
    changed = {k for k, v in bundle.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith(bundle.image_prefix) for k in changed)
    if method == "finetune-local":
        assert changed == {FAMILIES[fam][2] + ".weight"}


def test_open_clip_vit_with_layer_scale_is_a_site_now():
    """open_clip ViTs with LayerScale (ls_init_value) were refused; the scale is solved through like a norm."""
    import open_clip

    from clipedit.models.bundle import ModelBundle
    from clipedit.models.registry import config_files

    cfg = json.loads(config_files()["tiny-vit"].read_text())
    cfg["vision_cfg"]["ls_init_value"] = 0.1
    torch.manual_seed(0)
    bundle = ModelBundle(model=open_clip.model.CLIP(**cfg).eval(), preprocess=None)
    site = resolve_site(bundle.model, "visual.transformer.resblocks.0.mlp.c_proj")
    assert site.scale_name == "visual.transformer.resblocks.0.ls_2"
    req = _requests(3, seed=2)
    ex = collect_exemplars(bundle.model, site, req.attacked, req.target, req.mask, bundle.encode_images)
    patched = _patched_block_output(bundle, site, req.attacked, ex.values, ex.location_mask)
    with Trace(bundle.model, site.block_name) as blank:
        bundle.encode_images(req.target)
    sel = ex.location_mask > 0
    assert torch.allclose(patched[sel], site.locations(blank.output)[sel], atol=1e-4, rtol=1e-3)
