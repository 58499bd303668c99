"""``torchrun -m clipedit compare``: the grid's units shared over 2 gloo ranks give one process's cells, and a
killed run's partial file makes the next run redo only the missing units."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipedit import cli
from clipedit.core.distributed import all_gather_objects
from clipedit.selection import compare as compare_module
from clipedit.selection.compare_units import UNEDITED, grid_units, my_units, partial_files, unit_key


def argv(out: Path, hparams: Path) -> list[str]:
    return ["compare", "--model", "mini", "--methods", "edit,finetune-local", "--words", "ipod", "--seeds", "0,1",
            "--n-test", "6", "--n-signs", "4", "--n-train", "8", "--n-val", "4", "--hparams", str(hparams),
            "--out", str(out)]


@pytest.fixture(scope="module")
def hparams(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hp") / "hparams.json"
    path.write_text(json.dumps({"finetune-local": {"steps": 3}}))
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, hparams) -> dict:
    out = tmp_path_factory.mktemp("one") / "cmp"
    cli.main(argv(out, hparams))
    assert not partial_files(out)  # removed once compare.json is whole
    return json.loads((out / "compare.json").read_text())["compare"]


def test_grid_units_are_one_unedited_and_one_per_method_seed_word():
    units = grid_units(["edit", "paint"], [0, 1], ["ipod", "mug"], {"edit": False, "paint": True})
    assert units[0] == UNEDITED and len(units) == 1 + 2 * 2 + 2
    assert ("edit", "1", "mug") in units and ("paint", "0", None) in units
    assert my_units(units, {unit_key(UNEDITED)}) == units[1:]  # one process: every unit not done
    assert all_gather_objects({"a": 1}) == [{"a": 1}]  # outside a process group: this rank's value only


@pytest.mark.slow  # two small compare runs, one under torchrun: about 40 s on a CPU
def test_two_gloo_ranks_give_the_one_process_cells(tmp_path, hparams, one_process):
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clipedit", *argv(out, hparams)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # 5 units (unedited, edit x 2 seeds, finetune-local x 2 seeds) dealt round-robin: 3 on rank 0, 2 on rank 1
    assert "rank 0/2: 3 of 5 units to run here" in done.stderr and "[rank 1] rank 1/2: 2 of 5" in done.stderr
    assert done.stdout.count("Verdicts") == 1  # only rank 0 prints and writes
    two = json.loads((out / "compare.json").read_text())["compare"]
    assert two["raw"] == one_process["raw"]  # every per-image outcome
    assert two["cells"] == one_process["cells"] and two["comparisons"] == one_process["comparisons"]
    assert not partial_files(out)


class Killed(Exception):
    pass


@pytest.mark.slow  # three small compare runs: about 25 s on a CPU
def test_a_killed_ranks_partial_file_makes_the_next_run_redo_only_the_missing_units(tmp_path, hparams,
                                                                                     one_process, monkeypatch):
    out = tmp_path / "cmp"
    real, ran = compare_module.run_unit, []

    def dies_after_two(base, unit, *args):
        if len(ran) == 2:
            raise Killed
        ran.append(unit)
        return real(base, unit, *args)

    monkeypatch.setattr(compare_module, "run_unit", dies_after_two)
    with pytest.raises(Killed):
        cli.main(argv(out, hparams))
    assert not (out / "compare.json").exists()
    left = partial_files(out)
    assert list(left) == [0]
    kept = json.loads(left[0].read_text())["units"]
    assert sorted(kept) == sorted(unit_key(u) for u in ran)
    left[0].rename(out / "compare.rank1.partial.json")  # as rank 1 of an earlier 2-rank run left it

    ran.clear()
    monkeypatch.setattr(compare_module, "run_unit", lambda base, unit, *args: ran.append(unit) or real(base, unit,
                                                                                                        *args))
    cli.main(argv(out, hparams))
    assert len(ran) == 3 and not {unit_key(u) for u in ran} & set(kept)  # only the three missing units
    again = json.loads((out / "compare.json").read_text())["compare"]
    assert again["raw"] == one_process["raw"] and again["cells"] == one_process["cells"]
    assert not partial_files(out)


def test_a_partial_file_from_other_settings_is_not_reused(tmp_path, hparams, monkeypatch):
    from clipedit.selection.compare_units import read_partials

    (tmp_path / "compare.rank0.partial.json").write_text(json.dumps(
        {"digest": "other", "units": {unit_key(UNEDITED): {"raw": {}, "seconds": 0, "details": None}}}))
    (tmp_path / "compare.rank1.partial.json").write_text("{not json")
    assert read_partials(tmp_path, "mine", [UNEDITED]) == {}
    (tmp_path / "compare.rank0.partial.json").write_text(json.dumps(
        {"digest": "mine", "units": {unit_key(UNEDITED): {"raw": {}, "seconds": 0, "details": None},
                                     unit_key(("edit", "9", "x")): {}, unit_key(("edit", "0", "x")): {"raw": 1}}}))
    edit = ("edit", "0", "x")
    # units of the grid only, and only well-formed ones
    assert list(read_partials(tmp_path, "mine", [UNEDITED, edit])) == [unit_key(UNEDITED)]
