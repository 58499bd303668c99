"""``clipedit compare --model mini-vit``: every defense on the same budget, scored on the test split."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import (
    check_out_dir,
    class_list,
    model_options,
    out_dir_option,
    read_json_file,
    split_list,
)
from clipedit.commands.params import JSON_FILE
from clipedit.core.distributed import init_from_environment, is_main_process, rank_and_world
from clipedit.data.benchmarks import LAYOUTS, data_path
from clipedit.data.prepare.typo_train import check_supported
from clipedit.data.prepare.user_data import with_validation_world
from clipedit.data.splits import MIN_PER_SIDE, split_data
from clipedit.errors import ClipeditError
from clipedit.eval.compare_table import compare_record, plane_rows, render, report_tables
from clipedit.eval.paired import ALPHA
from clipedit.eval.report import write_report
from clipedit.eval.results import make_record, write_results
from clipedit.io import atomic_output_set
from clipedit.outputs import OutputSet, check_outputs
from clipedit.selection.compare import (
    COMPARE_METHODS,
    WORLD_WORDS,
    CompareSettings,
    check_given,
    check_settings,
    compare,
    resolved,
)
from clipedit.selection.compare_results import flat_metrics, pareto_rows
from clipedit.selection.compare_units import partial_name, remove_partials
from clipedit.selection.tradeoff import plot_tradeoff

COMPARE_FILES = ("compare.json", "compare.png")  # one set; each rank's partial record only while running

DEFAULTS = CompareSettings()


@click.command()
@model_options(default="mini")
@click.option("--methods", default=None, metavar="A,B,…",
              help=f"Methods to run [default: every one that applies; known: {', '.join(COMPARE_METHODS)}].")
@click.option("--words", default=None, metavar="W,…",
              help=f"Defended words (each defended separately) [default: {','.join(WORLD_WORDS)}; with --data: a "
                   "benchmark's three most frequent written words, an ImageFolder's first three classes, leaving "
                   "two undefended for the word-disjoint split].")
@click.option("--seeds", default=",".join(map(str, DEFAULTS.seeds)), show_default=True, metavar="S,…",
              help="Seeds (exemplars, training splits, training order); over seeds: the mean, with a bootstrap "
                   "interval over test images and seeds.")
@click.option("--n", "--n-test", "n_test", type=int, default=DEFAULTS.n_test, show_default=True,
              help="Test scenes per set (defended word; other words); under torchrun spell it --n-test (torchrun "
                   "reads a bare --n as one of its own options).")
@click.option("--n-signs", type=int, default=DEFAULTS.n_signs, show_default=True, help="Test signs (reading kept).")
@click.option("--n-train", type=int, default=DEFAULTS.n_train, show_default=True,
              help="Typographic training scenes (dyslexify, paint, defense-prefix).")
@click.option("--n-val", type=int, default=DEFAULTS.n_val, show_default=True,
              help="Validation scenes per set for the methods' own tuning.")
@click.option("--hparams", "hparams_file", type=JSON_FILE, default=None,
              metavar="FILE.json", help='Methods\' settings over their defaults: {"METHOD": {FIELD: VALUE, …}, …} '
                                        '(e.g. {"defense-prefix": {"steps": 500}}); recorded in compare.json.')
@click.option("--data", default=None, metavar="DIR|KIND:PATH",
              help="A labelled dataset of yours: an ImageFolder (notes rendered on its photos) or a typographic "
                   f"benchmark (KIND: {', '.join(LAYOUTS)}), split into validation (tuning) and test (the table) "
                   f"by a seeded hash of file names (at least {MIN_PER_SIDE} images a side).")
@click.option("--classes", default=None, help="Class names for --data (comma-separated).")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of --data's validation/test split.")
@click.option("--word-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the word-disjoint split: the class words (the model's world's, or --data's classes) "
                   "no method trains or renders on, which alone the 'unseen words' cells write (or, on a "
                   "benchmark, show); recorded in compare.json's word_split.")
@click.option("--supported", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="PAINT's supported task: an ImageFolder distinct from the patch data [default: clean "
                   "validation scenes and signs of the model's world].")
@click.option("--supported-classes", default=None, help="Class names for --supported (comma-separated).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an HTML report here.")
@click.option("--table", "table_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.json", help="Print the markdown tables of a compare.json already written (cells, "
                                        "budgets, paired verdicts) and exit; runs nothing.")
@out_dir_option(required=False, help="Output directory [default: runs/compare-MODEL].")
def compare_cmd(model, methods, words, seeds, n_test, n_signs, n_train, n_val, hparams_file, data, classes, split_seed,
                word_seed, supported, supported_classes, report, table_file, out) -> None:
    """Run every method on the same exemplars / typographic training split, each tuned on validation only,
    and score all on the test split; writes compare.json (clip_benchmark fields, flat metrics, per-image
    outcomes) and compare.png (gain vs cost; beside it, every method on the defended word vs reading kept plane
    with its intervals), and prints the tables (every cell: value [95% interval], n
    distinct images; every method against unedited and edit as a paired difference with a Holm-corrected
    exact McNemar p and its verdict).

    \b
    Duration: the defaults (every method x 3 seeds x 3 words, 1000 test
    scenes a set, 1000 training and 500 validation scenes) take about a day
    on a CPU; Defense-Prefix's fixed schedule (2480 steps x 3 learning rates)
    is a large part of it and does not shrink with --n. Try a small run first:
      clipedit compare --model mini-vit --methods edit,dyslexify,paint \\
        --words ipod --seeds 0 --n 100 --n-signs 100 --n-train 100 --n-val 50
    Re-print a record's tables (runs nothing):
      clipedit compare --table runs/compare-mini-vit/compare.json
    """
    if table_file is not None:
        click.echo(_table(table_file))
        return
    names = class_list(classes, None)
    if names is not None and data is None:
        raise ClipeditError("--classes goes with --data")
    support_names = class_list(supported_classes, None)
    if support_names is not None and supported is None:
        raise ClipeditError("--supported-classes goes with --supported")
    settings = CompareSettings(methods=tuple(split_list(methods)) if methods is not None else None,
                               words=tuple(split_list(words) or ()) if words is not None else None,
                               seeds=_seeds(seeds), n_test=n_test, n_signs=n_signs, n_train=n_train, n_val=n_val,
                               hparams=_hparams(hparams_file), data=data, classes=tuple(names) if names else None,
                               split_seed=split_seed, word_seed=word_seed,
                               supported=str(supported) if supported is not None else None,
                               supported_classes=tuple(support_names) if support_names else None)
    out = check_out_dir(out or Path("runs") / f"compare-{model.spec.replace(':', '-')}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_outputs({"--out": OutputSet(out, (*COMPARE_FILES, *(partial_name(r) for r in range(max(world, 1))))),
                   "--report": report},
                  inputs={"--checkpoint": model.checkpoint, "--data": data_path(data), "--supported": supported,
                          "--hparams": hparams_file})
    if supported is not None:
        check_supported(supported, support_names)
        _distinct(supported, data)
    check_given(settings)  # what needs no model, before it loads
    # under torchrun the ranks share the grid's units (all ranks with the same arguments); rank 0 writes
    init_from_environment(agree_on=click.get_current_context().params)
    split = split_data(data, split_seed, names) if data is not None else None
    bundle = model.load()
    settings = resolved(settings, split)
    check_settings(with_validation_world(bundle, split) if split is not None else bundle, settings)  # before work
    start = time.perf_counter()
    rank = rank_and_world()[0]
    # each rank keeps its finished units in out/compare.rank{R}.partial.json; a restart redoes only the rest
    record = compare(bundle, settings, progress=lambda m: click.echo(m if rank == 0 else f"[rank {rank}] {m}",
                                                                      err=True),
                     split=split, partial_dir=out)
    if not is_main_process():
        return
    seconds = time.perf_counter() - start
    n = len(split.test) if split is not None else settings.n_test  # test-side images, or scenes a set
    result = make_record(dataset=split.dataset if split else bundle.world.name, bundle=bundle,
                         task="typographic_defense_compare", metrics=flat_metrics(record),
                         classnames=split.classnames if split else bundle.world.classnames,
                         templates=bundle.templates, words=settings.words, seed=None, n=n,
                         split="test", total_seconds=round(seconds, 1), compare=record,
                         **({"data_split": record["data"]} if split else {}))
    with atomic_output_set(out, replaces=COMPARE_FILES) as stage:  # record and chart together
        write_results(stage / "compare.json", result)
        plot_tradeoff(pareto_rows(record), stage / "compare.png",
                      f"{bundle.name}: defenses vs {', '.join(settings.words)} (test split, n={n}"
                      f"{'' if split else ' a set'}, "
                      f"{len(settings.seeds)} seed(s))", baseline=plane_rows(record)[0], unseen=True)
        chart = (stage / "compare.png").read_bytes()
    if report is not None:
        write_report(report, title=f"clipedit compare: {bundle.name}",
                     facts=[("model", f"{bundle.name} ({bundle.pretrained})"), ("words", ", ".join(settings.words)),
                            ("seeds", ", ".join(map(str, settings.seeds))), ("split", "test"),
                            ("seconds", f"{seconds:.0f}")],
                     header=[], rows=[], chart=chart, grid=[],
                     tables=report_tables(record),
                     chart_caption="Left: gain (defended-word text-note accuracy) vs cost (clean / blank-note loss). "
                                   "Right: every method on the defended word vs reading kept plane: text-note "
                                   "accuracy (filled: defended word, hollow: unseen words) against signs read, "
                                   "bars: 95% intervals both ways, x: the unedited model.",
                     notes=["Cells: percent [95% interval], n = distinct test images; one seed: Wilson; several: "
                            "a bootstrap over test images and seeds (at least the Wilson width).",
                            f"Verdicts: paired on the same images, beats/loses when the Holm-adjusted exact McNemar "
                            f"(sign test over seeds) p < {ALPHA}, else ties.", *record["notes"]])
    remove_partials(out)  # the record is whole
    click.echo(render(record))
    click.echo(f"{len(record['methods'])} methods x {len(settings.seeds)} seeds x {len(settings.words)} words in "
               f"{seconds:.0f} s; wrote {out}/compare.json, compare.png" + (f", {report}" if report else ""))


def _table(path: Path) -> str:
    doc = read_json_file(path, "--table")
    try:
        return render(compare_record(doc))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ClipeditError(f"--table {path}: {e}") from None


def _hparams(path: Optional[Path]) -> dict:
    given = read_json_file(path, "--hparams")
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise ClipeditError(f"--hparams {path}: expected a JSON object of method -> settings")
    return given


def _seeds(text: str) -> tuple[int, ...]:
    items = split_list(text) or []
    if not items:
        raise ClipeditError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    try:
        return tuple(int(s) for s in items)
    except ValueError:
        raise ClipeditError(f"--seeds takes comma-separated integers, got {text!r}") from None


def _distinct(supported: Path, data) -> None:
    """PAINT's supported task is not the patch data: refuse ``--supported`` inside (or holding) ``--data``."""
    if data is None:
        return
    a, b = supported.resolve(), data_path(data).resolve()
    b = b if b.is_dir() else b.parent
    if a == b or b in a.parents or a in b.parents:
        raise ClipeditError(f"--supported {supported} overlaps --data {data}: PAINT's supported task must be "
                            "distinct from the patch data")
