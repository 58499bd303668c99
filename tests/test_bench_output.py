"""The bench writes to the untracked runs/bench/ unless asked to update the tracked bench/results/."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_results_go_to_runs_unless_update_results(monkeypatch, tmp_path):
    from bench import measure

    monkeypatch.setattr(measure, "SCRATCH", tmp_path / "runs" / "bench")
    monkeypatch.setitem(measure._WHERE, "dir", measure.SCRATCH)
    path = measure.save("probe", {"x": 1}, quick=True)
    assert path == tmp_path / "runs" / "bench" / "probe_quick.json" and path.is_file()
    assert measure.update_results(True) == ROOT / "bench" / "results"
    assert measure.update_results(False) == measure.SCRATCH
    tracked = subprocess.run(["git", "ls-files", "runs"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""  # runs/ is ignored, so a run never dirties the checkout


@pytest.mark.slow
def test_every_bench_command_line_takes_update_results():
    for module in ("bench",):  # the runner; single benchmarks share bench.measure.main_for
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and "--update-results" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "bench/snow_edit.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert "--data" in done.stdout and "--update-results" in done.stdout
