"""``clipedit defend --text iPod``: rewrite one layer so written words stop steering the model."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import (
    GreedyCommand,
    GreedyOption,
    check_out_dir,
    class_list,
    model_options,
    out_dir_option,
    seed_option,
    split_list,
)
from clipedit.core import RewriteHParams, save_edit
from clipedit.core.hparams import SOLVERS
from clipedit.data.images import load_image, load_mask, load_photos
from clipedit.defenses.defaults import defaults_for
from clipedit.defenses.edit_requests import request_from_images
from clipedit.defenses.finetune import FinetuneHParams
from clipedit.defenses.methods import METHODS
from clipedit.defenses.typographic import DefenseConfig, defend
from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import comparison_rows, evaluate_defense
from clipedit.eval.heldout import folder_eval_sets, world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table, make_record, write_results
from clipedit.io import save_state_dict

log = logging.getLogger(__name__)


@click.command(cls=GreedyCommand)
@model_options(default="mini")
@click.option("--text", "texts", multiple=True, default=("ipod",), show_default=True,
              help="Word(s) to defend against (repeat or comma-separate; several make one joint edit).")
@click.option("--method", type=click.Choice(METHODS), default="edit", show_default=True,
              help="The rewrite, or a fine-tuning baseline on the same exemplars.")
@click.option("--layer", default=None, help="Dotted name of the layer to rewrite (default per architecture).")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Rank of the update [default: per architecture, clipedit/defenses/defaults.json].")
@click.option("--solver", type=click.Choice(SOLVERS), default="closed-form", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps of the optimize solver / fine-tuning baselines.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Their learning rate.")
@click.option("--renders", type=click.IntRange(min=1), default=None,
              help="Rendered exemplars per word [default: per architecture, defaults.json].")
@click.option("--mask-kind", type=click.Choice(["text", "label"]), default=None,
              help="Edit the glyphs' locations or the whole label's.")
@click.option("--exemplar", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A real attacked photo (with --blank and --mask) instead of rendered exemplars.")
@click.option("--blank", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The same photo with a blank note.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Mask image of the text (white = text).")
@click.option("--photos", cls=GreedyOption, type=click.Path(dir_okay=False, path_type=Path),
              help="Photos to render exemplars on instead of the model's world (default: mini: its world; others: scikit-image samples).")
@click.option("--reference", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of reference images for the key statistics.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageFolder to evaluate on (default: the model's world's held-out scenes, where it has them).")
@click.option("--classes", default=None, help="Class names for --data (comma-separated).")
@click.option("--n-eval", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out scenes per set (models whose world generates them, e.g. mini).")
@click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation.")
@seed_option()
@out_dir_option(required=False, help="Output directory [default: runs/defend-WORDS].")
def defend_cmd(model, texts, method, layer, rank, solver, steps, lr, renders, mask_kind, exemplar, blank,
               mask_path, photos, reference, data, classes, n_eval, no_eval, seed, out) -> None:
    """Rewrite one layer so that written WORDS no longer steer the model, and report before/after."""
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    out = check_out_dir(out or Path("runs") / ("defend-" + _slug("-".join(words))))
    photo_images = load_photos(photos) if photos else None
    bundle = model.load()
    config = _config(bundle, method, layer, rank, solver, steps, lr, renders, mask_kind, seed, reference, photo_images)
    request = _photo_request(bundle, exemplar, blank, mask_path)

    sets = predictor = None
    if not no_eval:
        names = class_list(classes, None)
        if data is not None:
            sets = folder_eval_sets(data, words, names or bundle.classnames, per_image=1)
        elif bundle.world is not None and bundle.world.classnames:
            if names is not None:
                raise ClipeditError(f"--classes goes with --data: {bundle.world.name}'s held-out scenes have "
                                    "their own classes")
            sets = world_eval_sets(bundle.world, words, n_eval)
        else:
            raise ClipeditError(f"no evaluation data for {bundle.name}: pass --data DIR (or --no-eval)")
        predictor = make_predictor(bundle, sets.classnames)
        click.echo(f"evaluating {bundle.name} before the {method} …", err=True)
        before = evaluate_defense(bundle, predictor, sets)

    defense = defend(bundle, words, config, request=request)

    record_extra = {"method": method, "layer": defense.layer, "defended_words": words}
    if defense.edit is not None:
        record_extra["hparams"] = defense.edit.meta["hparams"]
    rows = None
    if sets is not None:
        after = evaluate_defense(bundle, predictor, sets)
        rows = comparison_rows(before, after)
        record = make_record(dataset=sets.dataset, bundle=bundle, task="typographic_defense",
                             metrics={"before": before, "after": after}, classnames=sets.classnames,
                             templates=predictor.templates, words=words, seed=seed, n=before["n"],
                             **record_extra)
    else:
        record = make_record(dataset="none", bundle=bundle, task="typographic_defense", metrics={},
                             classnames=[], templates=None, words=words, seed=seed, n=0, **record_extra)

    meta = {"model": bundle.name, "source": bundle.source, "method": method, "layer": defense.layer,
            "words": words}
    save_state_dict(out / "model.safetensors", bundle.model.state_dict(), metadata=meta)
    if defense.edit is not None:
        save_edit(out / "edit.safetensors", defense.edit)
    write_results(out / "results.json", record)

    if rows:
        click.echo(format_table(rows, header=["", "before", "after"]))
    click.echo(f"{method} of {defense.layer} against {', '.join(words)}; wrote {out}/"
               + (" edit.safetensors," if defense.edit is not None else "") + " model.safetensors, results.json")


def _config(bundle, method, layer, rank, solver, steps, lr, renders, mask_kind, seed, reference,
            photos) -> DefenseConfig:
    """The defense settings: what the user gave, the model's defaults (``defaults.json``) for the rest."""
    defaults = defaults_for(bundle)
    hp = dict(layer=layer or defaults.layer, rank=rank or defaults.rank, cov_reg=defaults.cov_reg, solver=solver)
    if solver == "optimize":
        hp.update({k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None})
    ft = FinetuneHParams(**{k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None})
    return DefenseConfig(method=method, hparams=RewriteHParams(**hp), renders=renders, seed=seed, mask=mask_kind,
                         reference=reference, photos=photos, finetune=ft)


def _photo_request(bundle, exemplar: Optional[Path], blank: Optional[Path], mask: Optional[Path]):
    given = [p is not None for p in (exemplar, blank, mask)]
    if not any(given):
        return None
    if not all(given):
        raise ClipeditError("a real exemplar needs all of --exemplar, --blank and --mask")
    return request_from_images(bundle.preprocess, [load_image(exemplar)], [load_image(blank)], [load_mask(mask)])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "words"
