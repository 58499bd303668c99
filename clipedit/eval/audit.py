"""Auditing a model: how much its predictions follow written words (clean / blank note / text note), on
rendered notes over photos or a world's held-out scenes, or on a published benchmark's photos as they are.

    outcome = clipedit.audit(bundle, data="photos/")          # an ImageFolder; or photos=…, dataset=…
    print(outcome.metrics["text_acc"], outcome.metrics["n"])
    outcome.save("audit.json", report="audit.html")           # the record and its chart (one set), a report

``clipedit audit`` parses its options into the same call and writes with :meth:`AuditOutcome.save`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from PIL import Image

from clipedit.attacks import Attack
from clipedit.attacks.factors import split_sampler
from clipedit.attacks.scripts import writing
from clipedit.data.benchmarks import LoadedBenchmark, load_benchmark_images, read_benchmark
from clipedit.data.classnames import labels_from_names, remap_labels
from clipedit.data.folders import load_image_folder
from clipedit.data.images import load_photos
from clipedit.errors import ClipeditError
from clipedit.eval.attack_sets import attacks_from_photos
from clipedit.eval.benchmark_metrics import evaluate_benchmark, kind_rows
from clipedit.eval.distributed import evaluate_attacks_sharded
from clipedit.eval.heldout import world_attack_set
from clipedit.eval.predictor import make_predictor
from clipedit.eval.report import GridItem, attacks_grid, bar_chart, benchmark_grid, write_report
from clipedit.eval.results import make_record, undefined_reasons, write_results
from clipedit.eval.timing import StageTimer
from clipedit.io import atomic_file_set
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)

WORLD_SCENES = 120  # default size of a world's held-out set (e.g. the mini world's)
TASK = "typographic_audit"
PathLike = Union[str, os.PathLike]


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


def chart_path(out: Optional[PathLike]) -> Optional[Path]:
    """The bar chart written beside a record ``out`` (its name with ``.png``)."""
    return Path(out).with_suffix(".png") if out is not None else None


def result_rows(metrics: dict[str, Any]) -> list[tuple[str, Optional[float], int]]:
    """The printed table's rows: (set, rate, n)."""
    return [("clean", metrics["clean_acc"], metrics.get("n_clean", metrics["n"])),
            ("blank note", metrics["blank_acc"], metrics["n"]),
            ("text note", metrics["text_acc"], metrics["n_text"]),
            ("attack success", metrics["attack_success_rate"], metrics["n_word_in_classes"])]


def n_text(metrics: dict) -> str:
    """The distinct images the figures are over: clean photos (each counted once) and written notes."""
    n_clean = metrics.get("n_clean")
    if n_clean is not None and n_clean != metrics["n"]:
        return f"n = {n_clean} photos, {metrics['n']} attacked images"
    return f"n = {metrics['n']} images"


@dataclass
class AuditOutcome:
    """What an audit measured, ready to print, save and report.

    Attributes:
        metrics: the figures (``clean_acc``, ``blank_acc``, ``text_acc``, ``attack_success_rate``, their n …).
        rows: the table: (set, rate, n) per row.
        classnames, dataset, words, n_photos, templates: what was evaluated.
        grid: the attacked images with their predictions (for a report).
        bundle: the audited model; seed: the rendering seed; seconds: seconds per stage.
    """

    metrics: dict[str, Any]
    rows: list[list[Any]]
    classnames: list[str]
    dataset: str
    words: list[str]
    n_photos: int
    grid: list[GridItem]
    templates: Optional[list[str]]
    bundle: Optional[ModelBundle] = None
    seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_record(self, **extra: Any) -> dict[str, Any]:
        """The results record (clip_benchmark layout; ``extra``: e.g. the checkpoint and edit files)."""
        return make_record(dataset=self.dataset, bundle=self.bundle, task=TASK, metrics=self.metrics,
                           classnames=self.classnames, templates=self.templates, words=self.words, seed=self.seed,
                           n=self.metrics["n"], n_photos=self.n_photos,
                           **extra, **({"seconds": self.seconds} if self.seconds else {}))

    def chart(self) -> bytes:
        """The bar chart of the table (PNG bytes)."""
        return bar_chart(self.rows, ["rate"], f"{self.bundle.name} on {self.dataset} ({n_text(self.metrics)})")

    def save(self, out: Optional[PathLike] = None, report: Optional[PathLike] = None,
             **record_extra: Any) -> list[Path]:
        """Write the record as JSON at ``out`` with its chart beside it (``.png``) as one set (both or
        neither; two writers leave one writer's pair), and an HTML ``report``; returns the paths written."""
        from clipedit.outputs import check_outputs

        check_outputs({"out": out, "the chart beside out": chart_path(out), "report": report})
        written = []
        if out is not None:
            with atomic_file_set([out, chart_path(out)]) as (record_tmp, chart_tmp):
                write_results(record_tmp, self.to_record(**record_extra))
                chart_tmp.write_bytes(self.chart())
            written += [Path(out), chart_path(out)]
        if report is not None:
            self._write_report(report)
            written.append(Path(report))
        return written

    def _write_report(self, report: PathLike) -> None:
        metrics, bundle = self.metrics, self.bundle
        write_report(report, title=f"Typographic audit: {bundle.name} ({bundle.pretrained})",
                     facts=[("dataset", self.dataset), ("model", f"{bundle.name} ({bundle.pretrained})"),
                            ("images", f"{metrics['n']} evaluated, {self.n_photos} photos or scenes"),
                            ("classes", f"{len(self.classnames)}: {', '.join(self.classnames[:30])}"
                                        + (" …" if len(self.classnames) > 30 else ""))],
                     header=("", "rate", "n"), rows=self.rows,
                     chart=bar_chart(self.rows, ["rate"]), grid=self.grid,
                     notes=undefined_reasons(self.rows)
                     + [f"skipped (did not decode): {p}" for p, _ in metrics.get("skipped", [])])


def audit_rendered(bundle, audit_set: AuditSet, templates: Optional[list[str]], batch_size: int) -> AuditOutcome:
    """Evaluate rendered attacks (clean / blank note / text note of each photo)."""
    predictor = make_predictor(bundle, audit_set.classnames, templates)
    metrics = evaluate_attacks_sharded(bundle, predictor, audit_set.attacks, audit_set.labels,
                                       batch_size=batch_size)
    names = audit_set.classnames
    grid = attacks_grid(audit_set.attacks, audit_set.labels, names, metrics["predictions"]["text"])
    return AuditOutcome(metrics, [list(r) for r in result_rows(metrics)], names, audit_set.dataset,
                        sorted({a.text for a in audit_set.attacks}), audit_set.n_photos, grid, predictor.templates,
                        bundle)


def audit_benchmark(bundle, data: LoadedBenchmark, templates: Optional[list[str]], batch_size: int) -> AuditOutcome:
    """Evaluate a published benchmark's photos as they are (nothing rendered)."""
    predictor = make_predictor(bundle, data.classnames, templates)
    metrics = evaluate_benchmark(bundle, predictor, data, batch_size=batch_size)
    scenes = {r.pair or str(r.path) for r in data.records}
    grid = benchmark_grid(data, metrics["predictions"])
    return AuditOutcome(metrics, kind_rows(metrics), data.classnames, data.dataset,
                        sorted({r.word for r in data.records if r.word}), len(scenes), grid, predictor.templates,
                        bundle)


def audit(model: Union[ModelBundle, Callable[[], ModelBundle]], *, data: Optional[PathLike] = None,
          dataset: Optional[str] = None, photos: Sequence[PathLike] = (), labels: Sequence[str] = (),
          classes: Optional[Sequence[str]] = None, templates: Optional[Sequence[str]] = None,
          words: Optional[Sequence[str]] = None, script: Optional[str] = None, font: Optional[PathLike] = None,
          n: Optional[int] = None, seed: int = 0, batch_size: int = 64,
          timer: Optional[StageTimer] = None) -> AuditOutcome:
    """Measure ``model``'s accuracy on clean photos, with a blank note and with a written note, and how
    often the prediction becomes the written word.

    Args:
        model: a loaded model, or a function loading one (called after the photos are read, so that a bad
            file fails before any download).
        data: an ImageFolder (``DIR/<class>/<image>``); or ``photos`` with one class name each in ``labels``;
            or ``dataset`` (``KIND:PATH``, a published benchmark evaluated as is); none of them: the model's
            own world's held-out scenes (test split), e.g. ``mini``'s.
        classes: the class list (default: folder names, labels, the dataset's or the world's classes).
        templates: prompt templates with ``{}`` (default: the model's).
        words: words to write (default: the other class names); ``script``: written in that script;
            ``font``: a font file for every word.
        n: world scenes (default 120), or random words per photo (default: every word).
        seed: rendering seed; batch_size: images per forward pass; timer: laps ``load`` and ``evaluate``.

    Returns:
        :class:`AuditOutcome` (``.metrics``, ``.rows``, ``.save(out, report=…)``).
    """
    classes = list(classes) if classes is not None else None
    templates = list(templates) if templates is not None else None
    words = list(words) if words is not None else None
    if sum(x is not None and x != () for x in (data, tuple(photos) or None, dataset)) > 1:
        raise ClipeditError("give one of data, photos or dataset")
    timer = timer or StageTimer()
    bench = load_benchmark_images(read_benchmark(dataset), classes) if dataset else None
    source = folder_source(Path(data), classes) if data is not None else \
        photos_source([Path(p) for p in photos], list(labels), classes) if photos else None
    bundle = model() if callable(model) and not isinstance(model, ModelBundle) else model
    timer.lap("load")
    if script is not None and words is None:  # the class names, written in the script
        words = list(source.classnames if source is not None else classes or bundle.world.classnames
                     if bundle.world is not None else [])
    font = str(font) if font else None
    if words is not None:
        words, font = writing(words, script, font)
    if bench is not None:
        outcome = audit_benchmark(bundle, bench, templates, batch_size)
    elif source is not None:
        outcome = audit_rendered(bundle, source.render(words, n, seed, font), templates, batch_size)
    elif bundle.world is not None and bundle.world.classnames:
        outcome = audit_rendered(bundle, world_set(bundle.world, classes, words, n, font), templates, batch_size)
    else:
        raise ClipeditError(f"give --data DIR or --photos PHOTO... --labels L... (or --dataset KIND:PATH): "
                            f"{bundle.name} brings no held-out scenes of its own (only models with a world, "
                            "e.g. mini, do)")
    timer.lap("evaluate")  # rendering the attacks and running the model
    outcome.seed, outcome.seconds = seed, timer.seconds()
    return outcome
