"""One command line for every benchmark: ``python -m bench NAME [options]`` (``--list`` names them).

A benchmark is a module of this folder with ``add_arguments(parser)`` (its options) and ``main(args)``;
it joins by one entry in :data:`BENCHMARKS`. Every benchmark that takes ``--update-results`` writes its
result files to the untracked runs/bench/ unless given it; the tracked files are in bench/results/
(indexed by bench/results/README.md), each named after the benchmark that writes it (``NAME.json``,
``NAME_<variant>.json``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Optional

# Before anything imports huggingface_hub (it reads this once): a benchmark never waits on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name -> module of bench/; the one table (`python -m bench --list` prints it, with each module's first line)
BENCHMARKS: dict[str, str] = {
    "speed": "bench.speed",
    "edit_speed": "bench.edit_speed",
    "stats_speed": "bench.stats_speed",
    "eval_speed": "bench.eval_speed",
    "edit_scaling": "bench.edit_scaling",
    "exemplar_memory": "bench.exemplar_memory",
    "render_speed": "bench.render_speed",
    "families": "bench.families",
    "defend_mini": "bench.defend_mini",
    "defend_positions": "bench.defend_positions",
    "heldout_gap": "bench.heldout_gap",
    "text_survival": "bench.text_survival",
    "any_word": "bench.any_word",
    "mini_vit_sites": "bench.mini_vit_sites",
    "scripts_reading": "bench.scripts_reading",
    "compare": "bench.compare",
    "compare_speed": "bench.compare_speed",
    "compare_reproduce": "bench.compare_reproduce",
    "snow_edit": "bench.snow_edit",
    "fonts": "bench.fonts",
    "surgical_sites": "bench.surgical_sites",
}


def module(name: str) -> ModuleType:
    """The benchmark's module (imported on first use)."""
    return importlib.import_module(BENCHMARKS[name])


def summary(name: str) -> str:
    """The first sentence of a benchmark's docstring."""
    first = " ".join((module(name).__doc__ or "").strip().split("\n\n")[0].split())
    return textwrap.shorten(first.split(". ")[0].removesuffix("."), 110, placeholder=" …")


def parser() -> argparse.ArgumentParser:
    """The one parser: a sub-command per benchmark, each with the options its module adds."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="name every benchmark, with its first line")
    sub = ap.add_subparsers(dest="name", metavar="NAME")
    for name in BENCHMARKS:
        mod = module(name)
        p = sub.add_parser(name, help=summary(name), description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
    return ap


def main(argv: Optional[list[str]] = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.list or args.name is None:
        width = max(map(len, BENCHMARKS))
        print("\n".join(f"{name:<{width}}  {summary(name)}" for name in BENCHMARKS))
        if not args.list:
            print("\nrun one: python -m bench NAME [options]   (python -m bench NAME --help for its options)")
        return
    if getattr(args, "update_results", None) is not None:
        from bench.measure import update_results

        update_results(args.update_results)
    module(args.name).main(args)


def script(path: str) -> None:
    """``python -m bench.NAME …`` (a module run as a script): the same as ``python -m bench NAME …``."""
    main([Path(path).stem, *sys.argv[1:]])
