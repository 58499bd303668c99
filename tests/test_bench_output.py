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


def test_the_list_names_every_registered_benchmark_and_each_has_a_module():
    done = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from bench.harness import BENCHMARKS

    listed = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert listed == list(BENCHMARKS)
    # every benchmark module of the folder is registered (nothing runs outside the harness)
    helpers = {"__init__", "__main__", "harness", "measure"}
    modules = {f.stem for f in (ROOT / "bench").glob("*.py")} - helpers
    assert modules == {m.removeprefix("bench.") for m in BENCHMARKS.values()}


def test_each_benchmark_parses_its_options_through_the_one_parser():
    from bench.harness import BENCHMARKS, parser

    ap = parser()
    for name in BENCHMARKS:
        args = ap.parse_args([name])
        assert args.name == name
    assert ap.parse_args(["heldout_gap", "--model", "mini-vit", "--n", "7", "--final"]).n == 7
    assert ap.parse_args(["edit_speed", "--quick", "--update-results"]).update_results is True
    assert ap.parse_args(["mini_vit_sites", "--parts", "value"]).value_sets.startswith("v0+c0")
    assert ap.parse_args(["compare", "--model", "mini", "--methods", "edit"]).methods == "edit"
    with pytest.raises(SystemExit):
        ap.parse_args(["heldout_gap", "--no-such-option"])
    with pytest.raises(SystemExit):
        ap.parse_args(["no_such_benchmark"])


def test_the_results_index_names_every_result_file_and_each_starts_with_its_benchmark():
    from bench.harness import BENCHMARKS

    results = ROOT / "bench" / "results"
    index = (results / "README.md").read_text()
    files = sorted(f.name for f in results.iterdir() if f.name != "README.md")
    assert not [f for f in files if f.endswith(".log")]  # logs live in bench/logs/
    for name in files:
        stem = name.rsplit(".", 1)[0]
        owner = [b for b in BENCHMARKS if stem == b or stem.startswith(b + "_")]
        assert owner, f"{name} is named after no benchmark"
        assert f"`{owner[0]}`" in index


@pytest.mark.slow
def test_every_bench_command_line_takes_update_results():
    done = subprocess.run([sys.executable, "-m", "bench", "speed", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "--update-results" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "bench.snow_edit", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert "--data" in done.stdout and "--update-results" in done.stdout


def test_the_harness_runs_a_registered_benchmark_with_its_options(monkeypatch, tmp_path):
    import types

    from bench import harness, measure

    seen = {}
    toy = types.ModuleType("bench.toy")
    toy.__doc__ = "A toy benchmark. It records what it was given."
    toy.add_arguments = measure.quick_arguments
    toy.main = lambda args: seen.update(quick=args.quick, where=measure.results_dir())
    monkeypatch.setitem(sys.modules, "bench.toy", toy)
    monkeypatch.setitem(harness.BENCHMARKS, "toy", "bench.toy")
    monkeypatch.setattr(measure, "SCRATCH", tmp_path / "runs" / "bench")
    monkeypatch.setitem(measure._WHERE, "dir", measure.SCRATCH)
    harness.main(["toy", "--quick"])
    assert seen == {"quick": True, "where": tmp_path / "runs" / "bench"}
    assert harness.summary("toy") == "A toy benchmark"
    monkeypatch.setattr(measure, "RESULTS", tmp_path / "results")
    harness.main(["toy", "--update-results"])
    assert seen == {"quick": False, "where": tmp_path / "results"}
