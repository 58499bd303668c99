"""Does a committed compare record reproduce with the caches on? Re-runs the record's settings (scene cache,
finetune-local's replayed layers and Defense-Prefix's batched learning rates all on, as compare runs by
default) and checks every cell of the new run against the record: each figure inside the record's 95%
interval (and how many are equal outright). Not a test: it takes as long as the record's run.

    python -m bench compare_reproduce [--record FILE.json] [--run compare.json] [--update-results]

``--run`` checks a compare.json already made with the record's settings instead of running again.
Writes runs/bench/compare_reproduce.json (bench/results/ with --update-results). See docs/speed.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import RESULTS, SCRATCH, out_options, result_path, update_results
from clipedit.io import write_json

RECORD = RESULTS / "compare_mini_small.json"
_OPTIONS = {"words": "--words", "seeds": "--seeds", "n_test": "--n-test", "n_signs": "--n-signs",
            "n_train": "--n-train", "n_val": "--n-val", "split_seed": "--split-seed", "word_seed": "--word-seed"}


def compare_argv(record: dict[str, Any], out: Path) -> list[str]:
    """The ``clipedit compare`` arguments that made ``record`` (its model, methods and settings)."""
    cmp = record["compare"]
    settings = cmp["settings"]
    if settings.get("data") or settings.get("supported"):
        raise SystemExit("Error: the record was made on a dataset of the user's; only world records re-run here")
    argv = ["compare", "--model", record["model"], "--methods", ",".join(cmp["methods"]), "--out", str(out)]
    for key, option in _OPTIONS.items():
        value = settings.get(key)
        if value is not None:
            argv += [option, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    if settings.get("hparams"):
        path = out.parent / f"{out.name}.hparams.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings["hparams"]))
        argv += ["--hparams", str(path)]
    return argv


def _cells(cmp: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Every (table, method[, word or seed], metric) figure of a compare record: value, lo, hi, n."""
    out = {}
    for method, metrics in cmp["cells"].items():
        for metric, cell in metrics.items():
            out[("cells", method, metric)] = cell
    for table in ("by_word", "by_seed", "strata"):
        for method, groups in cmp.get(table, {}).items():
            for group, metrics in groups.items():
                for metric, cell in metrics.items():
                    out[(table, method, str(group), metric)] = cell
    return out


def check(record: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Each of the record's figures against the run's: inside the record's interval (on as many images), and
    equal; the record's figures the run lacks are listed as missing."""
    old, new = _cells(record["compare"]), _cells(run["compare"])
    rows, missing = [], sorted("/".join(k) for k in old if k not in new)
    for key, cell in old.items():
        if key not in new or not isinstance(cell, dict) or "value" not in cell:
            continue
        value = new[key]["value"]
        if cell["value"] is None or value is None:
            inside = cell["value"] is None and value is None
        else:
            inside = cell["lo"] - 1e-12 <= value <= cell["hi"] + 1e-12
        inside = inside and new[key].get("n") == cell.get("n")  # the same number of images, or it is no re-run
        rows.append({"cell": "/".join(key), "recorded": cell["value"], "lo": cell["lo"], "hi": cell["hi"],
                     "n": cell.get("n"), "rerun": value, "n_rerun": new[key].get("n"), "inside": bool(inside),
                     "equal": value == cell["value"]})
    outside = [r for r in rows if not r["inside"]]
    return {"cells": len(rows), "inside": len(rows) - len(outside), "equal": sum(r["equal"] for r in rows),
            "outside": outside, "missing": missing, "all_inside": not outside and not missing,
            "max_abs_difference": max((abs(r["rerun"] - r["recorded"]) for r in rows
                                       if r["rerun"] is not None and r["recorded"] is not None), default=0.0)}


def rerun(record: dict[str, Any], out: Path) -> tuple[dict[str, Any], float]:
    """Run ``clipedit compare`` with the record's settings in a fresh process (one torch thread); its record and
    wall seconds."""
    cmd = [sys.executable, "-m", "clipedit", *compare_argv(record, out)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"Error: compare failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads((out / "compare.json").read_text()), wall


def main(args) -> None:
    record_path = Path(args.record)
    record = json.loads(record_path.read_text())
    scenes = Path(os.environ.get("CLIPEDIT_CACHE", Path.home() / ".cache" / "clipedit")) / "scenes"
    before = len(list(scenes.glob("*"))) if scenes.is_dir() else 0
    if args.run:
        run, wall, argv = json.loads(Path(args.run).read_text()), None, None
    else:
        out = SCRATCH / "compare_reproduce" / record_path.stem
        argv = compare_argv(record, out)
        run, wall = rerun(record, out)
    after = len(list(scenes.glob("*"))) if scenes.is_dir() else 0
    result = check(record, run)
    print(f"{record_path.name}: {result['inside']} of {result['cells']} figures inside the record's 95% interval, "
          f"{result['equal']} equal; largest difference {result['max_abs_difference']:.3g}"
          + (f"; missing: {', '.join(result['missing'])}" if result["missing"] else ""))
    for row in result["outside"]:
        print(f"  outside: {row['cell']} {row['rerun']} not in [{row['lo']:.4f}, {row['hi']:.4f}] (recorded "
              f"{row['recorded']})")
    update_results(args.update_results)
    path = result_path(args.out, "compare_reproduce")
    write_json(path, {"record": str(record_path.relative_to(RESULTS.parent.parent)) if record_path.is_relative_to(
        RESULTS.parent.parent) else str(record_path), "argv": argv, "wall_seconds": wall,
        "recorded_wall_seconds": record["compare"].get("wall_seconds"), "scene_cache_entries": [before, after],
        "scene_cache": os.environ.get("CLIPEDIT_SCENE_CACHE", "1"), "load_average": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **result})
    print(f"wrote {path}")


def add_arguments(ap) -> None:
    """``--record``, ``--run``, ``--out`` and ``--update-results``."""
    ap.add_argument("--record", default=str(RECORD), help="the committed compare record (default: %(default)s)")
    ap.add_argument("--run", default=None, help="a compare.json made with the record's settings (default: run it)")
    out_options(ap)



if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
