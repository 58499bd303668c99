"""Files a model is loaded or edited from, checked where they enter: edit files (only the sealed format),
Hugging Face folders (finite, shaped, complete weights; a config of the right kind), hook edits (tied to
the model they were made on, their tensors checked), the statistics cache (keyed by content) and the
data torchrun ranks read (the same on every rank). Every refusal is one ``Error:`` line."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_error
from safetensors.torch import load_file, save_file

from clipedit.core import EditSet, LayerEdit, load_edits, save_edits
from clipedit.errors import EditError
from clipedit.io import read_safetensors_metadata, save_state_dict

SITES = ("visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.mlp.c_proj")


def weight_edits(bundle, sites=SITES, rank: int = 2) -> list[LayerEdit]:
    """Rank-``rank`` random edits of ``sites``, each made on the weights the previous ones left."""
    g = torch.Generator().manual_seed(3)
    edits = []
    state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    for site in sites:
        w = state[f"{site}.weight"]
        lam = torch.randn(w.shape[0], rank, generator=g) * 1e-2
        d = torch.randn(w.shape[1], rank, generator=g)
        edit = LayerEdit.create(site, lam, d, w, {"model": "tiny-vit"})
        state[f"{site}.weight"] = w + edit.delta()
        edits.append(edit)
    return edits


def rewrite_header(src, dst, change) -> None:
    """``src`` copied to ``dst`` with its header changed by ``change(meta)`` (tensors as they are)."""
    meta = dict(read_safetensors_metadata(src))
    change(meta)
    save_file(load_file(str(src)), str(dst), metadata=meta)


# -- edit files: only the sealed format is read ---------------------------------------------------------------
def legacy_set_file(path, edits) -> None:
    """An edit set as clipedit's first releases wrote it, unsealed (``clipedit-edit-set/1``)."""
    tensors = {f"{i}.{n}": t for i, e in enumerate(edits) for n, t in e.to_tensors().items()}
    sites = [{"layer": e.layer, **e.meta} for e in edits]
    save_file(tensors, str(path), metadata={"format": "clipedit-edit-set/1", "sites": json.dumps(sites)})


def legacy_single_file(path, edit) -> None:
    """A single edit as clipedit's first releases wrote it (``clipedit-edit/1``)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in edit.meta.items()}
    save_file(edit.to_tensors(), str(path), metadata={"format": "clipedit-edit/1", "layer": edit.layer, **meta})


def test_a_legacy_set_with_a_member_dropped_is_refused_not_applied_in_part(tiny_vit, tmp_path, capsys):
    """A 4-site set rewritten in the unsealed format with one member dropped from its header used to apply
    3 of 4 sites (and revert left a weight edited): the unsealed formats are no longer read."""
    base = save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())
    edits = weight_edits(tiny_vit)
    legacy_set_file(tmp_path / "set1.safetensors", edits)
    rewrite_header(tmp_path / "set1.safetensors", tmp_path / "dropped.safetensors",
                   lambda meta: meta.update(sites=json.dumps(json.loads(meta["sites"])[1:])))
    legacy_single_file(tmp_path / "edit1.safetensors", edits[0])
    for name, fmt in (("set1", "clipedit-edit-set/1"), ("dropped", "clipedit-edit-set/1"),
                      ("edit1", "clipedit-edit/1")):
        path = tmp_path / f"{name}.safetensors"
        for command in ("apply", "revert"):
            out = tmp_path / f"{command}.safetensors"
            line = run_error(capsys, command, path, "--model", "tiny-vit", "--checkpoint", base, "--out", out)
            assert f"legacy unsealed format {fmt}" in line and "re-make it" in line and str(path) in line
            assert not out.exists()
        with pytest.raises(EditError, match="legacy unsealed format"):
            load_edits(path)
    # the same edits saved now are sealed and load whole
    assert load_edits(save_edits(tmp_path / "now.safetensors", EditSet(edits))).layers == list(SITES)


# -- Hugging Face folders: the checks a checkpoint gets -------------------------------------------------------
HF_SITE = "vision_model.encoder.layers.0.mlp.fc2.weight"


@pytest.fixture(scope="module")
def hf_saved(hf_folders, tmp_path_factory):
    """A save_pretrained folder of the toy CLIPModel with its (random) weights, and those weights."""
    import shutil

    from clipedit.models import load_model

    folder = tmp_path_factory.mktemp("hf-saved") / "clip"
    shutil.copytree(hf_folders["clip"], folder)
    torch.manual_seed(0)
    load_model(f"hf:{hf_folders['clip']}:none", device="cpu").model.save_pretrained(folder)
    return folder, load_file(str(folder / "model.safetensors"))


def hf_variant(hf_saved, tmp_path, weights=None, config=None, raw=None):
    """A copy of the saved folder with its weights changed by ``weights(state)``, its config by
    ``config(dict)``, or any file by ``raw(folder)``."""
    import shutil

    folder, state = hf_saved
    out = tmp_path / "variant"
    shutil.copytree(folder, out)
    if weights is not None:
        state = dict(state)
        weights(state)
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if config is not None:
        data = json.loads((out / "config.json").read_text())
        config(data)
        (out / "config.json").write_text(json.dumps(data))
    if raw is not None:
        raw(out)
    return out


def _set(key, value):
    return lambda d: d.__setitem__(key, value(d) if callable(value) else value)


def _vision(key, value):
    return lambda d: d["vision_config"].__setitem__(key, value)


@pytest.mark.parametrize("change, message", [
    (dict(weights=_set(HF_SITE, lambda s: torch.full_like(s[HF_SITE], float("nan")))),
     f"{HF_SITE} contains NaN or inf"),
    (dict(weights=lambda s: s.pop(HF_SITE)), f"1 missing key(s), first: {HF_SITE}"),
    (dict(weights=lambda s: [s.__setitem__(f"other.{k}", s.pop(k)) for k in list(s)]), "62 unexpected key(s)"),
    (dict(weights=_set("bogus.weight", torch.zeros(3))), "1 unexpected key(s), first: bogus.weight"),
    (dict(weights=_set(HF_SITE, torch.zeros(3, 3))), f"first: {HF_SITE} (3, 3) vs the config's (64, 128)"),
    (dict(raw=lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000])),
     "cannot load the weights"),
    (dict(config=_vision("hidden_size", "x")), "hidden_size"),
    (dict(config=_vision("hidden_size", -64)), "vision_config.hidden_size = -64; it must be an integer >= 1"),
    (dict(config=_vision("intermediate_size", 10 ** 12)), "its sizes are wrong"),
    (dict(raw=lambda f: (f / "config.json").write_text("[" * 100000 + "]" * 100000)), "nested too deeply"),
    (dict(raw=lambda f: (f / "config.json").write_text('{"model_type": "clip", "x": ' + "[" * 100000 + "]" * 100000
                                                        + "}")), "nested too deeply"),
    (dict(raw=lambda f: (f / "preprocessor_config.json").write_text("{" * 1 + '"size": ' + "[" * 100000)),
     "image processor"),
])
def test_a_bad_hf_folder_is_one_line(hf_saved, image_folder, tmp_path, capsys, change, message):
    """NaN weights, another model's tensors, a key missing or extra, weights of another shape or truncated,
    a config wrongly typed, of negative or absurd size, or nested too deeply: refused, never loaded
    (transformers would random-initialise what is missing and say so only in its own report)."""
    folder = hf_variant(hf_saved, tmp_path, **change)
    line = run_error(capsys, "audit", "--model", "hf", "--checkpoint", folder, "--data", image_folder,
                     "--out", tmp_path / "a.json")
    assert message in line
    assert not (tmp_path / "a.json").exists()


def test_a_sound_hf_folder_loads_its_weights_exactly(hf_saved):
    from clipedit.models import load_model

    folder, state = hf_saved
    loaded = load_model("hf", checkpoint=folder, device="cpu").model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_a_config_of_another_model_type_says_what_it_is(hf_saved, image_folder, tmp_path, capsys):
    """A CLIP config whose model_type says 'bert' (its `architectures` still says CLIPModel) is named by its
    model_type, never called a CLIPModel."""
    folder = hf_variant(hf_saved, tmp_path, config=_set("model_type", "bert"))
    line = run_error(capsys, "audit", "--model", "hf", "--checkpoint", folder, "--data", image_folder)
    assert "model_type 'bert'" in line and "not a CLIP or SigLIP model" in line
    assert "is a CLIPModel" not in line


def test_a_fifo_in_an_hf_folder_is_refused_not_read(hf_saved, image_folder, tmp_path, capsys):
    import os

    folder = hf_variant(hf_saved, tmp_path, raw=lambda f: ((f / "config.json").unlink(),
                                                           os.mkfifo(f / "config.json")))
    line = run_error(capsys, "audit", "--model", "hf", "--checkpoint", folder, "--data", image_folder)
    assert "config.json is not a regular file" in line
