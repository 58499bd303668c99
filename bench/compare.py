"""Every defense side by side on a bundled mini (``clipedit compare``), at the scale the docs' tables use.

    python -m bench compare --model mini-vit            # about 33 min on 2 shared CPU cores
    python -m bench compare --model mini-vit-deep --methods edit --suffix _edit

Runs ``clipedit compare --words ipod,mug,apple --seeds 0 --n 100 --n-signs 100 --n-train 300 --n-val 100``
and copies its ``compare.json`` and ``compare.png`` to ``compare_<model>[SUFFIX].json`` / ``.png`` in
runs/bench/ (bench/results/ with --update-results), the records docs/compare.md quotes.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.measure import add_update_option, results_dir

SCALE = ["--words", "ipod,mug,apple", "--seeds", "0", "--n", "100", "--n-signs", "100", "--n-train", "300",
         "--n-val", "100"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="mini-vit", help="mini, mini-vit or mini-vit-deep")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every one that applies)")
    ap.add_argument("--suffix", default="", help="appended to the result files' names")
    add_update_option(ap)


def main(args: argparse.Namespace) -> None:
    from clipedit import cli

    stem = f"compare_{args.model.replace('-', '_')}{args.suffix}"
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["compare", "--model", args.model, *SCALE, "--out", str(Path(tmp) / "out")]
        if args.methods:
            argv += ["--methods", args.methods]
        try:
            cli.main(argv)
        except SystemExit as exc:
            if exc.code:
                raise
        for ext in ("json", "png"):
            src = Path(tmp) / "out" / f"compare.{ext}"
            if src.is_file():
                shutil.copyfile(src, results_dir() / f"{stem}.{ext}")
    print(f"wrote {results_dir() / stem}.json")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
