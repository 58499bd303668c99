"""``clipedit audit``: how much a model's predictions follow written words (clean / blank note / text note)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import click
from PIL import Image

from attacks import Attack
from clipedit.commands.options import (
    GreedyCommand,
    GreedyOption,
    ModelOptions,
    batch_size_option,
    check_out_file,
    class_list,
    model_options,
    out_file_option,
    seed_option,
    split_list,
    template_list,
)
from clipedit.data.classnames import check_classnames, labels_from_names, remap_labels
from clipedit.data.folders import load_image_folder
from clipedit.data.images import load_photos
from clipedit.errors import ClipeditError
from clipedit.eval.attack_sets import attacks_from_photos
from clipedit.eval.heldout import world_attack_set
from clipedit.eval.metrics import evaluate_attacks
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table, make_record, write_results

log = logging.getLogger(__name__)

WORLD_SCENES = 120  # default size of a world's held-out set (e.g. the mini world's)
TASK = "typographic_audit"


@dataclass
class AuditSet:
    """Attacks to evaluate, with their labels and where they came from.

    Attributes:
        attacks: rendered attacks.
        labels: true class of each attack, into ``classnames``.
        classnames: the class list.
        dataset: a name for the results record.
        n_photos: distinct photos (scenes) behind the attacks.
    """

    attacks: list[Attack]
    labels: list[int]
    classnames: list[str]
    dataset: str
    n_photos: int


@dataclass
class PhotoSource:
    """Labelled photos to attack: ``images[i]`` is of class ``classnames[labels[i]]``."""

    images: Sequence[Image.Image]
    labels: list[int]
    classnames: list[str]
    dataset: str

    def render(self, words: Optional[list[str]], n: Optional[int], seed: int) -> AuditSet:
        """Write ``words`` (default: the class names) on every photo, skipping its own class."""
        attacks, labels = attacks_from_photos(self.images, self.labels, self.classnames,
                                              words or self.classnames, n, seed)
        return AuditSet(attacks, labels, self.classnames, self.dataset, len(self.images))


def folder_source(data: Path, classnames: Optional[list[str]]) -> PhotoSource:
    """An ImageFolder's images; classes default to its folder names."""
    folder = load_image_folder(data)
    classnames = classnames or folder.classnames
    return PhotoSource(folder.images, remap_labels(folder.labels, folder.classnames, classnames),
                       classnames, str(data))


def photos_source(photos: Sequence[Path], label_names: list[str],
                  classnames: Optional[list[str]]) -> PhotoSource:
    """Loose photos labelled by name; classes default to the distinct labels."""
    if len(label_names) != len(photos):
        raise ClipeditError(f"got {len(photos)} photos but {len(label_names)} labels (give one label per photo)")
    images = load_photos(photos)
    classnames = classnames or list(dict.fromkeys(label_names))
    return PhotoSource(images, labels_from_names(label_names, classnames), classnames, "photos")


def world_set(world, classnames: Optional[list[str]], words: Optional[list[str]], n: Optional[int]) -> AuditSet:
    """A world's held-out attack set (test split; held-out styles; words of other classes by default)."""
    attacks, labels = world_attack_set(world, n or WORLD_SCENES, "test", words or "other")
    names = classnames or list(world.classnames)
    labels = remap_labels(labels, list(world.classnames), names)
    return AuditSet(attacks, labels, names, world.name, len(attacks))


def result_rows(metrics: dict[str, Any]) -> list[tuple[str, Optional[float], int]]:
    """The printed table's rows: (set, rate, n)."""
    return [("clean", metrics["clean_acc"], metrics["n"]),
            ("blank note", metrics["blank_acc"], metrics["n"]),
            ("text note", metrics["text_acc"], metrics["n_text"]),
            ("attack success", metrics["attack_success_rate"], metrics["n_word_in_classes"])]


@click.command(cls=GreedyCommand)
@model_options()
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageFolder directory: DIR/<class>/<image>.")
@click.option("--photos", cls=GreedyOption, type=click.Path(path_type=Path), metavar="PHOTO...",
              help="Photos to attack (with --labels).")
@click.option("--labels", "label_args", cls=GreedyOption, metavar="L...",
              help="Class name of each photo (space- or comma-separated).")
@click.option("--classes", default=None, metavar="a,b,c", help="Class list (default: folder names or labels).")
@click.option("--classes-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Class list, one name per line.")
@click.option("--templates-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Prompt templates with '{}', one per line (default: the model's).")
@click.option("--words", default=None, metavar="w1,w2", help="Words to write (default: the other class names).")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help=f"World scenes (default {WORLD_SCENES}). Photos: random words each (default: every word).")
@seed_option()
@batch_size_option()
@out_file_option(help="Write the results as JSON (clip_benchmark layout) here.")
def audit(model: ModelOptions, data: Optional[Path], photos: tuple[Path, ...], label_args: tuple[str, ...],
          classes: Optional[str], classes_file: Optional[Path], templates_file: Optional[Path],
          words: Optional[str], n: Optional[int], seed: int, batch_size: int, out: Optional[Path]) -> None:
    """Measure a model's accuracy on clean photos, with a blank note, and with a written note.

    Attack success is how often the prediction becomes the written word. Without --data or
    --photos, a model that brings a world (e.g. mini) is audited on its held-out scenes (test split).
    """
    classnames = class_list(classes, classes_file)
    templates = template_list(templates_file)
    word_list = split_list(words)
    if word_list is not None and not word_list:
        raise ClipeditError("the word list is empty")
    label_names = [name for arg in label_args for name in split_list(arg) or []]
    if data is not None and photos:
        raise ClipeditError("give either --data or --photos, not both")
    if label_names and not photos:
        raise ClipeditError("--labels goes with --photos")
    if photos and not label_names:
        raise ClipeditError("--photos needs --labels (the class name of each photo)")
    if out is not None:
        check_out_file(out)
    if classnames is not None:
        check_classnames(classnames)

    # Read the photos first (a bad file fails before any download), render after loading the model.
    source = folder_source(data, classnames) if data is not None else \
        photos_source(photos, label_names, classnames) if photos else None
    bundle = model.load()
    if source is not None:
        audit_set = source.render(word_list, n, seed)
    elif bundle.world is not None and bundle.world.classnames:
        audit_set = world_set(bundle.world, classnames, word_list, n)
    else:
        raise ClipeditError(f"give --data DIR or --photos PHOTO... --labels L...: {bundle.name} brings no "
                            "held-out scenes of its own (only models with a world, e.g. mini, do)")

    predictor = make_predictor(bundle, audit_set.classnames, templates)
    metrics = evaluate_attacks(bundle, predictor, audit_set.attacks, audit_set.labels, batch_size=batch_size)
    click.echo(f"{bundle.name} ({bundle.pretrained}) on {bundle.device}: {audit_set.dataset}, "
               f"{audit_set.n_photos} photos, {len(audit_set.attacks)} attacks, "
               f"{len(audit_set.classnames)} classes")
    click.echo(format_table(result_rows(metrics), header=("", "rate", "n")))
    if out is not None:
        record = make_record(dataset=audit_set.dataset, bundle=bundle, task=TASK, metrics=metrics,
                             classnames=audit_set.classnames, templates=predictor.templates,
                             words=sorted({a.text for a in audit_set.attacks}), seed=seed,
                             n=len(audit_set.attacks), n_photos=audit_set.n_photos,
                             checkpoint=str(model.checkpoint) if model.checkpoint else None)
        write_results(out, record)
        click.echo(f"wrote {out}")
