"""``clipedit sweep --text ipod``: score the rewrite at every site x rank on the validation split."""
from __future__ import annotations

import time
from pathlib import Path

import click

from clipedit.commands.defense_options import keep_reading_option
from clipedit.commands.options import (
    check_out_dir,
    class_list,
    model_options,
    out_dir_option,
    seed_option,
    split_list,
)
from clipedit.commands.params import TEXT, count, finite
from clipedit.data.benchmarks import data_path
from clipedit.data.prepare.user_data import with_validation_world
from clipedit.data.splits import split_data
from clipedit.errors import ClipeditError
from clipedit.eval.pick import PICK_TOLERANCE, tolerance_text
from clipedit.eval.results import format_table, make_record, write_results
from clipedit.io import atomic_output_set
from clipedit.outputs import OutputSet, check_outputs
from clipedit.selection.sweep import DEFAULT_RANKS, READING_TOLERANCE, SweepSettings, sweep
from clipedit.selection.tradeoff import plot_tradeoff
from clipedit.settings.resolve import resolve_config

SWEEP_FILES = ("sweep.json", "sweep.png")


@click.command()
@model_options(default="mini")
@click.option("--text", "texts", type=TEXT, multiple=True, default=("ipod",), show_default=True,
              help="Word(s) to defend against (repeat or comma-separate).")
@click.option("--sites", default=None, metavar="A,B+C,…",
              help="Candidates (dotted names, comma-separated; 'B+C': one edit over B then C) [default: every "
                   "candidate site, and the model's default sites when it has several].")
@click.option("--ranks", default=None, metavar="1,4,…",
              help=f"Ranks to try [default: {','.join(map(str, DEFAULT_RANKS))}, each capped by the site's key "
                   "dimension].")
@click.option("--n-val", type=count(), default=SweepSettings.n_val, show_default=True,
              help="Validation scenes per set (defended word; other words).")
@click.option("--n-signs", type=count(min=0), default=SweepSettings.n_signs, show_default=True,
              help="Validation signs for the reading-kept figure (0: skip).")
@click.option("--tolerance", type=finite(min=0, max=100), default=100 * PICK_TOLERANCE, show_default=True,
              help="Pick rule: largest clean / blank-note loss, in points.")
@click.option("--reading-tolerance", type=finite(min=0, max=100), default=None, metavar="POINTS",
              help=f"Pick rule: also lose at most this much reading kept (signs) [default: "
                   f"{100 * READING_TOLERANCE:g}; with --n-signs 0 reading is not in the rule].")
@click.option("--renders", type=click.IntRange(min=1), default=None,
              help="Rendered exemplars per word [default: per architecture and model, clipedit/settings/hparams].")
@click.option("--data", default=None, metavar="DIR|KIND:PATH",
              help="A labelled dataset of yours, split as clipedit compare --data splits it (a seeded hash of "
                   "file names); the sweep renders its exemplars and scores on the validation side only.")
@click.option("--classes", default=None, help="Class names for --data (comma-separated).")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of --data's validation/test split.")
@keep_reading_option()
@seed_option()
@out_dir_option(required=False, help="Output directory [default: runs/sweep-WORDS].")
def sweep_cmd(model, texts, sites, ranks, n_val, n_signs, tolerance, reading_tolerance, renders, data, classes,
              split_seed, keep_reading, seed, out) -> None:
    """Rank every candidate site x rank of the rewrite on the validation split; write sweep.json and
    sweep.png (gain vs cost with its Pareto front; beside it, defended word vs reading kept) and print the
    ranking and the pick."""
    words = [w for t in texts for w in (split_list(t) or [])]
    if not words:
        raise ClipeditError("no word to defend against (--text)")
    if "*" in words:
        raise ClipeditError("sweep scores named words; '*' (any word) is for defend")
    out = check_out_dir(out or Path("runs") / ("sweep-" + "-".join(words))[:60])
    check_outputs({"--out": OutputSet(out, SWEEP_FILES)},
                  inputs={"--checkpoint": model.checkpoint, "--data": data_path(data)})
    singles, sets = _candidates(sites)
    if reading_tolerance is not None and not n_signs:
        raise ClipeditError("--reading-tolerance needs signs to score reading on (--n-signs > 0)")
    settings = SweepSettings(sites=singles, ranks=_ranks(ranks), site_sets=sets, n_val=n_val, n_signs=n_signs,
                             tolerance=tolerance / 100,
                             reading_tolerance=(READING_TOLERANCE if reading_tolerance is None
                                                else reading_tolerance / 100) if n_signs else None)
    names = class_list(classes, None)
    if names is not None and data is None:
        raise ClipeditError("--classes goes with --data")
    split = split_data(data, split_seed, names) if data is not None else None  # compare --data's split
    bundle = model.load()
    if split is not None:  # exemplars, reference views and the scored scenes: the validation side only
        bundle = with_validation_world(bundle, split)
    start = time.perf_counter()
    config = resolve_config(bundle, {"renders": renders, "seed": seed, "keep_reading": keep_reading})
    result = sweep(bundle, words, settings, config)
    seconds = time.perf_counter() - start
    source = split.dataset if split is not None else bundle.world.name if bundle.world else bundle.name
    record = make_record(dataset=f"{source}:validation", bundle=bundle,
                         task="typographic_sweep", metrics={}, classnames=[], templates=None, words=words,
                         seed=seed, n=n_val, split="validation", n_val=n_val, n_signs=n_signs,
                         total_seconds=round(seconds, 1), config=config.to_dict(),
                         **({"data_split": split.record()} if split is not None else {}),
                         **{k: v for k, v in result.to_dict().items() if k != "words"})
    with atomic_output_set(out, replaces=SWEEP_FILES) as stage:  # the record and its chart together
        write_results(stage / "sweep.json", record)
        plot_tradeoff(result.rows, stage / "sweep.png",
                      f"{bundle.name}: rewrite against {', '.join(words)} (validation)", result.tolerance,
                      result.picked, result.baseline)
    click.echo(format_table(_table(result), header=["site", "rank", "defended", "other words", "clean", "blank",
                                                     "reading", "ok", "s"]))
    pick = result.picked
    allowed = tolerance_text(result.tolerance, result.n_scenes, result.asked_tolerance)
    click.echo(f"pick rule: clean and blank-note loss each <= {allowed}"
               + (f"; reading kept loss <= {result.reading.text()}" if result.reading is not None else ""))
    click.echo(f"pick: {pick['site']} rank {pick['rank']}" if pick else
               f"pick: none (every setting costs more than {allowed} clean or blank-note)")
    click.echo(f"{len(result.rows)} settings in {seconds:.0f} s; wrote {out}/sweep.json, sweep.png")


def _candidates(text):
    """``--sites``: (single sites or None, multi-site sets or None)."""
    items = split_list(text)
    if items is None:
        return None, None
    sets = [tuple(s.strip() for s in item.split("+")) for item in items if "+" in item]
    singles = [item for item in items if "+" not in item]
    return singles, sets


def _ranks(text):
    if text is None:
        return None
    try:
        ranks = [int(r) for r in split_list(text)]
    except ValueError:
        raise ClipeditError(f"--ranks takes comma-separated integers, got {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise ClipeditError(f"--ranks takes positive integers, got {text!r}")
    return ranks


def _table(result) -> list[list]:
    rows = [["(unedited)", "", result.baseline["text_acc"], result.baseline["other_text_acc"],
             result.baseline["clean_acc"], result.baseline["blank_acc"], result.baseline.get("reading_acc"), "", ""]]
    for r in result.ranking():
        rows.append([r["site"].replace("visual.", ""), r["rank"], r["text_acc"], r["other_text_acc"], r["clean_acc"],
                     r["blank_acc"], r.get("reading_acc"), "yes" if r["admissible"] else "no", f"{r['seconds']:.2f}"])
    return rows
