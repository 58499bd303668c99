"""The speed and memory benchmarks side by side, with the ratios against their targets.

    python -m bench speed            # the full suite (tens of minutes on 2 CPU cores)
    python -m bench speed --quick    # smaller sizes, fewer optimizer/fine-tuning steps, no ViT-L/14
    python -m bench speed --only edit_speed eval_speed

Each benchmark prints its figures and writes runs/bench/<name>.json (``<name>_quick.json`` for
--quick); this suite adds speed[_quick].json (the targets, met or missed) and the plots (full runs)
there. ``--update-results`` writes them over the tracked bench/results/ instead (what docs/speed.md
quotes).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from bench import edit_scaling, edit_speed, eval_speed, exemplar_memory, stats_speed
from bench.measure import quick_arguments, results_dir, save

SUITE: dict[str, Callable[[bool], dict[str, Any]]] = {
    "edit_speed": edit_speed.run,
    "stats_speed": stats_speed.run,
    "eval_speed": eval_speed.run,
    "edit_scaling": edit_scaling.run,
    "exemplar_memory": exemplar_memory.run,
}


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure that has a target: what was measured, the target, met or not."""
    rows = []

    def add(figure: str, value: float, target: float, higher_is_better: bool = True) -> None:
        met = value >= target if higher_is_better else value <= target
        sign = ">=" if higher_is_better else "<="
        rows.append({"figure": figure, "value": round(value, 3), "target": f"{sign} {target:g}", "met": bool(met)})

    if "edit_speed" in results:
        r = results["edit_speed"]
        add("edit: optimizer (20000 steps) / closed form, mini",
            r["ratios"]["optimizer (paper's 20000 steps) / closed form"], edit_speed.TARGET)
        rows[-1]["met"] = rows[-1]["met"] and r["closed_form_at_least_as_accurate"]
    for row in results.get("stats_speed", {}).get("rows", []):
        site = f"{row['model']} {row['layer'].removeprefix('visual.')}"
        add(f"key statistics / encode_image, {site}", row["ratio"], stats_speed.TARGET)
        add(f"key statistics peak memory 4N / N, {site}", row["peak_ratio_4n_over_n"], stats_speed.MEMORY_FLAT, False)
    for row in results.get("eval_speed", {}).get("rows", []):
        add(f"audit (cached head) / encode_image, {row['model']}", row["ratio_cached_head"], eval_speed.TARGET)
    for row in results.get("edit_scaling", {}).get("rows", []):
        add(f"edit: optimizer (20000 steps) / closed form, {row['model']} d={row['key_dim']}", row["ratio"],
            edit_speed.TARGET)
    for row in results.get("exemplar_memory", {}).get("rows", []):
        add(f"exemplar collection peak 4N / N (batched), {row['model']}", row["batched_ratio_4n_over_n"],
            exemplar_memory.MEMORY_FLAT, False)
    return rows


def plot(results: dict[str, dict[str, Any]]) -> list[str]:
    """PNG plots of the edit's cost vs key dimension and of the methods' times; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "edit_scaling" in results:
        rows = results["edit_scaling"]["rows"]
        dims = [r["key_dim"] for r in rows]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        ax_t.loglog(dims, [r["closed_form_seconds"] for r in rows], "o-", label="closed form")
        ax_t.loglog(dims, [r["optimizer_paper_seconds"] for r in rows], "s-",
                    label="optimizer, 20000 steps (extrapolated)")
        ax_t.set(xlabel="key dimension", ylabel="seconds", title="edit time vs key dimension")
        ax_m.semilogx(dims, [r["closed_form_peak_mib"] for r in rows], "o-")
        ax_m.set(xlabel="key dimension", ylabel="peak MiB added", title="closed-form edit, peak memory")
        for ax in (ax_t, ax_m):
            ax.set_xticks(dims, [str(d) for d in dims])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for r in rows:
            ax_t.annotate(r["model"].split(":")[0], (r["key_dim"], r["closed_form_seconds"]), fontsize=8)
        ax_t.legend(fontsize=8)
        fig.tight_layout()
        paths.append(str(results_dir() / "edit_scaling.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if "edit_speed" in results:
        rows = {k: v for k, v in results["edit_speed"]["rows"].items() if k != "unedited"}
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh(list(rows), [v["seconds"] for v in rows.values()])
        ax.set_xscale("log")
        ax.set(xlabel="seconds (log)", title="mini CLIP, defending 'ipod': time per method")
        fig.tight_layout()
        paths.append(str(results_dir() / "edit_speed.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def add_arguments(ap: argparse.ArgumentParser) -> None:
    quick_arguments(ap)
    ap.add_argument("--only", nargs="+", choices=list(SUITE), help="run only these benchmarks")


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench").setLevel(logging.INFO)
    results, wall = {}, {}
    for name in args.only or SUITE:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        results[name] = SUITE[name](args.quick)
        wall[name] = round(time.perf_counter() - start, 1)
    rows = targets(results)
    print("\n== targets ==")
    for row in rows:
        print(f"  {row['figure']:<72} {row['value']:>10.2f}  {row['target']:<8} {'met' if row['met'] else 'MISSED'}")
    print("  seconds per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items()))
    plots = [] if args.quick else plot(results)
    save("speed", {"targets": rows, "seconds_per_benchmark": wall, "plots": plots,
                   "load_average_at_end": os.getloadavg()}, args.quick)
    print(f"results in {results_dir()}/")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
