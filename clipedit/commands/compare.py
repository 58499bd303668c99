"""``clipedit compare --model mini-vit``: every defense on the same budget, scored on the test split."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import check_out_dir, model_options, out_dir_option, read_json_file, split_list
from clipedit.defenses.compare import (
    COMPARE_METHODS,
    CompareSettings,
    check_settings,
    compare,
    flat_metrics,
    pareto_rows,
    table_rows,
)
from clipedit.defenses.sweep import plot_tradeoff
from clipedit.errors import ClipeditError
from clipedit.eval.intervals import format_cell
from clipedit.eval.report import write_report
from clipedit.eval.results import format_table, make_record, write_results

DEFAULTS = CompareSettings()


@click.command()
@model_options(default="mini")
@click.option("--methods", default=None, metavar="A,B,…",
              help=f"Methods to run [default: every one that applies; known: {', '.join(COMPARE_METHODS)}].")
@click.option("--words", default=",".join(DEFAULTS.words), show_default=True, metavar="W,…",
              help="Defended words (each defended separately).")
@click.option("--seeds", default=",".join(map(str, DEFAULTS.seeds)), show_default=True, metavar="S,…",
              help="Seeds (exemplars, training splits, training order); over seeds: mean and t interval.")
@click.option("--n", "n_test", type=int, default=DEFAULTS.n_test, show_default=True,
              help="Test scenes per set (defended word; other words).")
@click.option("--n-signs", type=int, default=DEFAULTS.n_signs, show_default=True, help="Test signs (reading kept).")
@click.option("--n-train", type=int, default=DEFAULTS.n_train, show_default=True,
              help="Typographic training scenes (dyslexify, paint, defense-prefix).")
@click.option("--n-val", type=int, default=DEFAULTS.n_val, show_default=True,
              help="Validation scenes per set for the methods' own tuning.")
@click.option("--hparams", "hparams_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.json", help='Methods\' settings over their defaults: {"METHOD": {FIELD: VALUE, …}, …} '
                                        '(e.g. {"defense-prefix": {"steps": 500}}); recorded in compare.json.')
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write an HTML report here.")
@out_dir_option(required=False, help="Output directory [default: runs/compare-MODEL].")
def compare_cmd(model, methods, words, seeds, n_test, n_signs, n_train, n_val, hparams_file, report, out) -> None:
    """Run every method on the same exemplars / typographic training split, each tuned on validation only,
    and score all on the test split; writes compare.json (clip_benchmark fields, flat metrics) and
    compare.png (gain vs cost), and prints the table (every cell: value [95% interval] n)."""
    settings = CompareSettings(methods=tuple(split_list(methods)) if methods is not None else None,
                               words=tuple(split_list(words) or ()), seeds=_seeds(seeds), n_test=n_test,
                               n_signs=n_signs, n_train=n_train, n_val=n_val, hparams=_hparams(hparams_file))
    out = check_out_dir(out or Path("runs") / f"compare-{model.spec.replace(':', '-')}")
    bundle = model.load()
    check_settings(bundle, settings)  # before any work: one Error line, nothing written
    start = time.perf_counter()
    partial = out / "compare.partial.json"  # the methods done so far, while the rest run; removed at the end

    def keep(so_far: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_results(partial, {"partial": True, "compare": so_far})

    record = compare(bundle, settings, progress=lambda m: click.echo(m, err=True), on_method=keep)
    seconds = time.perf_counter() - start
    header, rows = table_rows(record, format_cell)
    result = make_record(dataset=bundle.world.name, bundle=bundle, task="typographic_defense_compare",
                         metrics=flat_metrics(record), classnames=bundle.world.classnames,
                         templates=bundle.templates, words=settings.words, seed=None, n=settings.n_test,
                         split="test", total_seconds=round(seconds, 1), compare=record)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out / "compare.json", result)
    plot_tradeoff(pareto_rows(record), out / "compare.png",
                  f"{bundle.name}: defenses vs {', '.join(settings.words)} (test split, n={settings.n_test} a set, "
                  f"{len(settings.seeds)} seed(s))")
    if report is not None:
        write_report(report, title=f"clipedit compare: {bundle.name}",
                     facts=[("model", f"{bundle.name} ({bundle.pretrained})"), ("words", ", ".join(settings.words)),
                            ("seeds", ", ".join(map(str, settings.seeds))), ("split", "test"),
                            ("seconds", f"{seconds:.0f}")],
                     header=header, rows=rows, chart=(out / "compare.png").read_bytes(), grid=[],
                     notes=["Cells: value [95% interval] n; one seed: Wilson; several: mean and t interval over seeds.",
                            "A beats B only where the intervals do not overlap; otherwise it is a tie."])
    partial.unlink(missing_ok=True)
    click.echo(format_table(rows, header=header))
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
