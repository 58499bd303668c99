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
