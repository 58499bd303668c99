"""``clipedit apply`` / ``clipedit revert``: put edit files on a model, or take them off bit-exactly."""
from __future__ import annotations

from pathlib import Path

import click

from clipedit.commands.options import check_out_file, model_options
from clipedit.commands.params import EDIT_FILE
from clipedit.core.edit_sets import apply_edit_set, load_edits, revert_edit_set
from clipedit.errors import ClipeditError
from clipedit.models.checkpoint import save_model_weights
from clipedit.outputs import check_outputs


def _target(out: Path, checkpoint, edits) -> Path:
    out = check_out_file(out)
    if checkpoint is not None and Path(checkpoint).resolve() == out.resolve():
        raise ClipeditError("--out must differ from --checkpoint (a source checkpoint is never overwritten)")
    check_outputs({"--out": out}, inputs={"--checkpoint": checkpoint, "EDITS": edits})
    return out


@click.command("apply")
@model_options(default="mini")
@click.argument("edits", nargs=-1, required=True, type=EDIT_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the edited weights (.safetensors).")
@click.option("--force", is_flag=True, help="Apply even if the layer's weights differ from the edit's original.")
def apply_cmd(model, edits, out, force) -> None:
    """Apply EDITS (in order) to a model and save the edited weights."""
    out = _target(out, model.checkpoint, edits)
    loaded = [load_edits(p) for p in edits]  # every file is checked whole before anything is applied
    _weights_only(edits, loaded, "need clipedit's hooks to run; load it with load_model(..., edits=[FILE]) or "
                                 "audit --edit FILE")
    bundle = model.load()
    for path, edit in zip(edits, loaded):
        try:
            apply_edit_set(bundle.model, edit, check_weights=not force)
        except ClipeditError as e:
            raise ClipeditError(f"{path}: {e}") from None
    save_model_weights(out, bundle, metadata={"model": bundle.name, "source": bundle.source,
                                                               "edits": [str(p) for p in edits]})
    click.echo(f"applied {len(loaded)} edit(s) to {bundle.name}; wrote {out}")


def _weights_only(paths, loaded, why: str) -> None:
    """Refuse edit files with members that are not plain weights (hooks), saying ``why`` for the command."""
    for path, edit_set in zip(paths, loaded):
        if not edit_set.exportable:
            kinds = sorted({m.kind for m in edit_set.edits if not m.exportable})
            raise ClipeditError(f"{path}: its {', '.join(kinds)} member(s) {why}")


@click.command("revert")
@model_options(default="mini")
@click.argument("edits", nargs=-1, required=True, type=EDIT_FILE)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the restored weights (.safetensors).")
def revert_cmd(model, edits, out) -> None:
    """Take EDITS off an edited checkpoint (last first), restoring the original weights bit-exactly."""
    if model.checkpoint is None:
        raise ClipeditError("revert needs the edited weights: pass --checkpoint EDITED.safetensors")
    out = _target(out, model.checkpoint, edits)
    loaded = [load_edits(p) for p in edits]
    _weights_only(edits, loaded, "are hooks, never written into weights: a checkpoint holds nothing of them to "
                                 "revert (run without the edit file instead)")
    bundle = model.load()
    for path, edit in reversed(list(zip(edits, loaded))):
        try:
            revert_edit_set(bundle.model, edit)
        except ClipeditError as e:
            raise ClipeditError(f"{path}: {e}") from None
    # the source checkpoint's own metadata (not the edits' paths): all edits reverted, the file is byte-identical
    save_model_weights(out, bundle, metadata={"model": bundle.name}, original=True)
    click.echo(f"reverted {len(loaded)} edit(s); wrote {out}")
