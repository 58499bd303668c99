"""``clipedit audit``: how much a model's predictions follow written words (clean / blank note / text note),
on rendered notes or on a published benchmark's photos (``--dataset KIND:PATH``)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import click
from PIL import Image

from clipedit.attacks import Attack
from clipedit.attacks.factors import split_sampler
from clipedit.attacks.scripts import writing
from clipedit.commands.options import (
    GreedyCommand,
    GreedyOption,
    ModelOptions,
    batch_size_option,
    check_out_file,
    class_list,
    model_options,
    option_group,
    out_file_option,
    script_option,
    seed_option,
    split_list,
    template_list,
)
from clipedit.commands.params import FONT_FILE, TEXT, TEXT_FILE, count
from clipedit.core.distributed import init_from_environment, is_main_process
from clipedit.data.benchmarks import LAYOUTS, LoadedBenchmark, data_path, load_benchmark_images, read_benchmark
from clipedit.data.classnames import check_classnames, labels_from_names, remap_labels
from clipedit.data.folders import load_image_folder
from clipedit.data.images import load_photos
from clipedit.errors import ClipeditError
from clipedit.eval.attack_sets import attacks_from_photos
from clipedit.eval.benchmark_metrics import evaluate_benchmark, kind_rows
from clipedit.eval.distributed import evaluate_attacks_sharded
from clipedit.eval.heldout import world_attack_set
from clipedit.eval.predictor import make_predictor
from clipedit.eval.report import GridItem, attacks_grid, bar_chart, benchmark_grid, write_chart, write_report
from clipedit.eval.results import format_table, make_record, write_results
from clipedit.eval.timing import StageTimer
from clipedit.outputs import check_outputs

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

    def render(self, words: Optional[list[str]], n: Optional[int], seed: int,
               font: Optional[str] = None) -> AuditSet:
        """Write ``words`` (default: the class names) on every photo, skipping its own class; ``font``
        in place of the held-out styles' fonts."""
        sampler = split_sampler("test", fonts=(font,) if font else None)
        attacks, labels = attacks_from_photos(self.images, self.labels, self.classnames,
                                              words or self.classnames, n, seed, sampler)
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


def world_set(world, classnames: Optional[list[str]], words: Optional[list[str]], n: Optional[int],
              font: Optional[str] = None) -> AuditSet:
    """A world's held-out attack set (test split; held-out styles, ``font`` in place of their fonts;
    words of other classes by default)."""
    attacks, labels = world_attack_set(world, n or WORLD_SCENES, "test", words or "other",
                                       (font,) if font else None)
    names = classnames or list(world.classnames)
    labels = remap_labels(labels, list(world.classnames), names)
    return AuditSet(attacks, labels, names, world.name, len(attacks))


def chart_path(out: Optional[Path]) -> Optional[Path]:
    """The bar chart written beside ``--out`` (its name with ``.png``)."""
    return out.with_suffix(".png") if out is not None else None


def result_rows(metrics: dict[str, Any]) -> list[tuple[str, Optional[float], int]]:
    """The printed table's rows: (set, rate, n)."""
    return [("clean", metrics["clean_acc"], metrics["n"]),
            ("blank note", metrics["blank_acc"], metrics["n"]),
            ("text note", metrics["text_acc"], metrics["n_text"]),
            ("attack success", metrics["attack_success_rate"], metrics["n_word_in_classes"])]


@dataclass
class AuditOutcome:
    """What an audit measured, ready to print, save and report."""

    metrics: dict[str, Any]
    rows: list[list[Any]]
    classnames: list[str]
    dataset: str
    words: list[str]
    n_photos: int
    grid: list[GridItem]
    templates: Optional[list[str]]


def audit_rendered(bundle, audit_set: AuditSet, templates: Optional[list[str]], batch_size: int) -> AuditOutcome:
    """Evaluate rendered attacks (clean / blank note / text note of each photo)."""
    predictor = make_predictor(bundle, audit_set.classnames, templates)
    metrics = evaluate_attacks_sharded(bundle, predictor, audit_set.attacks, audit_set.labels,
                                       batch_size=batch_size)
    names = audit_set.classnames
    grid = attacks_grid(audit_set.attacks, audit_set.labels, names, metrics["predictions"]["text"])
    return AuditOutcome(metrics, [list(r) for r in result_rows(metrics)], names, audit_set.dataset,
                        sorted({a.text for a in audit_set.attacks}), audit_set.n_photos, grid, predictor.templates)


def audit_benchmark(bundle, data: LoadedBenchmark, templates: Optional[list[str]], batch_size: int) -> AuditOutcome:
    """Evaluate a published benchmark's photos as they are (nothing rendered)."""
    predictor = make_predictor(bundle, data.classnames, templates)
    metrics = evaluate_benchmark(bundle, predictor, data, batch_size=batch_size)
    scenes = {r.pair or str(r.path) for r in data.records}
    grid = benchmark_grid(data, metrics["predictions"])
    return AuditOutcome(metrics, kind_rows(metrics), data.classnames, data.dataset,
                        sorted({r.word for r in data.records if r.word}), len(scenes), grid, predictor.templates)


@dataclass
class AuditInputs:
    """What to audit (one of an ImageFolder, loose photos with labels, a published benchmark, or the model's
    world) and how: classes, templates, written words, scenes."""

    data: Optional[Path] = None
    dataset_spec: Optional[str] = None
    photos: tuple[Path, ...] = ()
    label_args: tuple[str, ...] = ()
    classes: Optional[str] = None
    classes_file: Optional[Path] = None
    templates_file: Optional[Path] = None
    words: Optional[str] = None
    script: Optional[str] = None
    font: Optional[Path] = None
    n: Optional[int] = None

    def checked(self) -> tuple[Optional[list[str]], Optional[list[str]], Optional[list[str]], list[str]]:
        """(class names, templates, words, photo labels), refusing combinations that do not go together."""
        classnames = class_list(self.classes, self.classes_file)
        templates = template_list(self.templates_file)
        word_list = split_list(self.words)
        if word_list is not None and not word_list:
            raise ClipeditError("the word list is empty")
        label_names = [name for arg in self.label_args for name in split_list(arg) or []]
        if sum(x is not None and x != () for x in (self.data, self.photos, self.dataset_spec)) > 1:
            raise ClipeditError("give one of --data, --photos or --dataset")
        if self.dataset_spec is not None and (word_list is not None or self.n is not None or self.script
                                              or self.font):
            raise ClipeditError("--words, --n, --script and --font do not go with --dataset "
                                "(its photos are evaluated as they are)")
        if label_names and not self.photos:
            raise ClipeditError("--labels goes with --photos")
        if self.photos and not label_names:
            raise ClipeditError("--photos needs --labels (the class name of each photo)")
        if classnames is not None:
            check_classnames(classnames)
        return classnames, templates, word_list, label_names


def audit_inputs(bundle_loader, inputs: AuditInputs, seed: int, batch_size: int,
                 timer: Optional[StageTimer] = None):
    """(the model, what it measured): photos are read first (a bad file fails before any download), the
    attacks rendered after the model is loaded (``timer`` laps "load" there)."""
    classnames, templates, word_list, label_names = inputs.checked()
    bench = load_benchmark_images(read_benchmark(inputs.dataset_spec), classnames) if inputs.dataset_spec else None
    source = folder_source(inputs.data, classnames) if inputs.data is not None else \
        photos_source(inputs.photos, label_names, classnames) if inputs.photos else None
    bundle = bundle_loader()
    if timer is not None:
        timer.lap("load")
    if inputs.script is not None and word_list is None:  # the class names, written in the script
        word_list = list(source.classnames if source is not None else classnames or bundle.world.classnames
                         if bundle.world is not None else [])
    font = str(inputs.font) if inputs.font else None
    if word_list is not None:
        word_list, font = writing(word_list, inputs.script, font)
    if bench is not None:
        return bundle, audit_benchmark(bundle, bench, templates, batch_size)
    if source is not None:
        return bundle, audit_rendered(bundle, source.render(word_list, inputs.n, seed, font), templates, batch_size)
    if bundle.world is not None and bundle.world.classnames:
        return bundle, audit_rendered(bundle, world_set(bundle.world, classnames, word_list, inputs.n, font),
                                      templates, batch_size)
    raise ClipeditError(f"give --data DIR or --photos PHOTO... --labels L... (or --dataset KIND:PATH): "
                        f"{bundle.name} brings no held-out scenes of its own (only models with a world, "
                        "e.g. mini, do)")


audit_input_options = option_group(
    "inputs", AuditInputs,
    click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="ImageFolder directory: DIR/<class>/<image>."),
    click.option("--dataset", "dataset_spec", default=None, metavar="KIND:PATH",
                 help=f"A typographic benchmark as published, evaluated as is: KIND is one of {', '.join(LAYOUTS)} "
                      "(see clipedit/data/benchmarks.py)."),
    click.option("--photos", cls=GreedyOption, type=click.Path(path_type=Path), metavar="PHOTO...",
                 help="Photos to attack (with --labels)."),
    click.option("--labels", "label_args", cls=GreedyOption, metavar="L...",
                 help="Class name of each photo (space- or comma-separated)."),
    click.option("--classes", default=None, metavar="a,b,c",
                 help="Class list (default: folder names, labels, or a dataset's classes and written words)."),
    click.option("--classes-file", type=TEXT_FILE, default=None,
                 help="Class list, one name per line."),
    click.option("--templates-file", type=TEXT_FILE, default=None,
                 help="Prompt templates with '{}', one per line (default: the model's)."),
    click.option("--words", type=TEXT, default=None, metavar="w1,w2",
                 help="Words to write (default: the other class names)."),
    script_option(),
    click.option("--font", type=FONT_FILE, default=None,
                 help="TTF/OTF font file to write every word in (default: the held-out styles' fonts)."),
    click.option("--n", "--scenes", "n", type=count(), default=None,
                 help=f"World scenes (default {WORLD_SCENES}). Photos: random words each (default: every word)."),
)


@click.command(cls=GreedyCommand)
@model_options(edits=True)
@audit_input_options
@seed_option()
@batch_size_option()
@out_file_option(help="Write the results as JSON (clip_benchmark layout) here, and a bar chart as .png beside it.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.html",
              help="Write a self-contained HTML report (table, chart, attacked images with predictions).")
def audit(model: ModelOptions, inputs: AuditInputs, seed: int, batch_size: int, out: Optional[Path],
          report: Optional[Path]) -> None:
    """Measure a model's accuracy on clean photos, with a blank note, and with a written note.

    Attack success is how often the prediction becomes the written word. With --dataset, a published
    benchmark's own photos are evaluated (RTA-100, SCAM, PAINT, Disentangling, photo triples or a
    manifest). Without --data, --photos or --dataset, a model that brings a world (e.g. mini) is
    audited on its held-out scenes (test split). Under torchrun, rendered attacks are split across
    the ranks and the figures gathered (rank 0 prints and writes).
    """
    timer = StageTimer()
    for path in (out, report):
        if path is not None:
            check_out_file(path)
    check_outputs({"--out": out, "the chart beside --out": chart_path(out), "--report": report},
                  inputs={"--checkpoint": model.checkpoint, "--edit": model.edits, "--data": inputs.data,
                          "--dataset": data_path(inputs.dataset_spec), "--photos": inputs.photos,
                          "--classes-file": inputs.classes_file, "--templates-file": inputs.templates_file})
    # under torchrun each rank runs the model on its share (all ranks with the same arguments); rank 0 reports
    init_from_environment(agree_on=click.get_current_context().params)
    bundle, outcome = audit_inputs(model.load, inputs, seed, batch_size, timer)
    timer.lap("evaluate")  # rendering the attacks and running the model
    if not is_main_process():
        return
    metrics = outcome.metrics
    click.echo(f"{bundle.name} ({bundle.pretrained}) on {bundle.device}: {outcome.dataset}, "
               f"{outcome.n_photos} photos or scenes, {metrics['n']} images evaluated, "
               f"{len(outcome.classnames)} classes")
    click.echo(format_table(outcome.rows, header=("", "rate", "n")))
    if metrics.get("n_skipped"):
        click.echo(f"skipped {metrics['n_skipped']} images that do not decode or lie outside the dataset "
                   "(the first ones named in the results)")
    if out is not None:
        chart = _write_results(out, bundle, outcome, model, seed, timer.seconds())
        click.echo(f"wrote {out} and {chart}")
    if report is not None:
        _write_report(report, bundle, outcome)
        click.echo(f"wrote {report}")


def _write_results(out: Path, bundle, outcome: AuditOutcome, model: ModelOptions, seed: int,
                   seconds: dict[str, float]) -> Path:
    """The record (one writer) and its bar chart beside it; returns the chart's path."""
    record = make_record(dataset=outcome.dataset, bundle=bundle, task=TASK, metrics=outcome.metrics,
                         classnames=outcome.classnames, templates=outcome.templates, words=outcome.words,
                         seed=seed, n=outcome.metrics["n"], n_photos=outcome.n_photos,
                         checkpoint=str(model.checkpoint) if model.checkpoint else None,
                         edits=[str(p) for p in model.edits], seconds=seconds)
    write_results(out, record)
    return write_chart(chart_path(out), outcome.rows, ["rate"],
                       f"{bundle.name} on {outcome.dataset} (n = {outcome.metrics['n']} images)")


def _write_report(report: Path, bundle, outcome: AuditOutcome) -> None:
    metrics = outcome.metrics
    write_report(report, title=f"Typographic audit: {bundle.name} ({bundle.pretrained})",
                 facts=[("dataset", outcome.dataset), ("model", f"{bundle.name} ({bundle.pretrained})"),
                        ("images", f"{metrics['n']} evaluated, {outcome.n_photos} photos or scenes"),
                        ("classes", f"{len(outcome.classnames)}: {', '.join(outcome.classnames[:30])}"
                                    + (" …" if len(outcome.classnames) > 30 else ""))],
                 header=("", "rate", "n"), rows=outcome.rows,
                 chart=bar_chart(outcome.rows, ["rate"]), grid=outcome.grid,
                 notes=[f"skipped (did not decode): {p}" for p, _ in metrics.get("skipped", [])])
