"""``clipedit audit``: how much a model's predictions follow written words (clean / blank note / text note),
on rendered notes or on a published benchmark's photos (``--dataset KIND:PATH``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click

from clipedit.attacks.fonts import load_font
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
from clipedit.data.benchmarks import LAYOUTS, data_path
from clipedit.data.classnames import check_classnames
from clipedit.errors import ClipeditError
from clipedit.eval.audit import WORLD_SCENES, AuditOutcome, chart_path
from clipedit.eval.audit import audit as run_audit
from clipedit.eval.results import format_table, undefined_reasons
from clipedit.eval.timing import StageTimer
from clipedit.outputs import check_outputs

log = logging.getLogger(__name__)


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
        if self.font is not None:  # read now: a missing or broken font fails before the model loads
            load_font(str(self.font), 12)
        return classnames, templates, word_list, label_names


def audit_inputs(bundle_loader, inputs: AuditInputs, seed: int, batch_size: int,
                 timer: Optional[StageTimer] = None) -> AuditOutcome:
    """The options, checked, handed to the library's :func:`clipedit.eval.audit.audit`."""
    classnames, templates, word_list, label_names = inputs.checked()
    return run_audit(bundle_loader, data=inputs.data, dataset=inputs.dataset_spec, photos=inputs.photos,
                     labels=label_names, classes=classnames, templates=templates, words=word_list,
                     script=inputs.script, font=inputs.font, n=inputs.n, seed=seed, batch_size=batch_size,
                     timer=timer)


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
@model_options(default="mini", edits=True)
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
    outcome = audit_inputs(model.load, inputs, seed, batch_size, timer)
    if not is_main_process():
        return
    metrics, bundle = outcome.metrics, outcome.bundle
    click.echo(f"{bundle.name} ({bundle.pretrained}) on {bundle.device}: {outcome.dataset}, "
               f"{outcome.n_photos} photos or scenes, {metrics['n']} images evaluated, "
               f"{len(outcome.classnames)} classes")
    click.echo(format_table(outcome.rows, header=("", "rate", "n")))
    for line in undefined_reasons(outcome.rows):
        click.echo(line)
    if metrics.get("n_skipped"):
        click.echo(f"skipped {metrics['n_skipped']} images that do not decode or lie outside the dataset "
                   "(the first ones named in the results)")
    outcome.save(out, report, checkpoint=str(model.checkpoint) if model.checkpoint else None,
                 edits=[str(p) for p in model.edits])
    if out is not None:
        click.echo(f"wrote {out} and {chart_path(out)}")
    if report is not None:
        click.echo(f"wrote {report}")
