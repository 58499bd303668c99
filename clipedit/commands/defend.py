"""``clipedit defend --text iPod``: rewrite one layer so written words stop steering the model."""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import (
    GreedyCommand,
    GreedyOption,
    check_out_dir,
    check_out_file,
    class_list,
    model_options,
    out_dir_option,
    seed_option,
    split_list,
)
from clipedit.core import RewriteHParams, save_edit
from clipedit.core.edit_sets import save_edit_set
from clipedit.core.hparams import SOLVERS
from clipedit.data.benchmarks import LAYOUTS, load_benchmark_images, looks_like_spec, read_benchmark
from clipedit.data.classnames import case_note
from clipedit.data.images import load_image, load_mask, load_photos
from clipedit.defenses.any_word import any_word_config, evaluation_words
from clipedit.defenses.defaults import defaults_for
from clipedit.defenses.edit_requests import request_from_images
from clipedit.defenses.finetune import FinetuneHParams
from clipedit.defenses.methods import METHODS
from clipedit.defenses.typographic import DefenseConfig, defend, text_exemplars
from clipedit.defenses.vocabulary import ANY_WORD
from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import comparison_rows, evaluate_defense
from clipedit.eval.heldout import folder_eval_sets, world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.report import bar_chart, evaluation_grid, exemplars_fact, write_chart, write_report
from clipedit.eval.results import before_after_metrics, drop_predictions, format_table, make_record, write_results
from clipedit.eval.timing import StageTimer
from clipedit.io import atomic_output_set
from clipedit.models.checkpoint import save_model_weights

OUTPUT_SET = ("model.safetensors", "edit.safetensors", "results.json", "results.png")

log = logging.getLogger(__name__)


@click.command(cls=GreedyCommand)
@model_options(default="mini")
@click.option("--text", "texts", multiple=True, default=("ipod",), show_default=True,
              help="Word(s) to defend against (repeat or comma-separate; several make one joint edit); "
                   "'*': any word (exemplars from a broad vocabulary, evaluated on words held out of it).")
@click.option("--vocab", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Word list (one or more per line) for --text '*' [default: open_clip's tokenizer words, "
                   "the class names and random letter strings].")
@click.option("--method", type=click.Choice(METHODS), default="edit", show_default=True,
              help="The rewrite, or a fine-tuning baseline on the same exemplars.")
@click.option("--layer", default=None,
              help="Dotted name of the layer to rewrite (default per architecture and model, defaults.json); "
                   "several, comma-separated: one edit over those sites, solved in order; 'auto': the sweep's pick "
                   "on the validation split (clipedit sweep).")
@click.option("--rank", default=None, metavar="INTEGER|auto",
              help="Rank of the update [default: per architecture, clipedit/defenses/defaults.json]; 'auto': the "
                   "sweep's pick on the validation split.")
@click.option("--solver", type=click.Choice(SOLVERS), default="closed-form", show_default=True)
@click.option("--cov-reg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Ridge added to the key statistics, times their mean variance [default: per architecture].")
@click.option("--keep-blank", "keep_targets", type=click.FloatRange(min=0), default=None,
              help="Weight of keeping the blank exemplars' own outputs in the solve (0: the paper's solve) "
                   "[default: per model].")
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
              help="Photos to render exemplars on instead of the model's world "
                   "(default: the model's world, e.g. mini's; else scikit-image samples).")
@click.option("--reference", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of reference images for the key statistics.")
@click.option("--data", default=None, metavar="DIR|KIND:PATH",
              help="ImageFolder to render notes on, or a typographic benchmark as published (KIND: "
                   f"{', '.join(LAYOUTS)}) to evaluate on (default: the model's world's held-out scenes).")
@click.option("--classes", default=None, help="Class names for --data (comma-separated).")
@click.option("--n-eval", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Held-out scenes per set (models whose world generates them, e.g. mini).")
@click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation.")
@seed_option()
@out_dir_option(required=False, help="Output directory [default: runs/defend-WORDS].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE.html",
              help="Write a self-contained HTML report: table, chart, images before/after, the exemplar.")
def defend_cmd(model, texts, vocab, method, layer, rank, solver, cov_reg, keep_targets, steps, lr, renders,
               mask_kind, exemplar, blank, mask_path, photos, reference, data, classes, n_eval, no_eval, seed, out,
               report) -> None:
    """Rewrite one layer so that written WORDS no longer steer the model, and report before/after."""
    timer = StageTimer()
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    out = check_out_dir(out or Path("runs") / ("defend-" + _slug("-".join(words))))
    if report is not None:
        check_out_file(report)
    photo_images = load_photos(photos) if photos else None
    bundle = model.load()
    timer.lap("load")
    auto_layer, auto_rank = layer == "auto", rank == "auto"
    config = _config(bundle, method, None if auto_layer else layer, None if auto_rank else _rank(rank), solver,
                     cov_reg, keep_targets, steps, lr, renders, mask_kind, seed, reference, photo_images)
    selection = None
    if (auto_layer or auto_rank) and words != [ANY_WORD]:
        config, selection = _choose_by_sweep(bundle, words, config, auto_layer, auto_rank, exemplar, n_eval)
        timer.lap("choose")
    eval_words = words
    if words == [ANY_WORD]:
        if auto_layer or auto_rank:
            raise ClipeditError("--layer/--rank auto do not go with --text '*' (bench/any_word.py --tune compares "
                                "its settings)")
        config = any_word_config(bundle, config, layer, _rank(rank), renders, vocab)
        eval_words = evaluation_words(bundle, config)
        if not no_eval:
            click.echo(f"--text '*': the 'defended words' rows write {len(eval_words)} words never rendered as "
                       "exemplars; 'other words' are the class names among the exemplars", err=True)
    elif vocab is not None:
        raise ClipeditError("--vocab goes with --text '*'")
    elif (note := case_note(words, bundle.classnames or [])) is not None:
        click.echo(note, err=True)
    request = _photo_request(bundle, exemplar, blank, mask_path)

    sets = predictor = before = after = None
    if not no_eval:
        names = class_list(classes, None)
        if data is not None and looks_like_spec(data):
            sets = load_benchmark_images(read_benchmark(data), names)
        elif data is not None:
            sets = folder_eval_sets(Path(data), eval_words, names or bundle.classnames, per_image=1)
        elif bundle.world is not None and bundle.world.classnames:
            if names is not None:
                raise ClipeditError(f"--classes goes with --data: {bundle.world.name}'s held-out scenes have "
                                    "their own classes")
            sets = world_eval_sets(bundle.world, eval_words, n_eval)
        else:
            raise ClipeditError(f"no evaluation data for {bundle.name}: pass --data DIR (or --no-eval)")
        predictor = make_predictor(bundle, sets.classnames)
        timer.lap("evaluation_sets")
        click.echo(f"evaluating {bundle.name} before the {method} …", err=True)
        before = evaluate_defense(bundle, predictor, sets, keep_predictions=report is not None)
        timer.lap("evaluate_before")

    if sets is not None:  # the stage after "evaluating … before"; with --no-eval a bad input stays one line
        click.echo(f"{method} of {bundle.name} against {', '.join(words)} …", err=True)
    defense = defend(bundle, words, config, request=request)
    timer.lap("defend")

    record_extra = {"method": method, "layer": defense.layer, "defended_words": words}
    if defense.edit_set is not None and "hparams" in defense.edit_set.meta:
        record_extra["hparams"] = defense.edit_set.meta["hparams"]
    if selection is not None:  # --layer/--rank auto: what the sweep chose, and by which rule
        record_extra["selection"] = selection
        if defense.edit is not None:
            defense.edit.meta["selection"] = selection
    if defense.edit is not None:
        record_extra["hparams"] = defense.edit.meta["hparams"]
    rows = None
    if sets is not None:
        click.echo(f"evaluating {bundle.name} after the {method} …", err=True)
        after = evaluate_defense(bundle, predictor, sets, keep_predictions=report is not None)
        timer.lap("evaluate_after")
        record_extra["seconds"] = timer.seconds()
        rows = comparison_rows(before, after)
        record = make_record(dataset=sets.dataset, bundle=bundle, task="typographic_defense",
                             metrics=before_after_metrics(before, after), before=drop_predictions(before),
                             after=drop_predictions(after), classnames=sets.classnames,
                             templates=predictor.templates, words=words, seed=seed, n=before["n"],
                             **record_extra)
    else:
        record_extra["seconds"] = timer.seconds()
        record = make_record(dataset="none", bundle=bundle, task="typographic_defense", metrics={},
                             classnames=[], templates=None, words=words, seed=seed, n=0, **record_extra)

    meta = {"model": bundle.name, "source": bundle.source, "method": method, "layer": defense.layer,
            "words": words}
    with atomic_output_set(out, replaces=OUTPUT_SET) as stage:  # every file of this run, or none
        save_model_weights(stage / "model.safetensors", bundle, metadata=meta)
        if defense.edit is not None:
            save_edit(stage / "edit.safetensors", defense.edit)
        elif defense.edit_set is not None:  # a multi-site edit: one file, applied and reverted as one
            save_edit_set(stage / "edit.safetensors", defense.edit_set)
        write_results(stage / "results.json", record)
        if rows:
            write_chart(stage / "results.png", rows, ["before", "after"],
                        f"{bundle.name}: {method} against {', '.join(words)} ({_n_text(before)})")

    if rows:
        click.echo(format_table(rows, header=["", "before", "after"]))
    if report is not None:
        _write_report(report, bundle, method, defense, words, sets, before, after, rows, (exemplar, blank, mask_path),
                      config)
        click.echo(f"wrote {report}")
    timer.lap("write")
    click.echo(timer.summary(), err=True)
    written = ", ".join(name for name in OUTPUT_SET if (out / name).is_file())
    click.echo(f"{method} of {defense.layer} against {', '.join(words)}; wrote {out}/ {written}")


def _config(bundle, method, layer, rank, solver, cov_reg, keep_targets, steps, lr, renders, mask_kind, seed,
            reference, photos) -> DefenseConfig:
    """The defense settings: what the user gave, the model's defaults (``defaults.json``) for the rest.
    ``layer`` may list several sites (comma-separated); none given: the model's default site(s)."""
    defaults = defaults_for(bundle)
    layers = tuple(split_list(layer) or ()) if layer else ()
    default_sites = method == "edit" and solver == "closed-form" and not layers
    sites = layers if len(layers) > 1 else (defaults.sites if default_sites else None)
    hp = dict(layer=layers[0] if layers else defaults.layer, rank=rank or defaults.rank, solver=solver,
              cov_reg=defaults.cov_reg if cov_reg is None else cov_reg,
              keep_targets=(defaults.keep_targets if solver == "closed-form" else 0.0) if keep_targets is None
              else keep_targets)
    if solver == "optimize":
        hp.update({k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None})
    ft = FinetuneHParams(**{k: v for k, v in (("steps", steps), ("lr", lr)) if v is not None})
    if sites and solver != "closed-form":
        raise ClipeditError(f"a multi-site edit ({', '.join(sites)}) is solved in closed form; pass one --layer "
                            "for --solver optimize")
    return DefenseConfig(method=method, hparams=RewriteHParams(**hp), renders=renders, seed=seed, mask=mask_kind,
                         reference=reference, photos=photos, finetune=ft, sites=sites)


def _rank(rank: Optional[str]) -> Optional[int]:
    if rank is None:
        return None
    if not rank.isdigit() or int(rank) < 1:
        raise ClipeditError(f"--rank takes a positive integer or 'auto', got {rank!r}")
    return int(rank)


def _choose_by_sweep(bundle, words, config: DefenseConfig, auto_layer: bool, auto_rank: bool,
                     exemplar: Optional[Path], n_eval: int) -> tuple[DefenseConfig, dict]:
    """``--layer auto`` / ``--rank auto``: sweep on the validation split (at most ``n_eval`` scenes per
    set), take the pick rule's setting."""
    from clipedit.defenses.sweep import SweepSettings, sweep

    if config.method != "edit" or words == [ANY_WORD] or exemplar is not None:
        raise ClipeditError("--layer/--rank auto go with --method edit and rendered exemplars of named words")
    hp = config.hparams
    settings = SweepSettings(sites=None if auto_layer else [hp.layer], ranks=None if auto_rank else [hp.rank],
                             n_val=min(n_eval, SweepSettings.n_val), n_signs=min(n_eval, SweepSettings.n_signs))
    click.echo("choosing " + " and ".join(n for n, a in (("the layer", auto_layer), ("the rank", auto_rank)) if a)
               + " on the validation split …", err=True)
    result = sweep(bundle, words, settings, config)
    picked = result.picked
    selection = {"split": "validation", "rule": result.rule(), "candidates": len(result.rows),
                 "auto": [n for n, a in (("layer", auto_layer), ("rank", auto_rank)) if a],
                 "picked": picked, "baseline": result.baseline}
    click.echo(f"pick rule: {result.rule()}", err=True)
    if picked is None:
        log.warning("no setting met the pick rule on validation; keeping %s rank %d", hp.layer, hp.rank)
        return config, selection
    click.echo(f"picked {picked['site']} rank {picked['rank']} (validation: defended word "
               f"{100 * result.baseline['text_acc']:.1f}% -> {100 * picked['text_acc']:.1f}%)", err=True)
    hparams = dataclasses.replace(hp, layer=picked["site"], rank=picked["rank"])
    return dataclasses.replace(config, hparams=hparams, sites=None), selection


def _photo_request(bundle, exemplar: Optional[Path], blank: Optional[Path], mask: Optional[Path]):
    given = [p is not None for p in (exemplar, blank, mask)]
    if not any(given):
        return None
    if not all(given):
        raise ClipeditError("a real exemplar needs all of --exemplar, --blank and --mask")
    return request_from_images(bundle.preprocess, [load_image(exemplar)], [load_image(blank)], [load_mask(mask)])


def _write_report(path, bundle, method, defense, words, sets, before, after, rows, photo_exemplar,
                  config: DefenseConfig) -> None:
    """The HTML report: before/after table and chart, the defended words' images, the exemplars used."""
    exemplar, blank, mask = photo_exemplar
    vocabulary = defense.vocabulary
    if exemplar is not None:
        shown = {"exemplar": load_image(exemplar), "blank": load_image(blank), "mask": load_mask(mask)}
        fact = exemplars_fact(photo_pair=True)
    elif vocabulary is not None:  # '*': rendered batch by batch and not kept; the first one again, as it was
        renders = defense.renders or 0
        first = text_exemplars(bundle, vocabulary.exemplar_words[0], 1, config.seed, config.photos)[0]
        shown = {f"exemplar ({first.text}, 1 of {len(vocabulary.exemplar_words) * renders})": first.attacked,
                 "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=vocabulary.exemplar_words, renders=renders, vocabulary=vocabulary.source,
                              heldout_words=len(vocabulary.heldout_words))
    elif defense.exemplars:
        first = defense.exemplars[0]
        shown = {f"exemplar ({first.text})": first.attacked, "blank": first.blank, "mask": first.text_mask}
        fact = exemplars_fact(words=words, renders=len(defense.exemplars) // max(len(words), 1))
    else:
        shown, fact = None, "not kept"
    write_report(path, title=f"Typographic defense: {bundle.name} ({bundle.pretrained})",
                 facts=[("defense", f"{method} of {defense.layer} against {', '.join(words)}"),
                        ("evaluated on", sets.dataset if sets is not None else "nothing (--no-eval)"),
                        ("n", _n_text(before) if before is not None else "-"), ("exemplars", fact)],
                 header=["", "before", "after"], rows=rows or [],
                 chart=bar_chart(rows, ["before", "after"]) if rows else None,
                 grid=evaluation_grid(sets, before["predictions"], after["predictions"]) if sets is not None else [],
                 exemplar=shown)


def _n_text(before: dict) -> str:
    """How many images the figures are over: scenes per set (held-out sets) or the benchmark's images."""
    if before.get("n_other"):
        return f"n = {before['n']} scenes with the defended words, {before['n_other']} with other words"
    return f"n = {before['n']} images"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "words"
