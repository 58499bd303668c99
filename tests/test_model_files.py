"""Files a model is loaded or edited from, checked where they enter: edit files (only the sealed format),
Hugging Face folders (finite, shaped, complete weights; a config of the right kind), hook edits (tied to
the model they were made on, their tensors checked), the statistics cache (keyed by content) and the
data torchrun ranks read (the same on every rank). Every refusal is one ``Error:`` line."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VIT_SITE, exit_code_of, fork_run, reference_batches, run_error
from PIL import Image
from safetensors.torch import load_file, save_file

import clipedit
from clipedit.core import EditSet, LayerEdit, apply_edit, key_statistics, load_edit, load_edits, save_edits
from clipedit.core import statistics as stats_module
from clipedit.core.cache import cache_dir
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


def _processor(folder, **change) -> None:
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


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
    (dict(config=_vision("layer_norm_eps", float("nan"))), "vision_config.layer_norm_eps = nan; it must be finite"),
    (dict(raw=lambda f: _processor(f, size={"shortest_edge": -5})), "shortest_edge -5 is not a whole number"),
    (dict(raw=lambda f: _processor(f, image_mean=[0.5, 0.5])), "image_mean (0.5, 0.5) must be 3 finite numbers"),
    (dict(raw=lambda f: _processor(f, image_std=[0, 1, 1])), "image_std [0.0, 1.0, 1.0] must be > 0"),
    (dict(weights=_set(HF_SITE, lambda s: s[HF_SITE].long())), f"stores {HF_SITE} as I64"),
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


# -- hook edits: tied to their model, their tensors checked --------------------------------------------------
ATTN = "visual.transformer.resblocks.1.attn"


def other_weights(bundle, prefix: str = "visual.", seed: int = 5) -> dict[str, torch.Tensor]:
    """``bundle``'s weights with every tensor under ``prefix`` nudged (the same architecture, another model)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) if k.startswith(prefix) and v.is_floating_point()
            else v.clone() for k, v in bundle.model.state_dict().items()}


def test_a_head_ablation_is_refused_on_another_model(tiny_vit, tmp_path, capsys, image_folder):
    """A head ablation made on one model used to apply to any model with a module of that name (a mini-vit-deep
    ablation applied to mini-vit): it records the model it was made on and refuses any other."""
    from clipedit.core.hook_edits import ClsHeadAblation

    own = save_state_dict(tmp_path / "own.safetensors", tiny_vit.model.state_dict())
    other = save_state_dict(tmp_path / "other.safetensors", other_weights(tiny_vit))
    path = save_edits(tmp_path / "heads.safetensors",
                      ClsHeadAblation(ATTN, [1], {"model": "tiny-vit"}, model=tiny_vit.model))
    run_args = ["--model", "tiny-vit", "--edit", path, "--data", image_folder, "--n", "2"]
    line = run_error(capsys, "audit", "--checkpoint", other, *run_args, "--out", tmp_path / "a.json")
    assert "was made on another model (tiny-vit)" in line and not (tmp_path / "a.json").exists()
    from conftest import run_ok

    run_ok(capsys, "audit", "--checkpoint", own, *run_args, "--out", tmp_path / "b.json")  # its own: applies
    member = load_edits(path).edits[0]
    other_model = tiny_vit.model
    other_model.load_state_dict(other_weights(tiny_vit))
    with pytest.raises(EditError, match="made on another model"):
        member.apply(other_model)


def test_a_class_prefix_is_refused_on_a_model_with_the_same_text_tower(mini, tmp_path):
    """A class prefix trained on mini applied to mini-vit (the minis share their text tower): the prefix is
    trained against the whole model, so it records the whole model and refuses another image tower."""
    from clipedit.core.prompt_edits import ClassPrefix, placeholder_token_id
    from clipedit.models import load_model

    member = ClassPrefix("token_embedding", torch.randn(1, 128), placeholder_token_id(mini.tokenizer),
                         model=mini.model)
    path = save_edits(tmp_path / "prefix.safetensors", member)
    vit = load_model("mini-vit", device="cpu")
    assert torch.equal(vit.model.token_embedding.weight, mini.model.token_embedding.weight)
    with pytest.raises(EditError, match="made on another model"):
        load_model("mini-vit", device="cpu", edits=[path])
    load_model("mini", device="cpu", edits=[path])  # the model it was made on


@pytest.fixture
def mini():
    from clipedit.models import load_model

    return load_model("mini", device="cpu")


def test_a_hook_edit_without_a_model_identity_is_not_written_or_read(tiny_vit, tmp_path, capsys):
    from clipedit.core.edit_sets import seal_of
    from clipedit.core.hook_edits import ClsHeadAblation

    with pytest.raises(EditError, match="records no model identity"):
        save_edits(tmp_path / "x.safetensors", ClsHeadAblation(ATTN, [1]))
    good = save_edits(tmp_path / "h.safetensors", ClsHeadAblation(ATTN, [1], model=tiny_vit.model))

    def strip(meta):  # the identity removed, digest and seal recomputed as a careful forger would
        members = json.loads(meta["members"])
        members[0]["meta"].pop("model_sha256")
        members[0]["digest"] = ClsHeadAblation(ATTN, [1]).digest()
        meta["members"] = json.dumps(members)
        meta["seal"] = seal_of([(m["kind"], m["layer"], m["digest"]) for m in members])
    rewrite_header(good, tmp_path / "bad.safetensors", strip)
    line = run_error(capsys, "audit", "--model", "tiny-vit", "--edit", tmp_path / "bad.safetensors")
    assert "records no identity of the model it was made on" in line


def rewrite_member(src, dst, change_tensors, reseal_member=None) -> None:
    """``src`` copied to ``dst`` with member 0's tensors changed by ``change_tensors(tensors)``;
    ``reseal_member(meta_entry) -> digest`` recomputes its digest and the seal (a careful forger)."""
    from clipedit.core.edit_sets import seal_of

    meta = dict(read_safetensors_metadata(src))
    tensors = load_file(str(src))
    change_tensors(tensors)
    if reseal_member is not None:
        members = json.loads(meta["members"])
        members[0]["digest"] = reseal_member(members[0])
        meta["members"] = json.dumps(members)
        meta["seal"] = seal_of([(m["kind"], m["layer"], m["digest"]) for m in members])
    save_file(tensors, str(dst), metadata=meta)


def _head_digest(heads):
    import hashlib

    def digest(entry):
        payload = json.dumps({"kind": "cls-head-ablation", "layer": entry["layer"], "heads": heads,
                              "model": entry["meta"]["model_sha256"]}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()
    return digest


@pytest.mark.parametrize("kind, change, reseal, message", [
    ("heads", lambda t: t.__setitem__("0.heads", torch.tensor([float("nan")])), None, "non-empty 1-D integer"),
    ("heads", lambda t: t.__setitem__("0.heads", torch.tensor([[1, 0]])), None, "non-empty 1-D integer"),
    ("heads", lambda t: t.__setitem__("0.heads", torch.tensor([], dtype=torch.int64)), None, "non-empty 1-D"),
    ("heads", lambda t: t.__setitem__("0.heads", torch.tensor([-1])), _head_digest([-1]), "names head -1"),
    ("heads", lambda t: t.__setitem__("0.heads", torch.tensor([7])), _head_digest([7]), "has 2 heads"),
    ("heads", lambda t: t.pop("0.heads"), None, "it needs 'heads' alone"),
    ("prefix", lambda t: t.__setitem__("0.token_id", torch.tensor([], dtype=torch.int64)), None, "must be one integer"),
    ("prefix", lambda t: t.__setitem__("0.token_id", torch.tensor([float("nan")])), None, "must be one integer"),
    ("prefix", lambda t: t.__setitem__("0.token_id", torch.tensor([-3])), None, "whole number >= 0"),
    ("prefix", lambda t: t.__setitem__("0.vector", torch.tensor([])), None, "non-empty float tensor"),
    ("prefix", lambda t: t.__setitem__("0.vector", torch.ones(1, 4, dtype=torch.int64)), None, "float tensor"),
    ("prefix", lambda t: t.__setitem__("0.vector", t["0.vector"].reshape(1, 4, 8)), None, "or (1, width)"),
    ("weight", lambda t: t.__setitem__("0.orig_weight", torch.tensor(1.0)), None, "at least two dimensions"),
    ("weight", lambda t: t.__setitem__("0.lambda", t["0.lambda"].long()), None, "not a floating-point"),
])
def test_tampered_member_tensors_are_one_line(tiny_vit, tmp_path, capsys, kind, change, reseal, message):
    from clipedit.core.hook_edits import ClsHeadAblation
    from clipedit.core.prompt_edits import ClassPrefix

    member = {"heads": lambda: ClsHeadAblation(ATTN, [1], model=tiny_vit.model),
              "prefix": lambda: ClassPrefix("token_embedding", torch.randn(1, 32), 5, model=tiny_vit.model),
              "weight": lambda: weight_edits(tiny_vit, SITES[:1])[0]}[kind]()
    good = save_edits(tmp_path / "good.safetensors", member)
    bad = tmp_path / "bad.safetensors"
    rewrite_member(good, bad, change, reseal)
    base = save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())
    line = run_error(capsys, "audit", "--model", "tiny-vit", "--checkpoint", base, "--edit", bad)
    assert message in line
    with pytest.raises(EditError):
        apply_all(tiny_vit.model, bad)


def apply_all(model, path):
    from clipedit.core import apply_edit_set

    apply_edit_set(model, load_edits(path))


@pytest.mark.parametrize("key, value, message", [
    ("members", "[" * 100000 + "]" * 100000, "'members' is nested too deeply"),
    ("members", "[" * 100 + "]" * 100, "'members' is nested more than 32 levels deep"),
    ("words", "[" * 100000 + "]" * 100000, "'words' is nested too deeply"),
    ("words", "[" * 100 + "]" * 100, "'words' is nested more than 32 levels deep"),
])
def test_deeply_nested_json_in_an_edit_header_is_one_line(tiny_vit, tmp_path, capsys, key, value, message):
    good = save_edits(tmp_path / "e.safetensors", EditSet(weight_edits(tiny_vit, SITES[:1]), {"words": ["ipod"]}))
    rewrite_header(good, tmp_path / "bad.safetensors", lambda meta: meta.update({key: value}))
    line = run_error(capsys, "apply", tmp_path / "bad.safetensors", "--model", "tiny-vit",
                     "--out", tmp_path / "w.safetensors")
    assert message in line


# -- the statistics cache: keyed by what the files hold -----------------------------------------------------
def _bmp_folder(folder, seed: int) -> list:
    """Four 40x40 BMPs of seeded noise (uncompressed: the size depends on the dimensions alone)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(4):
        path = folder / f"{i}.bmp"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_reference_images_replaced_by_same_size_files_with_the_old_mtime_are_not_served_stale(tmp_path):
    """`cp -p` of other images of the same size over the reference folder used to serve the stale C
    (the key was path, size and mtime): the key is now a digest of the files' contents."""
    import os

    from clipedit.defenses.typographic import DefenseConfig, reference_statistics
    from clipedit.models import load_model

    layer = SITES[0]
    folder = tmp_path / "ref"
    paths = _bmp_folder(folder, 0)
    torch.manual_seed(0)
    bundle = load_model("tiny-vit", device="cpu")
    first = reference_statistics(bundle, layer, DefenseConfig(reference=folder)).C
    times = {p: os.stat(p) for p in paths}
    replacement = _bmp_folder(tmp_path / "other", 1)
    for old, new in zip(paths, replacement):
        size = old.stat().st_size
        old.write_bytes(new.read_bytes())
        assert old.stat().st_size == size
        os.utime(old, ns=(times[old].st_atime_ns, times[old].st_mtime_ns))
    again = reference_statistics(bundle, layer, DefenseConfig(reference=folder)).C
    fresh = reference_statistics(bundle, layer, DefenseConfig(reference=tmp_path / "other")).C
    assert not torch.allclose(again, first)
    assert torch.equal(again, fresh)  # the replaced folder's C is the other folder's (one key for one content)


def test_the_files_key_follows_content_not_names(tmp_path):
    from clipedit.data.folders import files_key

    a, b = _bmp_folder(tmp_path / "a", 0), _bmp_folder(tmp_path / "b", 0)
    assert files_key(a) == files_key(b)  # the same bytes elsewhere: the same key
    c = _bmp_folder(tmp_path / "c", 1)
    assert files_key(c) != files_key(a) and files_key(a[:3]) != files_key(a)


# -- torchrun: every rank reads the same data and weights -----------------------------------------------------
def _two_ranks_in(cwds, args, tmp_path) -> list[tuple[int, str]]:
    """Two ranks started by hand (as torchrun would) with the same arguments, rank r in ``cwds[r]`` (so
    that one relative path names different files on each rank, as on two machines)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CLIPEDIT_CACHE": str(tmp_path / "cache")}
        procs.append(subprocess.Popen([sys.executable, "-m", "clipedit", *map(str, args)], env=env, cwd=cwds[rank],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=300)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errors)]


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ("pixels", "ranks read different images"),
    ("count", "ranks read different images"),
    ("weights", "ranks hold different model weights"),
])
def test_ranks_reading_different_data_stop_in_one_line(tiny_vit, image_folder, tmp_path, change, message):
    """The same arguments, other pixels (or another number of files) behind --data on one rank: rank 0 used
    to report mixed figures with exit 0 (and different counts aborted gloo with a traceback)."""
    import shutil

    from PIL import Image

    weights = save_state_dict(tmp_path / "w.safetensors", tiny_vit.model.state_dict())
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    for cwd in cwds:
        shutil.copytree(image_folder, cwd / "data")
    if change == "pixels":
        path = cwds[1] / "data" / "cat" / "b.png"
        Image.open(path).rotate(90).save(path)
    elif change == "count":
        shutil.copy(cwds[1] / "data" / "cat" / "a.jpg", cwds[1] / "data" / "cat" / "c.jpg")
    model = ["--model", "tiny-vit"] + ([] if change == "weights" else ["--checkpoint", weights])
    said = _two_ranks_in(cwds, ["audit", *model, "--device", "cpu", "--data", "data", "--n", "2",
                                "--out", "a.json"], tmp_path)
    for _code, stderr in said:
        lines = stderr.strip().splitlines()
        assert "Traceback" not in stderr and [x for x in lines if x.startswith("Error: ")] == lines[-1:], stderr
        assert message in lines[-1]
    assert [code for code, _ in said] == [1, 1]
    assert not any((cwd / "a.json").exists() for cwd in cwds)


@pytest.mark.parametrize("make, message", [
    (lambda: load_edits(123), "path must be a str or PathLike"),
    (lambda: load_edits(""), "path is empty"),
    (lambda: _heads("x", 5), "needs a list of head indices"),
    (lambda: _heads("x", "abc"), "needs a list of head indices"),
    (lambda: _heads("x", [1.5]), "names head 1.5"),
    (lambda: _heads("x", [float("nan")]), "names head nan"),
    (lambda: _heads("x", [-1]), "names head -1"),
    (lambda: _heads("x", [True]), "names head True"),
    (lambda: _heads(5, [1]), "dotted name of an attention module"),
    (lambda: _prefix("t", torch.randn(64), True), "whole number >= 0"),
    (lambda: _prefix("t", torch.randn(64), 2.5), "whole number >= 0"),
    (lambda: _prefix("t", torch.randn(64), -1), "whole number >= 0"),
    (lambda: _prefix("t", "abc", 1), "not a tensor"),
])
def test_hook_members_built_in_python_refuse_bad_values_in_one_line(make, message):
    from clipedit.errors import ClipeditError

    with pytest.raises(ClipeditError, match=message):
        make()


def _heads(*args):
    from clipedit.core.hook_edits import ClsHeadAblation

    return ClsHeadAblation(*args)


def _prefix(*args):
    from clipedit.core.prompt_edits import ClassPrefix

    return ClassPrefix(*args)


def test_the_model_identity_follows_the_weights_not_the_object(tiny_vit):
    import copy

    from clipedit.core.edits import model_identity

    twin = copy.deepcopy(tiny_vit.model)
    assert model_identity(twin) == model_identity(tiny_vit.model)
    with torch.no_grad():
        twin.visual.transformer.resblocks[1].mlp.c_fc.weight[-1, -1] += 1  # the last value: always sampled
    assert model_identity(twin) != model_identity(tiny_vit.model)
    assert model_identity(copy.deepcopy(tiny_vit.model).half()) != model_identity(tiny_vit.model)


def test_the_mini_worlds_reference_key_follows_its_images(monkeypatch):
    """The mini world reads no files; its key digests its first reference images, so that a change of its
    scenes, styles or installed fonts is a new key (it was the count alone)."""
    from PIL import Image

    from clipedit.mini import world as world_module
    from clipedit.models import load_model

    world = load_model("mini", device="cpu").world
    key = world.reference_key(512)
    assert key == world.reference_key(512) and key != world.reference_key(256)
    real = world_module.reference_images
    monkeypatch.setattr(world_module, "reference_images",
                        lambda n, *a, **k: [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in real(n, *a, **k)])
    assert world.reference_key(512) != key


def test_revert_refuses_a_hook_edit_file_saying_why(tiny_vit, tmp_path, capsys):
    from clipedit.core.hook_edits import ClsHeadAblation

    base = save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())
    heads = save_edits(tmp_path / "heads.safetensors", ClsHeadAblation(ATTN, [1], model=tiny_vit.model))
    line = run_error(capsys, "revert", heads, "--model", "tiny-vit", "--checkpoint", base,
                     "--out", tmp_path / "r.safetensors")
    assert "cls-head-ablation member(s) are hooks, never written into weights" in line
    assert not (tmp_path / "r.safetensors").exists()


def _tamper(path: Path, out: Path, name: str, change) -> Path:
    """A copy of edit file ``path`` with tensor ``name`` changed in place by ``change``; metadata kept."""
    tensors = load_file(str(path))
    change(tensors[f"0.{name}"])  # the only member of the set the file holds
    save_file(tensors, str(out), metadata=read_safetensors_metadata(path))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda t: t.view(-1)[0].add_(1e-3), "orig_weight does not match its orig_sha256"),
    (lambda t: t.view(-1)[0].fill_(float("nan")), "NaN or inf in its orig_weight"),
])
def test_revert_refuses_an_edit_whose_original_weight_was_altered(edit_files, tmp_path, capsys, change, message):
    _, edited, edit = edit_files
    bad = _tamper(edit, tmp_path / "bad.safetensors", "orig_weight", change)
    out = tmp_path / "restored.safetensors"
    line = run_error(capsys, "revert", bad, "--model", "tiny-vit", "--checkpoint", edited, "--out", out)
    assert message in line and str(bad) in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["lambda", "directions"])
def test_apply_refuses_an_edit_whose_factors_were_altered(edit_files, tmp_path, capsys, name):
    base, _, edit = edit_files
    bad = _tamper(edit, tmp_path / "bad.safetensors", name, lambda t: t.mul_(1.5))
    out = tmp_path / "applied.safetensors"
    line = run_error(capsys, "apply", bad, "--model", "tiny-vit", "--checkpoint", base, "--out", out)
    assert "does not match its edited_sha256" in line
    assert not out.exists()


def test_nan_in_a_checkpoint_is_refused_on_load(tiny_rn, tmp_path, capsys):
    state = tiny_rn.model.state_dict()
    state["visual.layer3.0.bn3.running_var"][0] = float("nan")
    bad = save_state_dict(tmp_path / "nan.safetensors", state)
    out = tmp_path / "run"
    line = run_error(capsys, "defend", "--model", "tiny-rn", "--checkpoint", bad, "--text", "ipod",
                     "--renders", "2", "--rank", "1", "--no-eval", "--out", out)
    assert "visual.layer3.0.bn3.running_var contains NaN or inf" in line
    assert not out.exists()


def test_nan_weights_are_refused_before_solving(tiny_rn):
    from clipedit.core import resolve_site
    from clipedit.errors import SiteError

    with torch.no_grad():
        tiny_rn.model.visual.layer3[0].bn3.running_var[0] = float("nan")
    with pytest.raises(SiteError, match="bn3.running_var contains NaN or inf"):
        resolve_site(tiny_rn.model, "visual.layer3.0.conv3")


def _stats_entries() -> list[Path]:
    return sorted((cache_dir() / "stats").glob("*.safetensors"))


def _count_computations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = stats_module.key_second_moment
    monkeypatch.setattr(stats_module, "key_second_moment", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("alter", [
    lambda t: t["C"].mul_(3.0),                        # altered values: a different, still valid C
    lambda t: t["C"].diagonal().fill_(-1.0),           # corrupt but parseable: not positive definite
])
def test_an_altered_cache_entry_is_recomputed_with_a_warning(tiny_vit, monkeypatch, caplog, alter):
    model = tiny_vit.model
    calls = _count_computations(monkeypatch)
    ref = reference_batches(model)
    true = key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    (entry,) = _stats_entries()
    tensors = load_file(str(entry))
    alter(tensors)
    save_file(tensors, str(entry), metadata=read_safetensors_metadata(entry))
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    assert torch.equal(again.C, true.C) and len(calls) == 2
    assert "does not match its digest" in caplog.text
    key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    assert len(calls) == 2  # the rewritten entry is sound


def test_a_cache_entry_made_by_other_arguments_is_recomputed(tiny_vit, monkeypatch, caplog):
    model = tiny_vit.model
    calls = _count_computations(monkeypatch)
    ref = reference_batches(model)
    key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    b = key_statistics(model, VIT_SITE, lambda: ref()[:1], data_key="ref-b", forward=model.encode_image)
    a_entry, b_entry = sorted(_stats_entries(), key=lambda p: p.stat().st_mtime_ns)
    shutil.copyfile(a_entry, b_entry)  # entry of ref-a under ref-b's name
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, lambda: ref()[:1], data_key="ref-b", forward=model.encode_image)
    assert "made by other arguments" in caplog.text
    assert torch.equal(again.C, b.C) and len(calls) == 3


def test_wrong_architecture_names_the_first_missing_and_unexpected_keys(tiny_rn, tmp_path, capsys, image_folder):
    ckpt = save_state_dict(tmp_path / "rn.safetensors", tiny_rn.model.state_dict())
    line = run_error(capsys, "audit", "--model", "tiny-vit", "--checkpoint", ckpt, "--data", image_folder)
    assert "missing 31 key(s), first: visual.class_embedding" in line
    assert "unexpected 122 key(s), first: visual.bn1" in line and "wrong shape" in line


def test_a_bad_user_checkpoint_for_mini_is_not_told_to_retrain(tiny_vit, tmp_path, capsys):
    ckpt = save_state_dict(tmp_path / "vit.safetensors", tiny_vit.model.state_dict())
    line = run_error(capsys, "audit", "--model", "mini", "--checkpoint", ckpt, "--n", "4")
    assert "does not fit" in line and "missing" in line
    assert "train-mini" not in line


ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(args_of_rank, tmp_path) -> list[subprocess.Popen]:
    """Launch two ranks by hand (as torchrun would), each with its own arguments."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CLIPEDIT_CACHE": str(tmp_path / "cache")}
        procs.append(subprocess.Popen([sys.executable, "-m", "clipedit", *map(str, args_of_rank(rank))], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    return procs


@pytest.mark.slow
def test_ranks_started_with_different_references_stop_in_one_line(tmp_path, image_folder):
    """Before: both ranks exited 0 and rank 0 cached C from a mix of the two folders under its own key."""
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 64), "white").save(other / "white.png")
    procs = _two_ranks(lambda r: ["stats", "--model", "tiny-vit", "--device", "cpu",
                                  "--reference", image_folder if r == 0 else other], tmp_path)
    for p in procs:
        _, stderr = p.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert p.returncode == 1, stderr[-2000:]
        assert "Traceback" not in stderr and [x for x in lines if x.startswith("Error: ")] == lines[-1:], stderr
        assert "torchrun ranks were started with different arguments" in lines[-1]
    stats = tmp_path / "cache" / "stats"
    assert not stats.exists() or not any(stats.iterdir())  # nothing cached from a mix of folders


@pytest.mark.parametrize("values", [({"n": 2}, {"n": 3}), ({"layer": "a"}, {"layer": "b"}), ({"n": 2}, {"n": 2})])
def test_agree_compares_every_ranks_arguments_first(tmp_path, values):
    """``audit --scenes`` or ``--layer`` differing per rank crashed in gloo before; now every rank stops
    with the same one line (two gloo ranks forked from this process), and equal arguments pass."""
    from clipedit.core.distributed import agree

    store = tmp_path / "store"

    def rank(r):
        def work():
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=2)
            try:
                agree(values[r])
            except clipedit.ClipeditError as e:
                (tmp_path / f"rank{r}.txt").write_text(str(e))
                assert not dist.is_initialized()  # the group is left, so that the process exits cleanly
            else:
                dist.destroy_process_group()
        return work

    pids = [fork_run(rank(r)) for r in range(2)]
    assert [exit_code_of(pid) for pid in pids] == [0, 0]
    said = [(tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists() else None
            for r in range(2)]
    if values[0] == values[1]:
        assert said == [None, None]
    else:
        assert all("2 torchrun ranks were started with different arguments" in x for x in said)


def test_a_cache_entry_of_the_wrong_shape_is_recomputed(tiny_vit, caplog):
    from safetensors.torch import save_file

    from clipedit.core import key_statistics
    from clipedit.core.cache import cache_dir, tensors_digest
    from clipedit.io import read_safetensors_metadata

    model = tiny_vit.model
    ref = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))]
    true = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref", forward=model.encode_image)
    (entry,) = sorted((cache_dir() / "stats").glob("*.safetensors"))
    tensors = load_file(str(entry))
    tensors["C"] = tensors["C"][:-1, :-1].contiguous()  # a smaller C, re-digested: the digest alone passes it
    meta = read_safetensors_metadata(entry)
    meta["digest"] = tensors_digest(tensors)
    save_file(tensors, str(entry), metadata=meta)
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref", forward=model.encode_image)
    assert "has the wrong shape: C" in caplog.text
    assert torch.equal(again.C, true.C)


def test_a_device_symlink_as_edit_file_says_what_it_is(edit_files, tmp_path, capsys):
    link = tmp_path / "edit.safetensors"
    link.symlink_to("/dev/zero")
    line = run_error(capsys, "apply", link, "--model", "tiny-vit", "--checkpoint", edit_files[0], "--out",
                     tmp_path / "o.safetensors")
    assert "is a character device, not a regular file" in line and "not found" not in line


def test_readme_says_digests_are_no_signature(edit_files, tmp_path):
    from clipedit.core.edits import edited_digest

    edit = load_edit(edit_files[2])
    edit.lam = edit.lam * 100  # a forger re-digests the scaled edit: it applies, as the README says
    edit.meta["edited_sha256"] = edited_digest(edit)
    model = clipedit.load_model("tiny-vit", checkpoint=edit_files[0], device="cpu").model
    apply_edit(model, edit)
    readme = (ROOT / "README.md").read_text()
    assert "not forgery" in readme and "sha256sum" in readme
