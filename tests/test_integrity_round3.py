"""Integrity, round 3 (issue 21): no output over its own inputs, writers that cannot collide, strict
numbers and files. Every test reproduces one defect the issue lists (numbered as there); the kills and
the concurrent runs are fault-injection tests in subprocesses (a writer killed between two renames,
two writers on one folder, two hand-launched torchrun ranks with different arguments).
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_error, run_ok
from PIL import Image
from safetensors.torch import load_file
from test_integrity import VIT_SITE, _defend_args, edit_files  # noqa: F401 - edit_files is a fixture

import clipedit
from clipedit.io import atomic_output_set, remove_stale_temporaries, write_json
from clipedit.models import save_state_dict

ROOT = Path(__file__).resolve().parents[1]


def bundled_assets() -> Path:
    """The installed bundled assets (where ``clipedit.assets`` lives)."""
    from importlib import resources

    return Path(str(resources.files("clipedit.assets"))).resolve()


def usage_error(capsys, *args) -> str:
    """Run ``clipedit ARGS``; expect a refusal (exit 1 or click's 2) ending in one ``Error:`` line, no traceback."""
    code, _, err = run_cli(args, capsys)
    assert code in (1, 2), err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: "), err
    return last


def _audit(base, *extra):
    return ["audit", "--model", "tiny-vit", "--checkpoint", base, *extra]


# -- 1. no output over the run's own inputs, the bundled assets, or another output -----------------------
def test_audit_refuses_out_equal_to_its_checkpoint(edit_files, tmp_path, capsys, image_folder):  # noqa: F811
    base = tmp_path / "model.safetensors"
    base.write_bytes(edit_files[0].read_bytes())
    before = base.read_bytes()
    line = run_error(capsys, *_audit(base, "--data", image_folder, "--out", base))
    assert "would overwrite the input --checkpoint" in line
    assert base.read_bytes() == before


def test_stats_refuses_out_equal_to_its_checkpoint(edit_files, tmp_path, capsys, image_folder):  # noqa: F811
    base = edit_files[0]
    before = base.read_bytes()
    line = run_error(capsys, "stats", "--model", "tiny-vit", "--checkpoint", base, "--reference", image_folder,
                     "--out", tmp_path / ".." / tmp_path.name / ".." / base.parent.name / base.name)
    assert "would overwrite the input --checkpoint" in line
    assert base.read_bytes() == before


def test_defend_refuses_an_out_folder_that_holds_its_checkpoint(edit_files, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "d"
    run.mkdir()
    checkpoint = run / "model.safetensors"
    checkpoint.write_bytes(edit_files[0].read_bytes())
    line = run_error(capsys, *_defend_args(checkpoint, run))
    assert "--out" in line and "would overwrite the input --checkpoint" in line
    assert checkpoint.read_bytes() == edit_files[0].read_bytes()


def test_apply_refuses_out_equal_to_the_edit_file(edit_files, tmp_path, capsys):  # noqa: F811
    base, _, edit = edit_files
    copy = tmp_path / "edit.safetensors"
    copy.write_bytes(edit.read_bytes())
    line = run_error(capsys, "apply", copy, "--model", "tiny-vit", "--checkpoint", base, "--out", copy)
    assert "would overwrite the input EDITS" in line
    assert copy.read_bytes() == edit.read_bytes()


def test_apply_refuses_to_write_into_the_bundled_assets(edit_files, capsys):  # noqa: F811
    mini = bundled_assets() / "mini" / "model.safetensors"
    before = mini.stat().st_mtime_ns, mini.stat().st_size
    sneaky = bundled_assets() / "mini" / ".." / "mini" / "model.safetensors"
    line = run_error(capsys, "apply", edit_files[2], "--model", "tiny-vit", "--checkpoint", edit_files[0],
                     "--out", sneaky)
    assert "bundled assets" in line
    assert (mini.stat().st_mtime_ns, mini.stat().st_size) == before


def test_defend_refuses_a_report_over_its_own_model(edit_files, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "D"
    line = run_error(capsys, *_defend_args(edit_files[0], run, "--report", run / "model.safetensors"))
    assert "--report" in line and "same file" in line
    assert not run.exists()


@pytest.mark.parametrize("outputs, message", [
    (("--out", "a.json", "--report", "a.json"), "--out and --report are the same file"),
    (("--out", "a.png"), "--out and the chart beside --out are the same file"),
    (("--out", "a.json", "--report", "a.png"), "the chart beside --out and --report are the same file"),
])
def test_audit_outputs_never_collide(edit_files, tmp_path, capsys, image_folder, outputs, message):  # noqa: F811
    args = [str(tmp_path / a) if not a.startswith("--") else a for a in outputs]
    line = run_error(capsys, *_audit(edit_files[0], "--data", image_folder, *args))
    assert message in line
    assert not any(tmp_path.glob("a.*"))


def test_a_symlinked_out_is_compared_by_what_it_names(edit_files, tmp_path, capsys, image_folder):  # noqa: F811
    link = tmp_path / "results.json"
    link.symlink_to(edit_files[0])
    line = run_error(capsys, *_audit(edit_files[0], "--data", image_folder, "--out", link))
    assert "would overwrite the input --checkpoint" in line


# -- 2. special files are never replaced ------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="this system has no /dev/full")
@pytest.mark.parametrize("option", ["--out", "--report"])
def test_audit_refuses_to_replace_dev_full(edit_files, capsys, image_folder, option):  # noqa: F811
    line = run_error(capsys, *_audit(edit_files[0], "--data", image_folder, option, "/dev/full"))
    assert "/dev/full" in line and "character device, not a regular file" in line
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_library_writers_refuse_a_fifo_and_a_device(edit_files, tmp_path):  # noqa: F811
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(clipedit.ClipeditError, match="FIFO, not a regular file"):
        write_json(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    if Path("/dev/full").exists():
        with pytest.raises(clipedit.ClipeditError, match="character device"):
            clipedit.save_edits("/dev/full", clipedit.load_edit(edit_files[2]))
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- 4. concurrent writers: owned temporaries, one folder written by one run at a time ---------------------
def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for process start times")
def test_only_temporaries_of_gone_runs_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        from clipedit.io import _temp_name  # names as clipedit makes them (authenticated), for other owners

        mine = tmp_path / _temp_name("out", owner=f"{live.pid}-{_start_time(live.pid)}")
        stale = tmp_path / _temp_name("out", owner=f"{gone}-123")
        reused = tmp_path / _temp_name("out", owner=f"{live.pid}-{_start_time(live.pid) + 1}")  # pid reused
        for folder in (mine, stale, reused):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"\0" * 10)
        removed = remove_stale_temporaries(tmp_path, "out")
        assert sorted(removed) == sorted([stale, reused])
        assert (mine / "model.safetensors").is_file()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temporaries(tmp_path, "out") == [mine]


SET = ("model.safetensors", "edit.safetensors", "results.json")


def _in_child(work) -> int:
    """Run ``work()`` in a forked copy of this process (a run of its own: its own pid, nothing shared but
    the disk); returns its pid. The child ends with ``os._exit``: 0 when ``work`` returned, 1 if it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_two_runs_on_one_out_take_turns_and_leave_one_whole_set(tmp_path):
    import logging

    out = tmp_path / "tr5"
    staged_r, staged_w = os.pipe()
    go_r, go_w = os.pipe()
    told_r, told_w = os.pipe()

    def slow_writer():  # stages one file, then waits (a slow writer) until the parent says go
        with atomic_output_set(out, replaces=SET) as stage:
            (stage / "model.safetensors").write_text("first")
            os.write(staged_w, b"1")
            os.read(go_r, 1)
            for name in SET[1:]:
                (stage / name).write_text("first")

    def second_writer():  # tells the parent (through the pipe) when it is made to wait
        handler = logging.StreamHandler(os.fdopen(told_w, "w", buffering=1))
        logging.getLogger("clipedit.io").addHandler(handler)
        with atomic_output_set(out, replaces=SET) as stage:
            for name in SET:
                (stage / name).write_text("second")

    first = _in_child(slow_writer)
    assert os.read(staged_r, 1) == b"1"
    second = _in_child(second_writer)
    os.close(told_w)
    told = os.fdopen(told_r).readline()  # the second run's warning, or "" when it ended without waiting
    os.write(go_w, b"1")
    assert _exit_code(first) == 0 and _exit_code(second) == 0
    assert "another run is writing" in told and "waiting for it to finish" in told
    assert {p.name: p.read_text() for p in out.iterdir()} == dict.fromkeys(SET, "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tr5"]  # no staging folder, no lock file


def _killed_writer(out: Path, kill_at: int, monkeypatch):
    """A run writing a new set into ``out`` that is killed (SIGKILL) at its ``kill_at``-th rename."""
    import clipedit.io as io

    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), 9)  # nothing after this rename runs
        real(src, dst)

    def work():
        monkeypatch.setattr(io.os, "replace", replace)
        with io.atomic_output_set(out, replaces=SET) as stage:
            (stage / "model.safetensors").write_text("new")
            (stage / "results.json").write_text("new")

    pid = _in_child(work)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


def _old_run(out: Path) -> None:
    out.mkdir()
    for name in ("model.safetensors", "edit.safetensors", "results.json", "notes.txt"):
        (out / name).write_text("old" if name != "notes.txt" else "the user's")


OLD = {"model.safetensors": "old", "edit.safetensors": "old", "results.json": "old", "notes.txt": "the user's"}


# renames of a swap: 1 the journal, 2 the old set aside, 3 the new set in, 4 the user's file back in
@pytest.mark.parametrize("kill_at, outcome, expected", [
    (2, None, OLD),
    (3, "rolled back", OLD),
    (4, "finished", {"model.safetensors": "new", "results.json": "new", "notes.txt": "the user's"}),
])
def test_a_swap_killed_between_renames_is_rolled_back_or_finished(tmp_path, monkeypatch, kill_at, outcome,
                                                                  expected):
    from clipedit.io import recover_interrupted_swap

    out = tmp_path / "run"
    _old_run(out)
    _killed_writer(out, kill_at, monkeypatch)
    assert recover_interrupted_swap(out) == outcome
    assert {p.name: p.read_text() for p in out.iterdir()} == expected
    with atomic_output_set(out, replaces=SET) as stage:
        (stage / "model.safetensors").write_text("next")
        (stage / "edit.safetensors").write_text("next")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model.safetensors": "next", "edit.safetensors": "next",
                                                             "notes.txt": "the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # staging, aside and journal all gone


def test_the_next_run_recovers_a_swap_by_itself(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _old_run(out)
    _killed_writer(out, 3, monkeypatch)
    assert not out.exists()  # killed with the old set aside and the new one not yet in
    with atomic_output_set(out, replaces=SET) as stage:
        (stage / "model.safetensors").write_text("next")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model.safetensors": "next", "notes.txt": "the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- 6. torchrun ranks must agree on their arguments ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(args_of_rank, tmp_path) -> list[subprocess.Popen]:
    """Launch two ranks by hand (as torchrun would), each with its own arguments."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CLIPEDIT_CACHE": str(tmp_path / "cache")}
        procs.append(subprocess.Popen([sys.executable, "-m", "clipedit", *map(str, args_of_rank(rank))], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    return procs


@pytest.mark.slow
def test_ranks_started_with_different_references_stop_in_one_line(tmp_path, image_folder):
    """Before: both ranks exited 0 and rank 0 cached C from a mix of the two folders under its own key."""
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (64, 64), "white").save(other / "white.png")
    procs = _two_ranks(lambda r: ["stats", "--model", "tiny-vit", "--device", "cpu",
                                  "--reference", image_folder if r == 0 else other], tmp_path)
    for p in procs:
        _, stderr = p.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert p.returncode == 1, stderr[-2000:]
        assert "Traceback" not in stderr and [x for x in lines if x.startswith("Error: ")] == lines[-1:], stderr
        assert "torchrun ranks were started with different arguments" in lines[-1]
    stats = tmp_path / "cache" / "stats"
    assert not stats.exists() or not any(stats.iterdir())  # nothing cached from a mix of folders


@pytest.mark.parametrize("values", [({"n": 2}, {"n": 3}), ({"layer": "a"}, {"layer": "b"}), ({"n": 2}, {"n": 2})])
def test_agree_compares_every_ranks_arguments_first(tmp_path, values):
    """``audit --scenes`` or ``--layer`` differing per rank crashed in gloo before; now every rank stops
    with the same one line (two gloo ranks forked from this process), and equal arguments pass."""
    from clipedit.core.distributed import agree

    store = tmp_path / "store"

    def rank(r):
        def work():
            import torch.distributed as dist

            dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=2)
            try:
                agree(values[r])
            except clipedit.ClipeditError as e:
                (tmp_path / f"rank{r}.txt").write_text(str(e))
                assert not dist.is_initialized()  # the group is left, so that the process exits cleanly
            else:
                dist.destroy_process_group()
        return work

    pids = [_in_child(rank(r)) for r in range(2)]
    assert [_exit_code(pid) for pid in pids] == [0, 0]
    said = [(tmp_path / f"rank{r}.txt").read_text() if (tmp_path / f"rank{r}.txt").exists() else None
            for r in range(2)]
    if values[0] == values[1]:
        assert said == [None, None]
    else:
        assert all("2 torchrun ranks were started with different arguments" in x for x in said)


# -- 7. dtypes kept for every model, and restored bit-exactly ---------------------------------------------
@pytest.mark.slow
def test_mini_vit_keeps_fp16_and_reverts_bit_exactly(tmp_path, capsys):
    out = tmp_path / "run"
    layer = "visual.transformer.resblocks.0.mlp.c_proj"
    run_ok(capsys, "defend", "--model", "mini-vit", "--layer", layer, "--rank", "2", "--renders", "2",
           "--no-eval", "--out", out)
    source = {**{k: v for k, v in load_file(str(bundled_assets() / "mini" / "model.safetensors")).items()
                 if not k.startswith("visual.")},
              **load_file(str(bundled_assets() / "mini-vit" / "visual.safetensors"))}
    edited = load_file(str(out / "model.safetensors"))
    assert set(edited) == set(source)
    wider = {k for k in source if edited[k].dtype != source[k].dtype}
    assert wider == {f"{layer}.weight"}  # every other tensor keeps the source's fp16
    meta = clipedit.load_edit(out / "edit.safetensors").meta
    assert meta["stored_dtypes"] == {f"{layer}.weight": {"source": "float16", "stored": "float32"}}
    restored_path = tmp_path / "restored.safetensors"
    run_ok(capsys, "revert", out / "edit.safetensors", "--model", "mini-vit", "--checkpoint",
           out / "model.safetensors", "--out", restored_path)
    restored = load_file(str(restored_path))
    assert all(restored[k].dtype == source[k].dtype and torch.equal(restored[k], source[k]) for k in source)


# -- 8. one line instead of a traceback --------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (("--keep-blank", "inf"), "'inf' is not a finite number"),
    (("--keep-blank", "nan"), "'nan' is not a finite number"),
    (("--text", "ab\udcff"), "is not valid UTF-8 text"),
    (("--device", "meta"), "'meta' is not a device clipedit runs on"),
    (("--layer", "+++"), "'+++' names no layer"),
    (("--layer", "visual.a++visual.b"), "has an empty layer name"),
    (("--layer", "visual.a,visual.b"), "is written 'visual.a+visual.b'"),
])
def test_defend_refuses_bad_options_in_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    line = usage_error(capsys, "defend", "--model", "tiny-vit", "--renders", "2", "--no-eval", "--out", out, *args)
    assert message in line
    assert not out.exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has mps")
def test_device_mps_is_refused_where_there_is_none(capsys):
    assert "mps is not available" in usage_error(capsys, "audit", "--model", "mini", "--device", "mps", "--n", "2")


@pytest.mark.parametrize("n, message", [("1000000000000", "not in the range"), ("1e26", "not a valid integer")])
def test_audit_refuses_absurd_scene_counts(capsys, n, message):
    assert message in usage_error(capsys, "audit", "--model", "mini", "--n", n)


@pytest.mark.parametrize("template", ["a photo of {1} {}.", "a {x} photo of a {}.", "{0.__class__} of a {}."])
@pytest.mark.slow
def test_templates_are_filled_by_plain_substitution(tmp_path, capsys, template):
    from clipedit.eval.zeroshot import fill_template

    assert fill_template(template, "cat") == template.replace("{}", "cat")
    path = tmp_path / "templates.txt"
    path.write_text(template + "\n")
    out = run_ok(capsys, "audit", "--model", "mini", "--n", "4", "--templates-file", path)
    assert "attack success" in out


def _disentangling(root: Path, annotations: str) -> Path:
    root.mkdir()
    (root / "annotations.json").write_text(annotations)
    return root


@pytest.mark.parametrize("annotations, message", [
    ("[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
    ('{"a.jpg": {"true object": "cup", "n": ' + "9" * 5001 + "}}", "cannot read"),
])
def test_hostile_annotations_are_one_line(tmp_path, capsys, annotations, message):
    root = _disentangling(tmp_path / "dis", annotations)
    assert message in run_error(capsys, "audit", "--model", "mini", "--dataset", f"disentangling:{root}")


def test_a_cache_entry_of_the_wrong_shape_is_recomputed(tiny_vit, caplog):
    from safetensors.torch import save_file

    from clipedit.core import key_statistics
    from clipedit.core.cache import cache_dir, tensors_digest
    from clipedit.io import read_safetensors_metadata

    model = tiny_vit.model
    ref = [torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))]
    true = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref", forward=model.encode_image)
    (entry,) = sorted((cache_dir() / "stats").glob("*.safetensors"))
    tensors = load_file(str(entry))
    tensors["C"] = tensors["C"][:-1, :-1].contiguous()  # a smaller C, re-digested: the digest alone passes it
    meta = read_safetensors_metadata(entry)
    meta["digest"] = tensors_digest(tensors)
    save_file(tensors, str(entry), metadata=meta)
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, lambda: ref, data_key="ref", forward=model.encode_image)
    assert "has the wrong shape: C" in caplog.text
    assert torch.equal(again.C, true.C)


# -- 9. invalid numbers, no-op edits, what was used, strict JSON ------------------------------------------
def test_keep_blank_so_large_the_edit_is_a_no_op_is_refused(edit_files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    line = run_error(capsys, *_defend_args(edit_files[0], out, "--keep-blank", "1e300"))
    assert "keep_targets 1e+300 is above 1e+06" in line
    assert not out.exists()


def test_hparams_refuse_non_finite_numbers():
    from clipedit.errors import EditError

    for bad in ({"keep_targets": float("nan")}, {"cov_reg": float("inf")}, {"rank": 2.5}, {"layer": ""}):
        with pytest.raises(EditError):
            clipedit.RewriteHParams(**bad)


def test_sweep_refuses_a_nan_tolerance(capsys, tmp_path):
    assert "not a finite number" in usage_error(capsys, "sweep", "--tolerance", "nan", "--out", tmp_path / "s")


@pytest.mark.slow
def test_the_rank_recorded_is_the_rank_used(edit_files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    run_ok(capsys, *_defend_args(edit_files[0], out, "--rank", "100000"))
    edit = clipedit.load_edit(out / "edit.safetensors")
    assert edit.meta["hparams"]["rank"] == edit.rank < 100000
    assert edit.meta["hparams"]["rank_requested"] == 100000
    assert json.loads((out / "results.json").read_text())["hparams"]["rank"] == edit.rank


def test_json_is_always_strict(tmp_path):
    path = write_json(tmp_path / "r.json", {"acc": float("nan"), "rows": [1.0, float("inf")], "n": 3})

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"acc": None, "rows": [1.0, None], "n": 3}


# -- 10. input that would be silently ignored ------------------------------------------------------------------
def test_finetune_local_refuses_several_layers(edit_files, tmp_path, capsys):  # noqa: F811
    line = run_error(capsys, *_defend_args(edit_files[0], tmp_path / "run", "--method", "finetune-local",
                                           "--layer", f"{VIT_SITE}+visual.transformer.resblocks.0.mlp.c_proj"))
    assert "--method finetune-local trains one layer; --layer names 2" in line


def test_triples_refuse_rta_style_names(tmp_path, capsys):
    folder = tmp_path / "rta"
    folder.mkdir()
    Image.new("RGB", (32, 32), "white").save(folder / "label=cat_text=dog.png")
    line = run_error(capsys, "audit", "--model", "mini", "--dataset", f"triples:{folder}")
    assert "named as RTA-100/PAINT photos are" in line and "rta100:" in line


# -- 11. listed files stay inside the dataset; skipped lists are capped ----------------------------------------
def test_disentangling_refuses_files_outside_its_folder(tmp_path, capsys):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), "red").save(secret)
    root = tmp_path / "dis"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "ok.png")
    annotations = {"ok.png": {"true object": "cup", "typographic attack label": "ipod"},
                   str(secret): {"true object": "cup", "typographic attack label": "ipod"},
                   "../secret.png": {"true object": "cup", "typographic attack label": "ipod"}}
    (root / "annotations.json").write_text(json.dumps(annotations))
    results, report = tmp_path / "r.json", tmp_path / "r.html"
    out = run_ok(capsys, "audit", "--model", "mini", "--dataset", f"disentangling:{root}", "--out", results,
                 "--report", report)
    assert "skipped 2 images" in out
    record = json.loads(results.read_text())
    assert record["metrics"]["n"] == 1 and record["metrics"]["n_skipped"] == 2
    assert {reason for _, reason in record["skipped"]} == {"outside the dataset folder: not read"}
    import base64
    import io

    buffer = io.BytesIO()
    Image.open(secret).save(buffer, format="PNG")
    assert base64.b64encode(buffer.getvalue()).decode()[:200] not in report.read_text()


def test_scam_never_opens_a_row_outside_its_folder(tmp_path, capsys):
    root = tmp_path / "scam"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "a.png")
    (root / "metadata.csv").write_text("file_name,type,object_label,attack_word\n"
                                       "a.png,SCAM,cup,ipod\n/etc/shadow,SCAM,cup,ipod\n")
    from clipedit.data.benchmarks import load_benchmark_images, read_benchmark

    bench = read_benchmark(f"scam:{root}")
    assert [r.path.name for r in bench.records] == ["a.png"] and bench.outside == ["/etc/shadow"]
    loaded = load_benchmark_images(bench)
    assert loaded.n_skipped == 1 and loaded.skipped == [("/etc/shadow", "outside the dataset folder: not read")]


def test_a_long_list_of_missing_files_is_counted_not_listed(tmp_path, capsys):
    root = tmp_path / "m"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "real.png")
    rows = ["image,class,word", "real.png,cup,ipod"] + [f"missing{i}.png,cup,ipod" for i in range(5000)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    results = tmp_path / "r.json"
    run_ok(capsys, "audit", "--model", "mini", "--dataset", f"manifest:{root}", "--out", results)
    record = json.loads(results.read_text())
    assert record["metrics"]["n_skipped"] == 5000 and len(record["skipped"]) == 20
    assert results.stat().st_size < 50_000


# -- 12. messages and types ---------------------------------------------------------------------------------------
def test_a_device_symlink_as_edit_file_says_what_it_is(edit_files, tmp_path, capsys):  # noqa: F811
    link = tmp_path / "edit.safetensors"
    link.symlink_to("/dev/zero")
    line = run_error(capsys, "apply", link, "--model", "tiny-vit", "--checkpoint", edit_files[0], "--out",
                     tmp_path / "o.safetensors")
    assert "is a character device, not a regular file" in line and "not found" not in line


@pytest.mark.parametrize("args, message", [
    (("--font", "/dev/zero"), "not a regular file"),
    (("--font-size", "1e9"), "font_size"),
])
def test_attack_font_messages(tmp_path, capsys, photo_files, args, message):
    line = run_error(capsys, "attack", photo_files["cat"], "--text", "ipod", "--out", tmp_path / "o", *args)
    assert message in line and "Pillow" not in line and "no such file" not in line


def test_an_empty_scam_object_label_is_refused(tmp_path, capsys):
    root = tmp_path / "scam"
    root.mkdir()
    Image.new("RGB", (64, 64), "white").save(root / "a.png")
    (root / "metadata.csv").write_text("file_name,type,object_label,attack_word\na.png,SCAM, ,ipod\n")
    assert "line 2: empty object_label" in run_error(capsys, "audit", "--model", "mini", "--dataset", f"scam:{root}")


def test_an_rta_set_without_attacked_photos_prints_no_attacked_line(tmp_path, capsys):
    root = tmp_path / "rta"
    root.mkdir()
    for name in ("cup", "dog"):
        Image.new("RGB", (64, 64), "white").save(root / f"label={name}_text=.png")
    out = run_ok(capsys, "audit", "--model", "mini", "--dataset", f"rta100:{root}", "--classes", "cup,dog")
    assert "attacked photos" not in out and "all photos (top-1; none attacked)" in out


def test_the_public_api_checks_its_arguments(tiny_vit, edit_files):  # noqa: F811
    from clipedit.errors import ArgumentError, RenderError

    for call in (lambda: clipedit.defend(tiny_vit, ""), lambda: clipedit.defend(None, "ipod"),
                 lambda: clipedit.defend(tiny_vit, 5), lambda: clipedit.defend(tiny_vit, ["ipod", None]),
                 lambda: clipedit.load_model(None),
                 lambda: clipedit.apply_edit(None, clipedit.load_edit(edit_files[2])),
                 lambda: clipedit.save_edits(tiny_vit.model, "not an edit")):
        with pytest.raises(ArgumentError):
            call()
    with pytest.raises(RenderError) as info:
        clipedit.text_exemplars(tiny_vit, "", 2)
    assert isinstance(info.value, clipedit.ClipeditError)
    assert isinstance(info.value.__cause__, clipedit.AttackError)
    assert issubclass(clipedit.AttackError, clipedit.USER_ERRORS)


# -- 13. what a digest is -------------------------------------------------------------------------------------------
def test_readme_says_digests_are_no_signature(edit_files, tmp_path):  # noqa: F811
    from clipedit.core.edits import edited_digest

    edit = clipedit.load_edit(edit_files[2])
    edit.lam = edit.lam * 100  # a forger re-digests the scaled edit: it applies, as the README says
    edit.meta["edited_sha256"] = edited_digest(edit)
    model = clipedit.load_model("tiny-vit", checkpoint=edit_files[0], device="cpu").model
    clipedit.apply_edit(model, edit)
    readme = (ROOT / "README.md").read_text()
    assert "not forgery" in readme and "sha256sum" in readme


def test_save_state_dict_through_a_symlink_writes_the_file_it_names(tmp_path):
    target = tmp_path / "real.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    save_state_dict(link, {"x": torch.zeros(2)})
    assert link.is_symlink() and torch.equal(load_file(str(target))["x"], torch.zeros(2))


def test_stale_lock_files_do_not_block(tmp_path):
    out = tmp_path / "run"
    (tmp_path / ".run.lock").write_text("")  # left by a killed run: a lock is held only by a live process
    start = time.perf_counter()
    with atomic_output_set(out) as stage:
        (stage / "a.txt").write_text("x")
    assert time.perf_counter() - start < 30 and (out / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
