"""The one edit type: sealed edit sets of weight and hook members, one loader for every file clipedit wrote,
and tampered or malformed sets refused whole, in one line, before anything is applied (issue 21, items 3, 8)."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch
from conftest import VIT_SITE, defend_args, run_cli, run_error, run_ok
from safetensors.torch import load_file, save_file

from clipedit.core import (
    EditSet,
    LayerEdit,
    apply_edit_set,
    load_edit,
    load_edits,
    register_edit_kind,
    resolve_site,
    revert_edit_set,
    save_edits,
)
from clipedit.core.nethook import get_module
from clipedit.errors import EditError
from clipedit.io import bundled_assets, read_safetensors_metadata
from clipedit.models import load_model, save_state_dict

SITES = ("visual.layer2.0.conv3", "visual.layer3.0.conv3")


def weight_edits(bundle, sites=SITES, rank=2) -> list[LayerEdit]:
    """Random rank-``rank`` edits of ``sites``, each made on the weights the previous left."""
    gen = torch.Generator().manual_seed(0)
    edits = []
    model = copy.deepcopy(bundle.model)
    for layer in sites:
        site = resolve_site(model, layer)
        out, key_dim = site.weight_matrix().shape
        edit = LayerEdit.create(layer, 1e-2 * torch.randn(out, rank, generator=gen),
                                torch.randn(key_dim, rank, generator=gen), site.weight, {"model": bundle.name})
        edit.apply(model)
        edits.append(edit)
    return edits


@dataclass
class ScaleOutput:
    """A hook edit for the tests: multiplies a module's output by ``factor`` through a forward hook."""

    kind: ClassVar[str] = "test-scale-output"
    exportable: ClassVar[bool] = False
    layer: str
    factor: torch.Tensor
    meta: dict = field(default_factory=dict)
    handles: list = field(default_factory=list)

    def apply(self, model) -> None:
        self.handles.append(get_module(model, self.layer).register_forward_hook(lambda m, i, o: o * self.factor))

    def revert(self, model) -> None:
        if not self.handles:
            raise EditError(f"{self.layer}: this hook edit is not applied")
        self.handles.pop().remove()

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"factor": self.factor}

    @classmethod
    def from_tensors(cls, layer, tensors, meta):
        return cls(layer, tensors["factor"], dict(meta))

    def digest(self) -> str:
        return hashlib.sha256(f"{self.kind}:{self.layer}:{self.factor.tolist()}".encode()).hexdigest()


register_edit_kind(ScaleOutput.kind, ScaleOutput)


def rewrite_header(path, out, change) -> None:
    """A copy of edit file ``path`` whose header metadata ``change`` rewrote (tensors kept)."""
    meta = read_safetensors_metadata(path)
    change(meta)
    save_file(load_file(str(path)), str(out), metadata=meta)


def members_changed(change, reseal: bool):
    """A header change of the ``members`` list; ``reseal``: the seal recomputed to match (a careful forger)."""
    from clipedit.core.edit_sets import seal_of

    def apply(meta):
        members = json.loads(meta["members"])
        members = change(members)
        meta["members"] = json.dumps(members)
        if reseal and isinstance(members, list):
            meta["seal"] = seal_of([(m["kind"], m["layer"], m["digest"]) for m in members])
    return apply


# -- round trips -----------------------------------------------------------------------------------------
def test_a_set_round_trips_sealed_and_applies_and_reverts_bit_exactly(tiny_rn, tmp_path):
    edits = weight_edits(tiny_rn)
    path = save_edits(tmp_path / "set.safetensors", EditSet(edits, {"words": ["ipod"]}))
    header = read_safetensors_metadata(path)
    assert header["format"] == "clipedit-edits/2" and len(json.loads(header["members"])) == 2
    loaded = load_edits(path)
    assert loaded.layers == list(SITES) and loaded.meta["words"] == ["ipod"] and loaded.seal() == header["seal"]
    before = copy.deepcopy(tiny_rn.model.state_dict())
    apply_edit_set(tiny_rn.model, loaded)
    assert not torch.equal(before[f"{SITES[1]}.weight"], tiny_rn.model.state_dict()[f"{SITES[1]}.weight"])
    revert_edit_set(tiny_rn.model, loaded)
    assert all(torch.equal(before[k], v) for k, v in tiny_rn.model.state_dict().items())
    # one member saved alone is a set of one; load_edit reads it back as the LayerEdit it is
    single = save_edits(tmp_path / "one.safetensors", edits[0])
    assert load_edit(single).layer == SITES[0] and len(load_edits(single).edits) == 1
    with pytest.raises(EditError, match="holds an edit set of 2 members"):
        load_edit(path)


def test_weight_and_hook_members_in_one_set(tiny_rn, tmp_path):
    edits = weight_edits(tiny_rn, SITES[:1])
    hook = ScaleOutput("visual.layer4", torch.tensor(0.5))
    path = save_edits(tmp_path / "mixed.safetensors", EditSet([edits[0], hook]))
    loaded = load_edits(path)
    assert [m.kind for m in loaded.edits] == ["weight", ScaleOutput.kind] and not loaded.exportable
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = tiny_rn.model.encode_image(x)
        apply_edit_set(tiny_rn.model, loaded)
        edited = tiny_rn.model.encode_image(x)
        revert_edit_set(tiny_rn.model, loaded)
        again = tiny_rn.model.encode_image(x)
    assert not torch.allclose(plain, edited) and torch.equal(plain, again)
    # load_model(..., edits=[FILE]) applies it (hooks included) and keeps the applied set
    base = save_state_dict(tmp_path / "base.safetensors", tiny_rn.model.state_dict())
    bundle = load_model("tiny-rn", checkpoint=base, device="cpu", edits=[path])
    assert bundle.extra["edits"][0].layers == loaded.layers and len(bundle.extra["edits"][0].edits[1].handles) == 1


def test_apply_refuses_a_set_that_needs_hooks_in_one_line(tiny_rn, tmp_path, capsys):
    path = save_edits(tmp_path / "hook.safetensors", EditSet([ScaleOutput("visual.layer4", torch.tensor(0.5))]))
    line = run_error(capsys, "apply", path, "--model", "tiny-rn", "--out", tmp_path / "w.safetensors")
    assert "needs clipedit's hooks" in line or "need clipedit's hooks" in line
    assert "audit --edit FILE" in line and not (tmp_path / "w.safetensors").exists()


# -- a tampered set is refused whole, before anything is applied -------------------------------------------
@pytest.mark.parametrize("change, reseal, message", [
    (lambda m: m[:-1], False, "seal does not match"),                     # an entry removed from the list
    (lambda m: m[::-1], False, "seal does not match"),                    # reordered
    (lambda m: m[:-1], True, "belong to no member"),                      # removed and resealed: tensors left over
    (lambda m: [], True, "lists no members"),                             # emptied
    (lambda m: [{**m[0], "digest": m[1]["digest"]}, m[1]], True, "does not match its digest"),
])
def test_a_tampered_set_is_refused_by_apply_and_revert(tiny_rn, tmp_path, capsys, change, reseal, message):
    base = save_state_dict(tmp_path / "base.safetensors", tiny_rn.model.state_dict())
    good = save_edits(tmp_path / "set.safetensors", EditSet(weight_edits(tiny_rn)))
    bad = tmp_path / "bad.safetensors"
    rewrite_header(good, bad, members_changed(change, reseal))
    for command in ("apply", "revert"):
        out = tmp_path / f"{command}.safetensors"
        line = run_error(capsys, command, bad, "--model", "tiny-rn", "--checkpoint", base, "--out", out)
        assert message in line and str(bad) in line
        assert not out.exists()


# -- malformed metadata: one Error line, never a traceback ------------------------------------------------
@pytest.mark.parametrize("key, value, message", [
    ("members", "5", "is not a list"),
    ("members", "[1, 2]", "member 0 of its header is not an object"),
    ("members", "{}", "is not a list"),
    ("members", "not json", "is not JSON"),
    ("members", '[{"kind": "weight", "digest": "x"}]', "names no layer"),
    ("members", '[{"kind": "nope", "layer": "a", "digest": "x", "meta": {}}]', "seal does not match"),
])
def test_malformed_metadata_is_one_line(tiny_rn, tmp_path, capsys, key, value, message):
    save_edits(tmp_path / "e.safetensors", EditSet(weight_edits(tiny_rn)))
    rewrite_header(tmp_path / "e.safetensors", tmp_path / "bad.safetensors", lambda meta: meta.update({key: value}))
    line = run_error(capsys, "apply", tmp_path / "bad.safetensors", "--model", "tiny-rn",
                     "--out", tmp_path / "w.safetensors")
    assert message in line


def test_an_unknown_kind_is_one_line(tiny_rn, tmp_path, capsys):
    from clipedit.core.edit_sets import seal_of

    edit = weight_edits(tiny_rn, SITES[:1])[0]
    save_edits(tmp_path / "s.safetensors", EditSet([edit]))

    def unknown(meta):
        members = json.loads(meta["members"])
        members[0]["kind"] = "from-the-future"
        meta["members"] = json.dumps(members)
        meta["seal"] = seal_of([(m["kind"], m["layer"], m["digest"]) for m in members])
    rewrite_header(tmp_path / "s.safetensors", tmp_path / "bad2.safetensors", unknown)
    assert "which this clipedit does not know" in run_error(capsys, "apply", tmp_path / "bad2.safetensors",
                                                            "--model", "tiny-rn", "--out", tmp_path / "w.safetensors")


def test_an_edit_set_applied_by_audit_edit(tiny_rn, tmp_path, capsys, image_folder):
    base = save_state_dict(tmp_path / "base.safetensors", tiny_rn.model.state_dict())
    path = save_edits(tmp_path / "set.safetensors", EditSet(weight_edits(tiny_rn)))
    out = tmp_path / "a.json"
    run_ok(capsys, "audit", "--model", "tiny-rn", "--checkpoint", base, "--edit", path, "--data", image_folder,
           "--n", "2", "--out", out)
    assert json.loads(out.read_text())["edits"] == [str(path)]


def test_fp16_sources_stay_fp16_and_revert_bit_exactly(tiny_vit, tmp_path, capsys):
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_vit.model.state_dict().items()}
    base = save_state_dict(tmp_path / "base16.safetensors", state)
    out = tmp_path / "run"
    code, _, err = run_cli(defend_args(base, out), capsys)
    assert code == 0, err
    source, edited = load_file(str(base)), load_file(str(out / "model.safetensors"))
    changed = {k for k in source if not torch.equal(source[k], edited[k])}
    assert changed == {f"{VIT_SITE}.weight"}  # every other tensor: the source's fp16 bytes
    assert edited[f"{VIT_SITE}.weight"].dtype == torch.float32  # the edit itself is not rounded away
    restored_path = tmp_path / "restored.safetensors"
    code, _, err = run_cli(["revert", out / "edit.safetensors", "--model", "tiny-vit", "--checkpoint",
                            out / "model.safetensors", "--out", restored_path], capsys)
    assert code == 0, err
    restored = load_file(str(restored_path))
    assert all(restored[k].dtype == source[k].dtype and torch.equal(restored[k], source[k]) for k in source)
    assert restored_path.stat().st_size < 1.1 * base.stat().st_size


@pytest.mark.slow
def test_mini_vit_keeps_fp16_and_reverts_bit_exactly(tmp_path, capsys):
    out = tmp_path / "run"
    layer = "visual.transformer.resblocks.0.mlp.c_proj"
    run_ok(capsys, "defend", "--model", "mini-vit", "--layer", layer, "--rank", "2", "--renders", "2",
           "--no-eval", "--out", out)
    source = {**{k: v for k, v in load_file(str(bundled_assets() / "mini" / "model.safetensors")).items()
                 if not k.startswith("visual.")},
              **load_file(str(bundled_assets() / "mini-vit" / "visual.safetensors"))}
    edited = load_file(str(out / "model.safetensors"))
    assert set(edited) == set(source)
    wider = {k for k in source if edited[k].dtype != source[k].dtype}
    assert wider == {f"{layer}.weight"}  # every other tensor keeps the source's fp16
    meta = load_edit(out / "edit.safetensors").meta
    assert meta["stored_dtypes"] == {f"{layer}.weight": {"source": "float16", "stored": "float32"}}
    restored_path = tmp_path / "restored.safetensors"
    run_ok(capsys, "revert", out / "edit.safetensors", "--model", "mini-vit", "--checkpoint",
           out / "model.safetensors", "--out", restored_path)
    restored = load_file(str(restored_path))
    assert all(restored[k].dtype == source[k].dtype and torch.equal(restored[k], source[k]) for k in source)


@pytest.mark.slow
def test_the_rank_recorded_is_the_rank_used(edit_files, tmp_path, capsys):
    out = tmp_path / "run"
    run_ok(capsys, *defend_args(edit_files[0], out, "--rank", "100000"))
    edit = load_edit(out / "edit.safetensors")
    assert edit.meta["hparams"]["rank"] == edit.rank < 100000
    assert edit.meta["hparams"]["rank_requested"] == 100000
    assert json.loads((out / "results.json").read_text())["hparams"]["rank"] == edit.rank
