"""``clipedit edit-classifier``: a concept edit of an ImageNet classifier from one exemplar, with before/after."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import batch_size_option, check_out_dir, model_options, out_dir_option, seed_option
from clipedit.commands.params import IMAGE_FILE, LAYERS, finite
from clipedit.core import save_edits
from clipedit.core.hparams import SOLVERS
from clipedit.data.folders import LabeledImages, image_paths, load_image_folder
from clipedit.data.images import LazyImages, load_image, load_mask
from clipedit.defenses.concept import (
    CONCEPT_METHODS,
    DIRECTIONS,
    band_mask,
    concept_edit,
    concept_request,
    parse_points,
    photo_pair,
    polygon_mask,
    texture_pair,
)
from clipedit.errors import ClipeditError
from clipedit.eval.metrics import evaluate_images
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import before_after_metrics, format_table, make_record, write_results
from clipedit.io import atomic_output_set, save_image
from clipedit.methods.registry import METHODS
from clipedit.models.checkpoint import save_model_weights
from clipedit.outputs import OutputSet, check_outputs
from clipedit.settings.config import DefenseConfig
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)

OUTPUT_SET = ("model.safetensors", "edit.safetensors", "exemplar_transformed.png", "exemplar_mask.png",
              "results.json")

TASK = "concept_edit"


@click.command("edit-classifier")
@model_options(default="efficientnet-lite0")
@click.option("--exemplar", type=IMAGE_FILE, required=True,
              help="The exemplar photo (e.g. a clear road).")
@click.option("--mask", "mask_path", type=IMAGE_FILE, default=None,
              help="Mask image of the region to transform (white = region).")
@click.option("--mask-band", default=None, metavar="TOP[:BOTTOM]",
              help="Or a horizontal band as fractions of the height, e.g. 0.6 (the lower 40%).")
@click.option("--mask-polygon", default=None, metavar="'x,y x,y x,y'",
              help="Or a polygon with vertices as fractions of the width and height.")
@click.option("--texture", type=IMAGE_FILE, default=None,
              help="Image pasted (tiled) on the masked region, e.g. snow_texture.jpg.")
@click.option("--texture-scale", type=finite(min=0, min_open=True), default=1.0, show_default=True,
              help="Resize the texture by this factor before tiling.")
@click.option("--edited", type=IMAGE_FILE, default=None,
              help="Or a real edited version of the exemplar (same size) instead of --texture.")
@click.option("--direction", type=click.Choice(DIRECTIONS), default="to-original", show_default=True,
              help="to-original: the transformed region is treated like the original (snowy road = road).")
@click.option("--method", type=click.Choice(CONCEPT_METHODS), default="edit", show_default=True,
              help="The rewrite, or a fine-tuning baseline on the same pair.")
@click.option("--layer", type=LAYERS, default=None,
              help="Dotted name of the layer to rewrite (default per architecture).")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="Rank of the update [default: per architecture and model, clipedit/settings/hparams].")
@click.option("--solver", type=click.Choice(SOLVERS), default="closed-form", show_default=True)
@click.option("--mask-threshold", type=finite(0, 1, max_open=True), default=0.0, show_default=True,
              help="Edit feature-map locations covered more than this fraction by the mask.")
@click.option("--cov-reg", type=finite(min=0), default=None,
              help="Regularisation of the key statistics [default: 0.001].")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps of the optimize solver / fine-tuning baselines.")
@click.option("--lr", type=finite(min=0, min_open=True), default=None, help="Their learning rate.")
@click.option("--reference", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of reference images for the key statistics (default: views of scikit-image photos).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageFolder to evaluate on; folders are ImageNet class names, synonyms or indices.")
@click.option("--class-map", "class_maps", multiple=True, metavar="FOLDER=NAME",
              help="Map a data folder to an ImageNet class (name, synonym, WordNet id or index); repeatable.")
@click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation.")
@batch_size_option(32)
@seed_option()
@out_dir_option(required=True)
def edit_classifier(model, exemplar, mask_path, mask_band, mask_polygon, texture, texture_scale, edited,
                    direction, method, layer, rank, solver, mask_threshold, cov_reg, steps, lr, reference,
                    data, class_maps, no_eval, batch_size, seed, out) -> None:
    """Edit a classifier so that a transformed region (e.g. snow pasted on a road) is treated like the original."""
    import torch

    torch.manual_seed(seed)
    out = check_out_dir(out)
    check_outputs({"--out": OutputSet(out, OUTPUT_SET)},
                  inputs={"--checkpoint": model.checkpoint, "--exemplar": exemplar, "--mask": mask_path,
                          "--texture": texture, "--edited": edited, "--reference": reference, "--data": data})
    if (texture is None) == (edited is None):
        raise ClipeditError("give exactly one of --texture (paste it on the mask) or --edited (a real edited photo)")
    if data is None and not no_eval:
        raise ClipeditError("pass --data DIR to evaluate before/after (or --no-eval)")
    photo = load_image(exemplar)
    mask = _exemplar_mask(photo.size, mask_path, mask_band, mask_polygon)
    pair = texture_pair(photo, mask, load_image(texture), texture_scale) if texture is not None \
        else photo_pair(photo, load_image(edited), mask)
    evaluation = None if no_eval else _imagenet_folder(data, _parse_class_map(class_maps), exemplar)
    ref_images = _reference_images(reference) if reference is not None else None
    bundle = model.load()
    if bundle.kind != "classifier" or not bundle.classnames:
        raise ClipeditError(f"{bundle.name} is not an ImageNet classifier (try efficientnet-lite0, timm/resnet50 …)")
    config = _concept_config(bundle, method, layer, rank, solver, mask_threshold, cov_reg, steps, lr)
    if config.caution:  # the model's default site and rank, with a measured weakness
        click.echo(f"Warning: {config.caution}", err=True)
    scores = _scorer(bundle, evaluation, batch_size)
    before = scores()
    result = concept_edit(bundle, concept_request(bundle.preprocess, [pair], direction), config, reference=ref_images)
    after = scores()
    transformation = f"texture {texture} x{texture_scale}" if texture is not None else f"edited {edited}"
    record = _record(bundle, result, evaluation, before, after, seed, data, direction=direction,
                     exemplar=str(exemplar), transformation=transformation,
                     checkpoint=str(model.checkpoint) if model.checkpoint else None)
    _write_outputs(out, bundle, result, pair, record, exemplar)
    if before is not None:
        rows = [(k, before[k], after[k]) for k in ("top1", "top5", "mean_per_class_recall") if k in before]
        click.echo(format_table(rows, header=["", "before", "after"]))
    click.echo(f"{result.method} of {result.layer}; wrote {out}/"
               + (" edit.safetensors," if result.edit_set is not None else "") + " model.safetensors, results.json")


def _concept_config(bundle, method, layer, rank, solver, mask_threshold, cov_reg, steps, lr) -> DefenseConfig:
    """The user's settings over the model's defaults (``resolve_config``, as every command)."""
    if METHODS[method].model_defaults:  # the rewrite: steps and lr are its optimize solver's
        given = {"rank": rank, "solver": solver, "mask_threshold": mask_threshold, "cov_reg": cov_reg,
                 **({"steps": steps, "lr": lr} if solver == "optimize" else {})}
    else:  # a fine-tuning baseline, on the classifier's logits
        given = {"steps": steps, "lr": lr, "loss": "kl"}
    return resolve_config(bundle, {"method": method, "layer": layer, **given})


def _scorer(bundle, evaluation, batch_size: int):
    """Scores the model on the evaluation folder as it is when called (None without one)."""
    if evaluation is None:
        return lambda: None
    eval_set, labels, _ = evaluation
    predictor = make_predictor(bundle, bundle.classnames)
    return lambda: evaluate_images(bundle, predictor, eval_set.images, labels, batch_size)


def _record(bundle, result, evaluation, before, after, seed, data, **extra) -> dict:
    """The results record (one writer): before/after top-1/top-5 when evaluated."""
    fields = {"method": result.method, "layer": result.layer, "hparams": result.config["hparams"],
              "config": result.config, **extra}
    if evaluation is None:
        return make_record(dataset="none", bundle=bundle, task=TASK, metrics={}, classnames=[], templates=None,
                           words=None, seed=seed, n=0, **fields)
    _, labels, folder_ids = evaluation
    folder_classes = {name: bundle.classnames[i] for name, i in folder_ids.items()}
    return make_record(dataset=str(data), bundle=bundle, task=TASK, metrics=before_after_metrics(before, after),
                       before=_strip(before), after=_strip(after), classnames=bundle.classnames, templates=None,
                       words=None, seed=seed, n=len(labels), folder_classes=folder_classes, **fields)


def _write_outputs(out: Path, bundle, result, pair, record: dict, exemplar: Path) -> None:
    meta = {"model": bundle.name, "source": bundle.source, "method": result.method, "layer": result.layer,
            "task": TASK, "exemplar": str(exemplar)}
    with atomic_output_set(out, replaces=OUTPUT_SET) as stage:  # the whole set of this run, or none
        save_model_weights(stage / "model.safetensors", bundle, metadata=meta)
        if result.edit_set is not None:
            save_edits(stage / "edit.safetensors", result.edit_set)
        save_image(stage / "exemplar_transformed.png", pair.transformed)
        save_image(stage / "exemplar_mask.png", _mask_image(pair.mask))
        write_results(stage / "results.json", record)


def _exemplar_mask(size, mask_path: Optional[Path], band: Optional[str], polygon: Optional[str]):
    given = [x is not None for x in (mask_path, band, polygon)]
    if sum(given) != 1:
        raise ClipeditError("give exactly one of --mask FILE, --mask-band TOP[:BOTTOM] or --mask-polygon POINTS")
    if mask_path is not None:
        mask = load_mask(mask_path)
        if mask.shape != (size[1], size[0]):
            raise ClipeditError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}; "
                                f"the exemplar is {size[0]}x{size[1]}")
        return mask
    if band is not None:
        try:
            parts = [float(v) for v in band.split(":")]
        except ValueError:
            raise ClipeditError(f"cannot read --mask-band {band!r}; expected TOP or TOP:BOTTOM fractions") from None
        return band_mask(size, parts[0], parts[1] if len(parts) > 1 else 1.0)
    return polygon_mask(size, parse_points(polygon))


def _parse_class_map(items) -> dict[str, str]:
    out = {}
    for item in items:
        folder, eq, name = item.partition("=")
        if not eq or not folder.strip() or not name.strip():
            raise ClipeditError(f"--class-map expects FOLDER=IMAGENET_NAME, got {item!r}")
        out[folder.strip()] = name.strip()
    return out


def _imagenet_folder(data: Path, class_map: dict[str, str], exemplar: Path
                     ) -> tuple[LabeledImages, list[int], dict[str, int]]:
    """The ImageFolder, its labels as ImageNet indices and the folder -> index map; the exemplar is left out."""
    from clipedit.models.classifiers import map_folder_classes

    folder = load_image_folder(data)
    dirs = [folder.paths[folder.labels.index(c)].relative_to(data).parts[0] for c in range(len(folder.classnames))]
    ids = map_folder_classes(dirs, class_map)
    digest = _md5(exemplar)
    keep = [i for i, p in enumerate(folder.paths) if _md5(p) != digest]
    if len(keep) < len(folder.paths):
        log.warning("leaving the exemplar out of the evaluation (%d file(s))", len(folder.paths) - len(keep))
        if not keep:
            raise ClipeditError(f"no images left in {data} once the exemplar is left out")
    paths = [folder.paths[i] for i in keep]
    kept = LabeledImages(LazyImages(paths), [folder.labels[i] for i in keep], folder.classnames, paths)
    return kept, [ids[label] for label in kept.labels], dict(zip(dirs, ids))


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _reference_images(folder: Path):
    return [load_image(p) for p in image_paths(folder, "reference folder")]


def _mask_image(mask):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)


def _strip(metrics: Optional[dict]) -> Optional[dict]:
    return None if metrics is None else {k: v for k, v in metrics.items() if k != "predictions"}
