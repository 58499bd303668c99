"""``clipedit compare --model mini-vit``: every defense on the same budget, scored on the test split."""
from __future__ import annotations

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
from clipedit.data.benchmarks import LAYOUTS, data_path
from clipedit.data.splits import MIN_PER_SIDE, split_data
from clipedit.defenses.compare import (
    COMPARE_METHODS,
    WORLD_WORDS,
    CompareSettings,
    check_settings,
    compare,
    flat_metrics,
    pareto_rows,
    resolved,
    table_rows,
)
from clipedit.defenses.paint import check_supported
from clipedit.defenses.sweep import plot_tradeoff
from clipedit.defenses.user_data import with_validation_world
from clipedit.errors import ClipeditError
from clipedit.eval.intervals import format_cell
from clipedit.eval.report import write_report
from clipedit.eval.results import format_table, make_record, write_results
from clipedit.outputs import OutputSet, check_outputs

DEFAULTS = CompareSettings()


@click.command()
@model_options(default="mini")
@click.option("--methods", default=None, metavar="A,B,…",
              help=f"Methods to run [default: every one that applies; known: {', '.join(COMPARE_METHODS)}].")
@click.option("--words", default=None, metavar="W,…",
              help=f"Defended words (each defended separately) [default: {','.join(WORLD_WORDS)}; with --data: a "
                   "benchmark's three most frequent written words, an ImageFolder's first three classes].")
@click.option("--seeds", default=",".join(map(str, DEFAULTS.seeds)), show_default=True, metavar="S,…",
              help="Seeds (exemplars, training splits, training order); over seeds: mean and t interval.")
@click.option("--n", "n_test", type=int, default=DEFAULTS.n_test, show_default=True,
              help="Test scenes per set (defended word; other words).")
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
@click.option("--supported", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="PAINT's supported task: an ImageFolder distinct from the patch data [default: clean "
                   "validation scenes and signs of the model's world].")
@click.option("--supported-classes", default=None, help="Class names for --supported (comma-separated).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an HTML report here.")
@out_dir_option(required=False, help="Output directory [default: runs/compare-MODEL].")
def compare_cmd(model, methods, words, seeds, n_test, n_signs, n_train, n_val, hparams_file, data, classes, split_seed,
                supported, supported_classes, report, out) -> None:
    """Run every method on the same exemplars / typographic training split, each tuned on validation only,
    and score all on the test split; writes compare.json (clip_benchmark fields, flat metrics) and
    compare.png (gain vs cost), and prints the table (every cell: value [95% interval] n)."""
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
                               split_seed=split_seed, supported=str(supported) if supported is not None else None,
                               supported_classes=tuple(support_names) if support_names else None)
    out = check_out_dir(out or Path("runs") / f"compare-{model.spec.replace(':', '-')}")
    check_outputs({"--out": OutputSet(out, ("compare.json", "compare.png", "compare.partial.json")),
                   "--report": report},
                  inputs={"--checkpoint": model.checkpoint, "--data": data_path(data), "--supported": supported,
                          "--hparams": hparams_file})
    if supported is not None:
        check_supported(supported, support_names)
        _distinct(supported, data)
    split = split_data(data, split_seed, names) if data is not None else None
    bundle = model.load()
    settings = resolved(settings, split)
    check_settings(with_validation_world(bundle, split) if split is not None else bundle, settings)  # before work
    start = time.perf_counter()
    partial = out / "compare.partial.json"  # the methods done so far, while the rest run; removed at the end

    def keep(so_far: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(partial, {"partial": True, "compare": so_far})

    record = compare(bundle, settings, progress=lambda m: click.echo(m, err=True), on_method=keep, split=split)
    seconds = time.perf_counter() - start
    header, rows = table_rows(record, format_cell)
    n = len(split.test) if split is not None else settings.n_test  # test-side images, or scenes a set
    result = make_record(dataset=split.dataset if split else bundle.world.name, bundle=bundle,
                         task="typographic_defense_compare", metrics=flat_metrics(record),
                         classnames=split.classnames if split else bundle.world.classnames,
                         templates=bundle.templates, words=settings.words, seed=None, n=n,
                         split="test", total_seconds=round(seconds, 1), compare=record,
                         **({"data_split": record["data"]} if split else {}))
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "compare.json", result)
    plot_tradeoff(pareto_rows(record), out / "compare.png",
                  f"{bundle.name}: defenses vs {', '.join(settings.words)} (test split, n={n}"
                  f"{'' if split else ' a set'}, "
                  f"{len(settings.seeds)} seed(s))")
    if report is not None:
        write_report(report, title=f"clipedit compare: {bundle.name}",
                     facts=[("model", f"{bundle.name} ({bundle.pretrained})"), ("words", ", ".join(settings.words)),
                            ("seeds", ", ".join(map(str, settings.seeds))), ("split", "test"),
                            ("seconds", f"{seconds:.0f}")],
                     header=header, rows=rows, chart=(out / "compare.png").read_bytes(), grid=[],
                     notes=["Cells: value [95% interval] n; one seed: Wilson; several: mean and t interval over seeds.",
                            "A beats B only where the intervals do not overlap; otherwise it is a tie.",
                            *record["notes"]])
    partial.unlink(missing_ok=True)
    click.echo(format_table(rows, header=header))
    for note in record["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"{len(record['methods'])} methods x {len(settings.seeds)} seeds x {len(settings.words)} words in "
               f"{seconds:.0f} s; wrote {out}/compare.json, compare.png" + (f", {report}" if report else ""))


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
