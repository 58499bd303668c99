"""Wall time and peak memory of ``clipedit defend --text ipod --no-eval`` on each model family, at random init.

    python -m bench families [--quick]

Full: the real-size open_clip ``ViT-B-16-SigLIP`` and ``convnext_base`` and a Hugging Face CLIP ViT-B/32
from transformers' default config (``write_config_folder(..., tiny=False)``); --quick: their toy-width
twins (``tiny-siglip``, ``tiny-convnext``, a toy ``CLIPModel`` folder). Each command runs once in its own
process (n = 1: wall times on a shared machine are mostly waiting). Writes (with --update-results)
bench/results/families.json.
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.measure import quick_arguments, save
from clipedit.models.hf import write_config_folder


def _specs(quick: bool, folder: Path) -> list[str]:
    hf = write_config_folder(folder / "hf-clip", "clip", tiny=quick)
    if quick:
        return ["tiny-siglip:none", "tiny-convnext:none", f"hf:{hf}:none"]
    return ["ViT-B-16-SigLIP:none", "convnext_base:none", f"hf:{hf}:none"]


# Runs clipedit's command line in a child that reports its own peak resident memory on exit.
CHILD = ("import resource, runpy, sys\n"
         "sys.argv = ['clipedit', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('clipedit', run_name='__main__')\n"
         "finally:\n    print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def run(quick: bool = False) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(_specs(quick, Path(tmp))):
            cmd = [sys.executable, "-c", CHILD, "defend", "--model", spec, "--text", "ipod", "--no-eval",
                   "--out", str(Path(tmp) / f"run{i}")]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rss = [int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("maxrss_kb ")]
            row = {"model": spec.split(":")[0] if not spec.startswith("hf:") else "hf:CLIPConfig()",
                   "ok": done.returncode == 0, "wall_s": round(wall, 1),
                   "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                   "peak_rss_gb": round(rss[-1] / 2 ** 20, 2) if rss else None, "n": 1}
            if done.returncode:
                row["error"] = [line for line in done.stderr.splitlines() if line.startswith("Error")][-1:]
            print(f"{row['model']:<24} {row['wall_s']:8.1f} s wall {row['cpu_s']:8.1f} s CPU "
                  f"{row['peak_rss_gb'] or 0:6.2f} GB peak {'ok' if row['ok'] else 'FAILED'}")
            rows.append(row)
    result = {"command": "clipedit defend --model SPEC --text ipod --no-eval", "rows": rows}
    save("families", result, quick)
    return result


add_arguments = quick_arguments


def main(args) -> None:
    run(args.quick)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
