"""What the speed benchmarks share: wall time, peak memory of one call, the machine, and result files."""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"  # tracked: the figures the docs quote
SCRATCH = Path(__file__).resolve().parents[1] / "runs" / "bench"  # untracked: every run without --update-results
_WHERE = {"dir": SCRATCH}


def results_dir() -> Path:
    """Where this run's result files go (created): ``runs/bench/``, or ``bench/results/`` after
    :func:`update_results`."""
    _WHERE["dir"].mkdir(parents=True, exist_ok=True)
    return _WHERE["dir"]


def update_results(update: bool) -> Path:
    """Write this run's results over the tracked ``bench/results/`` (``update``) or to ``runs/bench/``."""
    _WHERE["dir"] = RESULTS if update else SCRATCH
    return _WHERE["dir"]


def add_update_option(ap: argparse.ArgumentParser) -> None:
    """The ``--update-results`` flag every benchmark command line takes."""
    ap.add_argument("--update-results", action="store_true",
                    help="write over the tracked bench/results/ (default: runs/bench/, untracked)")


def out_options(ap: argparse.ArgumentParser) -> None:
    """``--out FILE`` (default: ``<results_dir()>/<name>.json``, see :func:`result_path`) and ``--update-results``."""
    ap.add_argument("--out", default=None, help="result file (default: runs/bench/NAME.json, or bench/results/ "
                                                "with --update-results)")
    add_update_option(ap)


def result_path(out: Optional[str], name: str) -> Path:
    """``out`` if given, else ``<results_dir()>/<name>.json``."""
    return Path(out) if out else results_dir() / f"{name}.json"


def seconds(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (the least disturbed by other load) and the last result."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def paired_seconds(first: Callable[[], Any], second: Callable[[], Any], repeat: int = 3) -> tuple[float, float]:
    """Best wall times of two calls run alternately, so that a shared machine's changing load hits both alike."""
    a, b = [], []
    for _ in range(repeat):
        a.append(seconds(first)[0])
        b.append(seconds(second)[0])
    return min(a), min(b)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


@dataclass
class Peak:
    """Peak memory a call added on top of what was resident before it, in MiB."""

    host_mib: float
    device_mib: Optional[float]


def peak_memory(fn: Callable[[], Any]) -> tuple[Peak, Any]:
    """Run ``fn`` and measure its peak: host RSS high-water mark (Linux ``clear_refs``) and CUDA allocations."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    out = fn()
    host = (_status_kib("VmHWM") - before) / 1024
    device = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return Peak(host_mib=round(host, 1), device_mib=None if device is None else round(device, 1)), out


def machine() -> dict[str, Any]:
    """Where the figures were taken."""
    info = {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def save(name: str, result: dict[str, Any], quick: bool = False) -> Path:
    """Write ``<results_dir()>/<name>.json`` (``<name>_quick.json`` for a quick run) with the machine it ran on."""
    path = results_dir() / f"{name}{'_quick' if quick else ''}.json"
    return write_json(path, {"machine": machine(), "quick": quick, **result})


def ratio_line(label: str, value: float, target: Optional[float] = None, higher_is_better: bool = True) -> str:
    """``label  12.3x  (target >= 1000x: met)``."""
    text = f"{label:<58} {value:10.2f}x"
    if target is not None:
        met = value >= target if higher_is_better else value <= target
        text += f"  (target {'>=' if higher_is_better else '<='} {target:g}x: {'met' if met else 'MISSED'})"
    return text


def quick_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of a speed benchmark: ``--quick`` (smaller sizes) and ``--update-results``."""
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    add_update_option(ap)
