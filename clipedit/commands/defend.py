"""``clipedit defend --text iPod``: rewrite one layer so written words stop steering the model.

A thin shell over the one path of a defense: options -> ``resolve_config`` -> the method table ->
the solver -> an edit set -> the record (``clipedit.defend(..., evaluate=…)`` does the same in Python).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import click

from clipedit.commands.defense_options import eval_options, photo_options, settings_options
from clipedit.commands.options import GreedyCommand, check_out_dir, check_out_file, model_options, split_list
from clipedit.commands.params import TEXT, count
from clipedit.data.benchmarks import data_path
from clipedit.data.classnames import case_note
from clipedit.data.folders import image_paths
from clipedit.data.prepare.vocabulary import ANY_WORD
from clipedit.defenses.run_files import OUTPUT_SET, run_outputs, save_run
from clipedit.defenses.typographic import defend
from clipedit.errors import ClipeditError
from clipedit.eval.results import format_table, undefined_reasons
from clipedit.eval.timing import StageTimer
from clipedit.methods.any_word import evaluation_words
from clipedit.methods.registry import method_spec
from clipedit.outputs import check_outputs
from clipedit.selection.sweep import SweepSettings, choose_by_sweep
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)


@click.command(cls=GreedyCommand)
@model_options(default="mini")
@click.option("--text", "texts", type=TEXT, multiple=True, default=("ipod",), show_default=True,
              help="Word(s) to defend against (repeat or comma-separate; several make one joint edit); "
                   "'*': any word (exemplars from a broad vocabulary, evaluated on words held out of it).")
@settings_options
@photo_options
@eval_options
@click.option("--n-val", type=count(), default=None, metavar="N",
              help="With --layer/--rank auto: validation scenes per set the sweep picks on (defended word; other "
                   "words), as sweep's and compare's --n-val; signs for reading: at most "
                   f"{SweepSettings.n_signs} [default: {SweepSettings.n_val}, sweep's]. Recorded under selection "
                   "in results.json.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: runs/defend-WORDS].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.html",
              help="Write a self-contained HTML report: table, chart, images before/after, the exemplar.")
def defend_cmd(model, texts, settings, photo, evaluation, n_val, out, report) -> None:
    """Rewrite one layer so that written WORDS no longer steer the model, and report before/after."""
    timer = StageTimer(say=lambda line: click.echo(line, err=True))  # each stage's seconds, in results.json
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    out = check_out_dir(out or Path("runs") / ("defend-" + _slug("-".join(words))))
    if report is not None:
        check_out_file(report)
    check_outputs(run_outputs(out, report),
                  inputs={"--checkpoint": model.checkpoint, "--vocab": settings.vocab,
                          "--hparams": settings.hparams_file, "--supported": settings.supported,
                          "--exemplar": photo.exemplar, "--blank": photo.blank, "--mask": photo.mask_path,
                          "--photos": settings.photos, "--reference": settings.reference,
                          "--data": data_path(evaluation.data)})
    any_word = words == [ANY_WORD]
    overrides = settings.overrides(any_word)
    _check_before_load(settings, photo, evaluation, any_word)
    if n_val is not None and not settings.auto:
        raise ClipeditError("--n-val is the validation size of --layer/--rank auto's sweep; without them nothing "
                            "selects on it (a method's own validation size: n_val in --hparams)")
    bundle = model.load()
    timer.lap("load")
    config = resolve_config(bundle, overrides, any_word=any_word)
    selection = None
    if settings.auto:
        if not method_spec(config.method).sweepable:
            raise ClipeditError("--layer/--rank auto go with --method edit and rendered exemplars of named words")
        click.echo(f"choosing the {' and the '.join(settings.auto)} on the validation split …", err=True)
        config, selection = choose_by_sweep(bundle, words, config, settings.auto,
                                            SweepSettings.n_val if n_val is None else n_val)
        timer.lap("choose")
        _say_choice(selection)
    if not any_word and (note := case_note(words, bundle.classnames or [])) is not None:
        click.echo(note, err=True)
    request = photo.request(bundle)
    options = evaluation.options(keep_predictions=report is not None)
    if any_word and options is not None:
        click.echo(f"--text '*': the 'defended words' rows write {len(evaluation_words(bundle, config))} words never "
                   "rendered as exemplars; 'other words' are the class names among the exemplars", err=True)
    defense = defend(bundle, words, config, request=request, evaluate=options or False, timer=timer)
    if selection is not None and defense.edit_set is not None:  # what the sweep chose, and by which rule
        for meta in [defense.edit_set.meta] + [m.meta for m in defense.edit_set.edits]:
            meta["selection"] = selection
    written = save_run(out, bundle, defense, report=report, selection=selection, config=config,
                       exemplar_images=photo.shown() if photo.given else None)
    if defense.figures:
        click.echo(format_table(defense.rows(), header=["", "before", "after", "n"]))
        for line in undefined_reasons(defense.rows()):
            click.echo(line)
    if report is not None:
        click.echo(f"wrote {report}")
    writing = timer.lap("write")
    # the seconds results.json records (its own writing cannot be in it: said apart)
    click.echo(f"seconds: {', '.join(f'{k} {v:.1f}' for k, v in defense.stages.items())} (then {writing:.1f} "
               "writing the outputs)", err=True)
    names = ", ".join(p.name for p in written if p.parent == out and p.name in OUTPUT_SET)
    click.echo(f"{defense.method} of {defense.layer} against {', '.join(words)}; wrote {out}/ {names}")


def _check_before_load(settings, photo, evaluation, any_word: bool) -> None:
    """Refuse option combinations and missing inputs before the model loads (seconds to minutes)."""
    if settings.auto and any_word:
        raise ClipeditError("--layer/--rank auto do not go with --text '*' (python -m bench any_word --tune "
                            "compares its settings)")
    if settings.auto and (photo.given or not method_spec(settings.method).sweepable):
        raise ClipeditError("--layer/--rank auto go with --method edit and rendered exemplars of named words")
    if photo.given and not all(p is not None for p in (photo.exemplar, photo.blank, photo.mask_path)):
        raise ClipeditError("a real exemplar needs all of --exemplar, --blank and --mask")
    if settings.reference is not None:  # read after the exemplars are rendered: checked now
        image_paths(settings.reference, "--reference folder")
    data = data_path(evaluation.data)
    if not evaluation.no_eval and data is not None and not data.exists():
        raise ClipeditError(f"--data: {data} not found")


def _say_choice(selection: dict) -> None:
    """``--layer/--rank auto``: the pick rule as applied (the scenes its tolerance allows) and the pick."""
    click.echo(f"pick rule: {selection['rule']}", err=True)
    picked, baseline = selection["picked"], selection["baseline"]
    if picked is not None:
        click.echo(f"picked {picked['site']} rank {picked['rank']} (validation: defended word "
                   f"{100 * baseline['text_acc']:.1f}% -> {100 * picked['text_acc']:.1f}%)", err=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "words"
