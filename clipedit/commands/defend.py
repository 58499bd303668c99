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
from clipedit.commands.params import TEXT
from clipedit.core import LayerEdit, save_edits
from clipedit.data.benchmarks import data_path
from clipedit.data.classnames import case_note
from clipedit.data.folders import image_paths
from clipedit.defenses.any_word import evaluation_words
from clipedit.defenses.config import DefenseConfig
from clipedit.defenses.methods import method_spec
from clipedit.defenses.resolve import resolve_config
from clipedit.defenses.sweep import choose_by_sweep
from clipedit.defenses.typographic import defend, text_exemplars
from clipedit.defenses.vocabulary import ANY_WORD
from clipedit.errors import ClipeditError
from clipedit.eval.report import bar_chart, evaluation_grid, exemplars_fact, write_chart, write_report
from clipedit.eval.results import format_table, rate_with_interval, undefined_reasons, write_results
from clipedit.eval.timing import StageTimer
from clipedit.io import atomic_output_set
from clipedit.models.checkpoint import save_model_weights, stored_dtypes
from clipedit.outputs import OutputSet, check_outputs

OUTPUT_SET = ("model.safetensors", "edit.safetensors", "results.json", "results.png")

log = logging.getLogger(__name__)


@click.command(cls=GreedyCommand)
@model_options(default="mini")
@click.option("--text", "texts", type=TEXT, multiple=True, default=("ipod",), show_default=True,
              help="Word(s) to defend against (repeat or comma-separate; several make one joint edit); "
                   "'*': any word (exemplars from a broad vocabulary, evaluated on words held out of it).")
@settings_options
@photo_options
@eval_options
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory [default: runs/defend-WORDS].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.html",
              help="Write a self-contained HTML report: table, chart, images before/after, the exemplar.")
def defend_cmd(model, texts, settings, photo, evaluation, out, report) -> None:
    """Rewrite one layer so that written WORDS no longer steer the model, and report before/after."""
    timer = StageTimer(say=lambda line: click.echo(line, err=True))  # each stage's seconds, in results.json
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    out = check_out_dir(out or Path("runs") / ("defend-" + _slug("-".join(words))))
    if report is not None:
        check_out_file(report)
    check_outputs({"--out": OutputSet(out, OUTPUT_SET), "--report": report},
                  inputs={"--checkpoint": model.checkpoint, "--vocab": settings.vocab,
                          "--hparams": settings.hparams_file, "--supported": settings.supported,
                          "--exemplar": photo.exemplar, "--blank": photo.blank, "--mask": photo.mask_path,
                          "--photos": settings.photos, "--reference": settings.reference,
                          "--data": data_path(evaluation.data)})
    any_word = words == [ANY_WORD]
    overrides = settings.overrides(any_word)
    _check_before_load(settings, photo, evaluation, any_word)
    bundle = model.load()
    timer.lap("load")
    config = resolve_config(bundle, overrides, any_word=any_word)
    selection = None
    if settings.auto:
        if not method_spec(config.method).sweepable:
            raise ClipeditError("--layer/--rank auto go with --method edit and rendered exemplars of named words")
        click.echo(f"choosing the {' and the '.join(settings.auto)} on the validation split …", err=True)
        config, selection = choose_by_sweep(bundle, words, config, settings.auto, evaluation.n_eval)
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
    _write_outputs(out, bundle, defense, selection)
    if defense.figures:
        click.echo(format_table(defense.rows(), header=["", "before", "after", "n"]))
        for line in undefined_reasons(defense.rows()):
            click.echo(line)
    if report is not None:
        _write_report(report, bundle, defense, photo, config)
        click.echo(f"wrote {report}")
    writing = timer.lap("write")
    # the seconds results.json records (its own writing cannot be in it: said apart)
    click.echo(f"seconds: {', '.join(f'{k} {v:.1f}' for k, v in defense.stages.items())} (then {writing:.1f} "
               "writing the outputs)", err=True)
    written = ", ".join(name for name in OUTPUT_SET if (out / name).is_file())
    click.echo(f"{defense.method} of {defense.layer} against {', '.join(words)}; wrote {out}/ {written}")


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


def _write_outputs(out: Path, bundle, defense, selection) -> None:
    """The run's files, all or none: weights (unless the edit needs clipedit's hooks: then load the base with
    ``--edit edit.safetensors``), the edit set, the record and its chart."""
    record = defense.to_record(bundle, **({"selection": selection} if selection is not None else {}))
    meta = {"model": bundle.name, "source": bundle.source, "method": defense.method, "layer": defense.layer,
            "words": defense.words}
    for member in defense.edit_set.edits if defense.edit_set is not None else []:
        dtypes = stored_dtypes(bundle, [member.layer]) if isinstance(member, LayerEdit) else None
        if dtypes:  # an edited layer kept wider than its fp16/bf16 source says so
            member.meta["stored_dtypes"] = dtypes
    with atomic_output_set(out, replaces=OUTPUT_SET) as stage:
        if defense.edit_set is None or defense.edit_set.exportable:  # hook members live only in the edit file
            save_model_weights(stage / "model.safetensors", bundle, metadata=meta)
        if defense.edit_set is not None:  # one file, applied and reverted as one
            save_edits(stage / "edit.safetensors", defense.edit_set)
        write_results(stage / "results.json", record)
        if defense.figures:
            write_chart(stage / "results.png", defense.rows(), ["before", "after"],
                        f"{bundle.name}: {defense.method} against {', '.join(defense.words)} "
                        f"({_n_text(defense.figures['before'])})")


def _say_choice(selection: dict) -> None:
    """``--layer/--rank auto``: the pick rule as applied (the scenes its tolerance allows) and the pick."""
    click.echo(f"pick rule: {selection['rule']}", err=True)
    picked, baseline = selection["picked"], selection["baseline"]
    if picked is not None:
        click.echo(f"picked {picked['site']} rank {picked['rank']} (validation: defended word "
                   f"{100 * baseline['text_acc']:.1f}% -> {100 * picked['text_acc']:.1f}%)", err=True)


def _write_report(path, bundle, defense, photo, config: DefenseConfig) -> None:
    """The HTML report: before/after table and chart, the defended words' images, the exemplars used."""
    vocabulary = defense.vocabulary
    if photo.given:
        shown, fact = photo.shown(), exemplars_fact(photo_pair=True)
    elif vocabulary is not None:  # '*': rendered batch by batch and not kept; the first one again, as it was
        renders = config.renders or 0
        first = text_exemplars(bundle, vocabulary.exemplar_words[0], 1, config.seed, config.photos)[0]
        shown = {f"exemplar ({first.text}, 1 of {len(vocabulary.exemplar_words) * renders})": first.attacked,
                 "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=vocabulary.exemplar_words, renders=renders, vocabulary=vocabulary.source,
                              heldout_words=len(vocabulary.heldout_words))
    elif defense.exemplars:
        first = defense.exemplars[0]
        shown = {f"exemplar ({first.text})": first.attacked, "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=defense.words, renders=len(defense.exemplars) // max(len(defense.words), 1))
    else:
        shown, fact = None, "not kept"
    fig, rows = defense.figures, defense.rows()
    shown_rows = [[label, rate_with_interval(b, n), rate_with_interval(a, n), n] for label, b, a, n in rows]
    write_report(path, title=f"Typographic defense: {bundle.name} ({bundle.pretrained})",
                 facts=[("defense", f"{defense.method} of {defense.layer} against {', '.join(defense.words)}"),
                        ("evaluated on", fig["dataset"] if fig else "nothing (--no-eval)"),
                        ("n", _n_text(fig["before"]) if fig else "-"), ("exemplars", fact)],
                 header=["", "before [95% interval]", "after [95% interval]", "n"], rows=shown_rows,
                 notes=undefined_reasons(rows),
                 chart=bar_chart(rows, ["before", "after"]) if rows else None,
                 grid=evaluation_grid(fig["sets"], fig["before"]["predictions"], fig["after"]["predictions"])
                 if fig else [], exemplar=shown)


def _n_text(before: dict) -> str:
    """How many images the figures are over: scenes per set (held-out sets) or the benchmark's images."""
    if before.get("n_other"):
        return f"n = {before['n']} scenes with the defended words, {before['n_other']} with other words"
    return f"n = {before['n']} images"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "words"
