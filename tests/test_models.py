"""Model loading: tiny random-init CLIPs, local checkpoints, devices and clear load errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from clipedit.errors import ModelLoadError
from clipedit.models import load_model, parse_spec, resolve_device, save_state_dict


def _outputs(bundle) -> torch.Tensor:
    images = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    with torch.no_grad():
        return bundle.encode_images(images)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_tiny_models_load_at_random(name, photos):
    bundle = load_model(name, device="cpu")
    assert (bundle.name, bundle.pretrained, bundle.kind) == (name, "none", "clip")
    assert not bundle.model.training
    x = bundle.preprocess(photos["cat"])
    assert x.shape == (3, 64, 64)
    assert _outputs(bundle).shape == (2, 64)
    tokens = bundle.tokenizer(["a photo of a cat."])
    assert bundle.model.encode_text(tokens).shape == (1, 64)


def test_parse_spec():
    assert parse_spec("ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert parse_spec("tiny-vit") == ("tiny-vit", "")
    with pytest.raises(ModelLoadError, match="empty model name"):
        parse_spec(":openai")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, tiny_vit, suffix):
    path = tmp_path / f"weights{suffix}"
    with torch.no_grad():  # make the weights differ from the seed-0 init the fixture shares
        tiny_vit.model.visual.conv1.weight.mul_(-2.0)
    if suffix == ".safetensors":
        save_state_dict(path, tiny_vit.model.state_dict())
    else:
        torch.save(tiny_vit.model.state_dict(), path)
    torch.manual_seed(1)
    reloaded = load_model("tiny-vit", checkpoint=path, device="cpu")
    torch.manual_seed(1)
    fresh = load_model("tiny-vit", device="cpu")
    assert reloaded.pretrained == str(path)
    assert torch.equal(_outputs(reloaded), _outputs(tiny_vit))
    assert not torch.allclose(_outputs(fresh), _outputs(tiny_vit))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_corrupt_checkpoint_is_a_load_error(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        load_model("tiny-vit", checkpoint=path, device="cpu")


def test_checkpoint_of_another_architecture_is_rejected(tmp_path, tiny_rn):
    path = save_state_dict(tmp_path / "rn.safetensors", tiny_rn.model.state_dict())
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model("tiny-vit", checkpoint=path, device="cpu")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint not found"):
        load_model("tiny-vit", checkpoint=tmp_path / "nope.pt", device="cpu")


def test_device_auto_picks_cuda_only_when_present(tiny_vit):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert load_model("tiny-rn").device.type == expected
    assert tiny_vit.device == torch.device("cpu")


def test_bad_devices():
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelLoadError, match=r"unknown model 'tiny-vitt'.*tiny-vit"):
        load_model("tiny-vitt", device="cpu")


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match=r"unknown pretrained tag 'nonexistent' for ViT-B-32 \(known: .*openai"):
        load_model("ViT-B-32:nonexistent", device="cpu")


def test_open_clip_root_logs_are_kept_off_stderr(capfd):
    import logging

    handler = logging.StreamHandler()  # what the CLI's basicConfig installs
    logging.getLogger().addHandler(handler)
    try:
        load_model("tiny-rn", device="cpu")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "No pretrained weights" not in capfd.readouterr().err


def test_unknown_model_lists_the_known_names():
    with pytest.raises(ModelLoadError, match=r"unknown model 'nosuchmodel'; known: .*mini-vit.*timm/NAME.*"
                                             r"ViT-B-32.*`clipedit models` lists them all"):
        load_model("nosuchmodel", device="cpu")


@pytest.mark.parametrize("content, message", [
    (b'{"not": "a checkpoint"}', "the file is not a checkpoint"),
    (None, "holds Python objects other than tensors"),
])
def test_a_file_that_is_no_checkpoint_says_so_and_never_suggests_unsafe_loading(tmp_path, content, message):
    path = tmp_path / ("x.json" if content else "objects.pt")
    if content:
        path.write_bytes(content)
    else:
        torch.save({"weight": torch.zeros(2), "loader": ModelLoadError}, path)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model("tiny-vit", checkpoint=path, device="cpu")
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_models_marks_the_families_clipedit_cannot_defend(capsys):
    from conftest import run_ok

    lines = {line.split()[0]: line for line in run_ok(capsys, "models", "--no-pretrained").splitlines()[1:]
             if line.startswith("  ")}
    assert "not supported" in lines["MobileCLIP2-S0"] and "not supported" in lines["coca_ViT-B-32"]
    assert "not supported" in lines["swin_base_patch4_window7_224"]
    assert "(" not in lines["ViT-B-32"] and "(" not in lines["MobileCLIP-B"]


@pytest.mark.slow  # a fresh process: open_clip's imports alone take seconds
def test_offline_download_fails_at_once_with_one_line(tmp_path, image_folder):
    # A fresh process, as a user runs it: the hub is not marked offline, its address resolves nowhere.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="https://hub.clipedit-test.invalid", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-m", "clipedit", "audit", "--model", "ViT-B-32:openai", "--data",
                           str(image_folder), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1, done.stderr  # no retry warnings before the error
    assert lines[0].startswith("Error: ") and "no network" in lines[0] and "--checkpoint" in lines[0]
    assert not (tmp_path / "r.json").exists()


def test_efficientnet_lite0_refuses_unknown_tags():
    from clipedit.errors import ModelLoadError
    from clipedit.models import load_model

    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'laion2b' for efficientnet-lite0"):
        load_model("efficientnet-lite0:laion2b", device="cpu")


def test_efficientnet_lite0_none_is_random_init_as_elsewhere():
    from clipedit.models import load_model

    shipped = load_model("efficientnet-lite0", device="cpu")
    shipped_again = load_model("efficientnet-lite0:imagenet", device="cpu")
    torch.manual_seed(0)
    random = load_model("efficientnet-lite0:none", device="cpu")
    assert random.pretrained == "none" and shipped.pretrained.startswith("imagenet")
    w = "conv_stem.weight"
    assert torch.equal(shipped.model.state_dict()[w], shipped_again.model.state_dict()[w])
    assert not torch.equal(shipped.model.state_dict()[w], random.model.state_dict()[w])
