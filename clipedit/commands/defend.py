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
from clipedit.defenses.any_word import evaluation_words
from clipedit.defenses.resolve import resolve_config
from clipedit.defenses.sweep import choose_by_sweep
from clipedit.defenses.typographic import defend
from clipedit.defenses.vocabulary import ANY_WORD
from clipedit.errors import ClipeditError
from clipedit.eval.report import bar_chart, evaluation_grid, write_chart, write_report
from clipedit.eval.results import format_table, write_results
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
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    out = check_out_dir(out or Path("runs") / ("defend-" + _slug("-".join(words))))
    if report is not None:
        check_out_file(report)
    check_outputs({"--out": OutputSet(out, OUTPUT_SET), "--report": report},
                  inputs={"--checkpoint": model.checkpoint, "--vocab": settings.vocab,
                          "--hparams": settings.hparams_file,
                          "--exemplar": photo.exemplar, "--blank": photo.blank, "--mask": photo.mask_path,
                          "--photos": settings.photos, "--reference": settings.reference,
                          "--data": data_path(evaluation.data)})
    any_word = words == [ANY_WORD]
    overrides = settings.overrides(any_word)
    bundle = model.load()
    config = resolve_config(bundle, overrides, any_word=any_word)
    selection = None
    if settings.auto:
        if any_word:
            raise ClipeditError("--layer/--rank auto do not go with --text '*' (bench/any_word.py --tune "
                                "compares its settings)")
        if photo.given or config.method != "edit":
            raise ClipeditError("--layer/--rank auto go with --method edit and rendered exemplars of named words")
        click.echo(f"choosing the {' and the '.join(settings.auto)} on the validation split …", err=True)
        config, selection = choose_by_sweep(bundle, words, config, settings.auto, evaluation.n_eval)
    request = photo.request(bundle)
    options = evaluation.options(keep_predictions=report is not None)
    if any_word and options is not None:
        click.echo(f"--text '*': the 'defended words' rows write {len(evaluation_words(bundle, config))} words never "
                   "rendered as exemplars; 'other words' are the class names among the exemplars", err=True)
    defense = defend(bundle, words, config, request=request, evaluate=options or False)
    if selection is not None and defense.edit_set is not None:  # what the sweep chose, and by which rule
        for meta in [defense.edit_set.meta] + [m.meta for m in defense.edit_set.edits]:
            meta["selection"] = selection
    _write_outputs(out, bundle, defense, selection)
    if defense.figures:
        click.echo(format_table(defense.rows(), header=["", "before", "after"]))
    if report is not None:
        _write_report(report, bundle, defense, photo)
        click.echo(f"wrote {report}")
    written = ", ".join(name for name in OUTPUT_SET if (out / name).is_file())
    click.echo(f"{defense.method} of {defense.layer} against {', '.join(words)}; wrote {out}/ {written}")


def _write_outputs(out: Path, bundle, defense, selection) -> None:
    """The run's files, all or none: weights (unless the edit needs clipedit's hooks: then load the base with
    ``--edit edit.safetensors``), the edit set, the record and its chart."""
    record = defense.to_record(bundle, **({"selection": selection} if selection is not None else {}))
    meta = {"model": bundle.name, "source": bundle.source, "method": defense.method, "layer": defense.layer,
            "words": defense.words}
    for member in defense.edit_set.edits if defense.edit_set is not None else []:
        dtypes = stored_dtypes(bundle, [member.layer]) if isinstance(member, LayerEdit) else None
        if dtypes:  # issue 21: an edited layer kept wider than its fp16/bf16 source says so
            member.meta["stored_dtypes"] = dtypes
    with atomic_output_set(out, replaces=OUTPUT_SET) as stage:
        if defense.edit_set is None or defense.edit_set.exportable:  # hook members live only in the edit file
            save_model_weights(stage / "model.safetensors", bundle, metadata=meta)
        if defense.edit_set is not None:  # one file, applied and reverted as one
            save_edits(stage / "edit.safetensors", defense.edit_set)
        write_results(stage / "results.json", record)
        if defense.figures:
            write_chart(stage / "results.png", defense.rows(), ["before", "after"],
                        f"{bundle.name}: {defense.method} against {', '.join(defense.words)}")


def _write_report(path, bundle, defense, photo) -> None:
    """The HTML report: before/after table and chart, the defended words' images, the exemplar used."""
    if photo.given:
        shown = photo.shown()
    elif defense.exemplars:
        first = defense.exemplars[0]
        shown = {f"exemplar ({first.text})": first.attacked, "blank": first.blank, "mask": first.text_mask}
    else:
        shown = None
    fig, rows = defense.figures, defense.rows()
    write_report(path, title=f"Typographic defense: {bundle.name} ({bundle.pretrained})",
                 facts=[("defense", f"{defense.method} of {defense.layer} against {', '.join(defense.words)}"),
                        ("evaluated on", fig["dataset"] if fig else "nothing (--no-eval)"),
                        ("exemplars", str(len(defense.exemplars)) if defense.exemplars else "one real photo pair")],
                 header=["", "before", "after"], rows=rows,
                 chart=bar_chart(rows, ["before", "after"]) if rows else None,
                 grid=evaluation_grid(fig["sets"], fig["before"]["predictions"], fig["after"]["predictions"])
                 if fig else [], exemplar=shown)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "words"
