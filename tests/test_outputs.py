"""Outputs never lose a user's data, by the concept they guard: the clean-up removes only temporaries clipedit
can prove it made (of runs that are gone); a swap journal is authenticated and confined to its own output;
every writer, CLI or Python, goes through one guard; a multi-file output is one atomic set, locked against
concurrent writers, that a kill -9 leaves whole (old or new, finished by the next writer)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import defend_args, exit_code_of, fork_run, run_cli, run_error
from PIL import Image
from safetensors.torch import load_file

import clipedit
from clipedit.core import load_edit
from clipedit.core.cache import cache_dir
from clipedit.errors import ClipeditError
from clipedit.io import (
    atomic_file_set,
    atomic_output_set,
    read_safetensors_metadata,
    remove_stale_temporaries,
    write_json,
)
from clipedit.io.journals import _journal_path, _set_journal_path, _write_journal
from clipedit.io.owners import _temp_name
from clipedit.models import save_state_dict
from clipedit.outputs import bundled_assets

VIT_SITE = "visual.transformer.resblocks.1.mlp.c_proj"
GONE = "999999999-1"  # the owner tag of a process that does not exist


def _defend(out, *extra):
    return ["defend", "--model", "tiny-vit", "--text", "ipod", "--renders", "2", "--rank", "2", "--layer", VIT_SITE,
            "--no-eval", "--out", out, *extra]


def _audit(photo_files, out):
    return ["audit", "--model", "tiny-vit", "--photos", photo_files["cat"], photo_files["coffee"],
            "--labels", "cat", "coffee", "--out", out]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (dot-names too) -> its content's digest."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in sorted(root.rglob("*")) if p.is_file()}


def _in_child(work, env: dict | None = None) -> int:
    """Run ``work()`` in a forked copy of this process (its own pid; ``env`` set there); returns the exit
    status: 0 when it returned, 1 when it raised, -9 when it was killed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.environ.update(env or {})
            work()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _edit_set():
    """A real one-member edit set of tiny-vit (rank 1, random directions)."""
    from clipedit.core import EditSet, LayerEdit

    model = clipedit.load_model("tiny-vit", device="cpu").model
    weight = dict(model.named_modules())[VIT_SITE].weight
    g = torch.Generator().manual_seed(0)
    member = LayerEdit.create(VIT_SITE, torch.randn(weight.shape[0], 1, generator=g),
                              torch.randn(weight.shape[1], 1, generator=g), weight, meta={"model": "tiny-vit"})
    return EditSet([member], {"model": "tiny-vit"})


# -- temporaries: only clipedit's own, of runs that are gone ---------------------------------------------------
def test_defend_keeps_users_files_that_look_like_temporaries(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "U"
    out.mkdir()
    (out / ".zshrc.20240101.old").write_text("a")
    (out / ".notes.20231231.tmp").write_text("b")
    (out / ".cache.20240101.old").mkdir()
    (out / ".cache.20240101.old" / "x").write_text("c")
    (tmp_path / ".U.20240101.old").write_text("d")
    before = _tree(tmp_path)
    code, _, err = run_cli(_defend("U"), capsys)
    assert code == 0, err
    after = _tree(tmp_path)
    assert {k: after.get(k) for k in before} == before  # every user file is still there, unchanged
    assert {"model.safetensors", "edit.safetensors", "results.json"} <= {p.name for p in out.iterdir()}


def test_audit_keeps_a_users_file_that_looks_like_its_temporary(tmp_path, capsys, photo_files):
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / ".a.json.20240101.tmp").write_text("mine")
    code, _, err = run_cli(_audit(photo_files, folder / "a.json"), capsys)
    assert code == 0, err
    assert (folder / ".a.json.20240101.tmp").read_text() == "mine"
    assert {p.name for p in folder.iterdir()} == {".a.json.20240101.tmp", "a.json", "a.png"}


def test_only_authenticated_temporaries_of_gone_runs_are_removed(tmp_path):
    stale = tmp_path / _temp_name("out", owner=GONE)
    live = tmp_path / _temp_name("out")  # this process's: it still runs
    forged = tmp_path / f".out.{GONE}.0123abcd.0123456789abcdef.tmp"  # the shape, not clipedit's proof
    renamed = tmp_path / _temp_name("other", owner=GONE).replace(".other.", ".out.", 1)  # proof of another name
    for path in (stale, live, forged, renamed):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path, "out") == [stale]
    assert remove_stale_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, forged, renamed))


# -- swap journals: authenticated, naming nothing outside their own output ------------------------------------
def _old_run(out: Path) -> None:
    out.mkdir()
    for name, text in (("model.safetensors", "old"), ("results.json", "old"), ("notes.txt", "the user's")):
        (out / name).write_text(text)


@pytest.mark.parametrize("aside", ["absolute", "victim", "../victim"])
def test_a_forged_swap_journal_is_refused_and_touches_nothing(tmp_path, capsys, monkeypatch, aside):
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    _old_run(tmp_path / "J")
    name = str(victim) if aside == "absolute" else aside
    _journal_path(tmp_path / "J").write_text(json.dumps({"aside": name, "carry": []}))
    before = _tree(tmp_path)
    line = run_error(capsys, *_defend("J"))
    assert "journal" in line and "nothing was changed" in line
    assert _tree(tmp_path) == before


def test_a_forged_journal_cannot_move_a_folder_into_a_missing_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.txt").write_text("keep me")
    _journal_path(work / "J").write_text(json.dumps({"aside": "../x", "carry": []}))
    line = run_error(capsys, *_defend(work / "J"))
    assert "journal" in line
    assert (tmp_path / "x" / "data.txt").read_text() == "keep me" and not (work / "J").exists()


@pytest.mark.parametrize("record", [
    {"kind": "swap", "out": "J", "aside": "../victim", "carry": [], "stage": [0, 0]},
    {"kind": "swap", "out": "J", "aside": "victim", "carry": [], "stage": [0, 0]},
    {"kind": "swap", "out": "J", "aside": "@AUTH", "carry": ["../../etc"], "stage": [0, 0]},
    {"kind": "swap", "out": "other", "aside": "@AUTH", "carry": [], "stage": [0, 0]},
])
def test_even_an_authentic_journal_naming_anything_outside_its_output_is_refused(tmp_path, record):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    out = tmp_path / "J"
    record = {**record, "aside": _temp_name("J", kind="old") if record["aside"] == "@AUTH" else record["aside"]}
    _write_journal(_journal_path(out), record)
    with pytest.raises(ClipeditError, match="outside"):
        with atomic_output_set(out) as stage:
            (stage / "a").write_text("new")
    assert (victim / "f").read_text() == "x" and not out.exists()


def _killed_in_swap(out: Path, at: int) -> None:
    """A run replacing ``out`` killed at the ``at``-th step of its swap (1: before the old set goes aside,
    2: after it, before the new one is in; 3: before the user's first file is carried back)."""
    def work():
        with atomic_output_set(out, replaces=("model.safetensors", "results.json")) as stage:
            (stage / "model.safetensors").write_text("new")
            (stage / "results.json").write_text("new")
    assert _in_child(work, {"CLIPEDIT_KILL_AT": f"swap:{at}"}) == -9


def test_recovery_never_deletes_the_old_set_after_its_folder_was_recreated(tmp_path, capsys, photo_files):
    out = tmp_path / "K"
    _old_run(out)
    _killed_in_swap(out, 2)
    assert not out.exists()  # the old set aside, the new one not in
    code, _, err = run_cli(_audit(photo_files, out / "audit.json"), capsys)  # writes into K: rolls K back first
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "results.json", "notes.txt", "audit.json",
                                               "audit.png"}
    code, _, err = run_cli(["attack", photo_files["cat"], "--text", "ipod", "--out", out], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "the user's" and (out / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".K")) == []


def test_a_folder_refilled_over_an_interrupted_swap_is_refused_and_the_old_set_kept(tmp_path):
    out = tmp_path / "K"
    _old_run(out)
    _killed_in_swap(out, 2)
    out.mkdir()
    (out / "new.txt").write_text("written since")
    with pytest.raises(ClipeditError, match="previous contents"):
        with atomic_output_set(out) as stage:
            (stage / "a").write_text("x")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".K.") and p.name.endswith(".old")]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "the user's"
    assert (out / "new.txt").read_text() == "written since"


# -- one guard for every writer ---------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_python_writers_refuse_the_bundled_assets():
    edits = _edit_set()
    weights = bundled_assets() / "mini" / "model.safetensors"
    visual = bundled_assets() / "mini-vit" / "visual.safetensors"
    before = {p: _digest(p) for p in (weights, visual) if p.exists()}
    assert before, "the bundled minis' weights are missing"
    with pytest.raises(ClipeditError, match="bundled assets"):
        clipedit.save_edits(weights, edits)
    with pytest.raises(ClipeditError, match="bundled assets"):
        clipedit.DefenseResult("edit", VIT_SITE, ["ipod"], edit_set=edits).save(visual)
    with pytest.raises(ClipeditError, match="bundled assets"):
        write_json(bundled_assets() / "mini" / "config.json", {})
    assert {p: _digest(p) for p in before} == before


def test_python_writers_refuse_a_checkpoint_a_model_was_loaded_from(tmp_path):
    from clipedit.models.checkpoint import save_model_weights

    source = clipedit.models.save_state_dict(tmp_path / "base.safetensors",
                                             clipedit.load_model("tiny-vit", device="cpu").model.state_dict())
    bundle = clipedit.load_model("tiny-vit", checkpoint=source, device="cpu")
    digest = _digest(source)
    edits = _edit_set()
    for write in (lambda: clipedit.DefenseResult("edit", VIT_SITE, ["ipod"], edit_set=edits).save(source),
                  lambda: clipedit.save_edits(source, edits),
                  lambda: save_model_weights(source, bundle)):
        with pytest.raises(ClipeditError, match="a model was loaded from"):
            write()
    assert _digest(source) == digest


def test_a_mount_point_inside_out_is_refused_before_anything_moves(tmp_path, capsys, monkeypatch):
    out = tmp_path / "M"
    _old_run(out)
    (out / "mnt").mkdir()
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(out / "mnt") or real(p))
    before = _tree(tmp_path)
    line = run_error(capsys, *_defend(out))
    assert "mount point" in line and "mnt" in line
    assert _tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["M"]


@pytest.mark.parametrize("out", ["", ".", "..", "HOME"])
def test_the_current_folder_one_above_it_or_home_is_no_output_folder(tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "mine.txt").write_text("x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    line = run_error(capsys, *_defend(tmp_path / "home" if out == "HOME" else out))
    assert "current folder" in line or "home folder" in line
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["work"]


def test_a_report_over_a_file_of_the_hugging_face_export_is_refused(tmp_path, capsys, hf_folders):
    out = tmp_path / "d2"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "clip"}')
    line = run_error(capsys, "defend", "--model", "hf", "--checkpoint", hf_folders["clip"], "--no-eval",
                     "--out", out, "--report", out / "config.json")
    assert "--report" in line and "config.json" in line
    assert (out / "config.json").read_text() == '{"model_type": "clip"}'


# -- a multi-file output is one atomic set, locked ----------------------------------------------------------
def _pair(folder: Path, text: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "a.json").write_text(text)
    (folder / "a.png").write_text(text)


def _write_pair(folder: Path, text: str):
    def work():
        with atomic_file_set([folder / "a.json", folder / "a.png"]) as (record, chart):
            record.write_text(text)
            chart.write_text(text)
    return work


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_file_set_killed_between_renames_is_finished_by_the_next_writer(tmp_path, kill_at):
    folder = tmp_path / "A"
    _pair(folder, "old")
    assert _in_child(_write_pair(folder, "new"), {"CLIPEDIT_KILL_AT": f"file-set:{kill_at}"}) == -9
    assert _set_journal_path(folder / "a.json").exists()  # marked as being written until a writer finishes it
    if kill_at == 1:  # killed before its first rename: the old pair is whole
        assert _contents(folder) == {"a.json": "old", "a.png": "old"}
    write_json(folder / "a.json", {"next": 1})  # the next writer of the pair first finishes the killed one's
    files = _contents(folder)
    assert files["a.png"] == "new" and json.loads(files["a.json"]) == {"next": 1}
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "a.png"]  # journal and temporaries gone


def test_two_writers_of_one_file_set_leave_one_writers_whole_pair(tmp_path):
    folder = tmp_path / "A"
    _pair(folder, "old")
    staged_r, staged_w = os.pipe()
    go_r, go_w = os.pipe()

    def slow():  # stages its pair, then waits until the other writer has committed its own
        with atomic_file_set([folder / "a.json", folder / "a.png"]) as (record, chart):
            record.write_text("slow")
            os.write(staged_w, b"1")
            os.read(go_r, 1)
            chart.write_text("slow")

    pid = fork_run(slow)
    try:
        assert os.read(staged_r, 1) == b"1"
        assert _in_child(_write_pair(folder, "fast")) == 0
        assert _contents(folder) == {"a.json": "fast", "a.png": "fast"}
    finally:
        os.write(go_w, b"1")  # the slow writer goes on (and ends) whatever happened here
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert _contents(folder) == {"a.json": "slow", "a.png": "slow"}
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "a.png"]  # no temporary, journal or lock


COMPARE = ("compare.json", "compare.png", "compare.partial.json")


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_a_compare_set_killed_in_its_swap_is_old_or_new_never_mixed(tmp_path, kill_at):
    out = tmp_path / "cmp"
    out.mkdir()
    for name in ("compare.json", "compare.png"):
        (out / name).write_text("old")
    (out / "compare.partial.json").write_text("partial")
    (out / "notes.txt").write_text("the user's")

    def work():
        with atomic_output_set(out, replaces=COMPARE) as stage:
            for name in COMPARE[:2]:
                (stage / name).write_text("new")
    assert _in_child(work, {"CLIPEDIT_KILL_AT": f"swap:{kill_at}"}) == -9
    write_json(out / "notes.json", {})  # any writer into the folder finishes or rolls back the swap first
    files = _contents(out)
    assert files["notes.txt"] == "the user's"
    versions = {files[n] for n in COMPARE[:2]}
    assert versions in ({"old"}, {"new"})
    assert ("compare.partial.json" in files) == (versions == {"old"})
    remove_stale_temporaries(tmp_path, "cmp")  # the killed run's staging folder, if it had not moved it in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


def test_compare_and_sweep_write_their_record_and_chart_as_one_set():
    import inspect

    from clipedit.commands import compare, sweep
    from clipedit.eval import audit

    for module, names in ((compare, ("compare.json", "compare.png")), (sweep, ("sweep.json", "sweep.png"))):
        source = inspect.getsource(module)
        assert "atomic_output_set(out" in source, module.__name__
        assert all(f'out / "{n}"' not in source for n in names), module.__name__  # nothing written beside the set
    assert "atomic_file_set([out, chart_path(out)])" in inspect.getsource(audit.AuditOutcome.save)


# -- the library writes nothing to the terminal ----------------------------------------------------------------
def test_the_library_prints_nothing():
    import ast

    root = Path(clipedit.__file__).parent
    calls = []
    for path in root.rglob("*.py"):
        if "commands" in path.relative_to(root).parts or path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                calls.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "echo" and getattr(node.value, "id", "") == "click":
                calls.append(f"{path.relative_to(root)}:{node.lineno}")
    assert calls == []


@pytest.mark.parametrize("kind", ["long name", "fifo", "device"])
def test_an_output_name_too_long_or_a_special_file_is_one_line(tmp_path, capsys, kind):
    if kind == "fifo":
        out = tmp_path / "fifo"
        os.mkfifo(out)
    out = {"long name": tmp_path / ("x" * 300), "fifo": tmp_path / "fifo", "device": Path("/dev/null")}[kind]
    line = run_error(capsys, *_defend(out))
    assert {"long name": "bytes long", "fifo": "FIFO", "device": "character device"}[kind] in line
    with pytest.raises(ClipeditError, match="bytes long"):
        write_json(tmp_path / ("y" * 220 + ".json"), {})


# -- the library does the work, the CLI parses: one writer of a run's files, clipedit.audit ---------------------
def test_save_run_writes_the_same_set_as_the_cli(tmp_path, capsys):
    code, _, err = run_cli(_defend(tmp_path / "cli"), capsys)
    assert code == 0, err
    bundle = clipedit.load_model("tiny-vit", device="cpu")
    defense = clipedit.defend(bundle, "ipod", {"sites": [VIT_SITE], "rank": 2, "renders": 2})
    written = clipedit.save_run(tmp_path / "py", bundle, defense, report=tmp_path / "py.html")
    assert sorted(p.name for p in written) == ["edit.safetensors", "model.safetensors", "py.html", "results.json"]
    assert sorted(p.name for p in (tmp_path / "py").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    cli_record = json.loads((tmp_path / "cli" / "results.json").read_text())
    py_record = json.loads((tmp_path / "py" / "results.json").read_text())
    assert set(py_record) <= set(cli_record) and py_record["layer"] == cli_record["layer"] == VIT_SITE
    with pytest.raises(ClipeditError, match="bundled assets"):
        clipedit.save_run(bundled_assets() / "run", bundle, defense)


def test_audit_in_python_matches_the_cli(tmp_path, capsys, photo_files):
    code, _, err = run_cli(_audit(photo_files, tmp_path / "cli.json"), capsys)
    assert code == 0, err
    outcome = clipedit.audit(clipedit.load_model("tiny-vit", device="cpu"), photos=[photo_files["cat"],
                             photo_files["coffee"]], labels=["cat", "coffee"])
    assert outcome.save(tmp_path / "py.json") == [tmp_path / "py.json", tmp_path / "py.png"]
    cli_record, py_record = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cli", "py"))
    assert set(cli_record) - {"checkpoint", "edits"} <= set(py_record)  # the same record, less the CLI's inputs
    assert py_record["metrics"]["n"] == cli_record["metrics"]["n"] > 0 and py_record["task"] == "typographic_audit"


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class DiskFull:
    """Writers that fill the disk: the ``fail_at``-th file written fails with ENOSPC after half its bytes."""

    def __init__(self, monkeypatch, fail_at: int) -> None:
        import safetensors.torch

        self.count, self.fail_at = 0, fail_at
        real_save_file, real_image_save = safetensors.torch.save_file, Image.Image.save

        def save_file_(tensors, filename, metadata=None):
            real_save_file(tensors, filename, metadata=metadata)
            self._maybe_fail(filename)

        def image_save(image, fp, format=None, **params):
            real_image_save(image, fp, format=format, **params)
            self._maybe_fail(fp)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file_)
        monkeypatch.setattr(Image.Image, "save", image_save)

    def _maybe_fail(self, filename) -> None:
        if cache_dir() in Path(filename).parents:  # the statistics cache is best effort: not counted
            return
        self.count += 1
        if self.count == self.fail_at:
            path = Path(filename)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))


def _mount_tmpfs(path: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of ``size_bytes`` at ``path`` when this process may (root, a kernel that allows it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size) -> folder or None``: a tmpfs of that size (None where none can be mounted)."""
    mounted = []

    def mount(size_bytes: int):
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        if _mount_tmpfs(folder, size_bytes):
            mounted.append(folder)
            return folder
        return None

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("fail_at", [1, 2])  # the model fails / the model fits but the edit file does not
def test_defend_on_a_full_disk_keeps_the_previous_run(base, defended, tmp_path, capsys, monkeypatch, fail_at):
    out = _copy_run(defended, tmp_path / "run")
    previous = _snapshot(out)
    DiskFull(monkeypatch, fail_at)
    line = run_error(capsys, *defend_args(base, out, "--rank", "1"))
    assert "No space left on device" in line
    assert _snapshot(out) == previous
    assert _temporaries(tmp_path) == []


def test_defend_on_a_full_disk_creates_nothing(base, tmp_path, capsys, monkeypatch):
    DiskFull(monkeypatch, fail_at=1)
    out = tmp_path / "run"
    line = run_error(capsys, *defend_args(base, out))
    assert "No space left on device" in line
    assert not out.exists() and _temporaries(tmp_path) == []


def test_defend_on_a_real_small_disk_leaves_nothing(base, defended, tmp_path, capsys, monkeypatch, small_disk):
    sizes = {p.name: p.stat().st_size for p in defended.iterdir()}
    # Room for the new model, not for the edit file as well.
    disk = small_disk(sizes["model.safetensors"] + sizes["edit.safetensors"] // 2)
    if disk is None:  # no tmpfs here: the same fault through the patched writer
        disk = tmp_path / "disk"
        DiskFull(monkeypatch, fail_at=2)
    out = disk / "run"
    line = run_error(capsys, *defend_args(base, out))
    assert "No space left on device" in line
    assert not out.exists() and _temporaries(disk) == []


def test_defend_replaces_an_older_run_whole_and_cleans_stale_temporaries(base, defended, tmp_path, capsys):
    out = _copy_run(defended, tmp_path / "run")

    killed = [out / _temp_name("model.safetensors", ".safetensors", owner="999999999-1"),
              tmp_path / _temp_name("run", owner="999999999-1")]
    killed[0].write_bytes(b"\0" * 1000)
    killed[1].mkdir()
    (killed[1] / "model.safetensors").write_bytes(b"\0" * 1000)
    code, _, err = run_cli(defend_args(base, out, "--method", "finetune-local", "--steps", "1"), capsys)
    assert code == 0, err
    # The fine-tuned run has no edit file: the older run's must not stay beside its model.
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "results.json"}
    assert json.loads((out / "results.json").read_text())["method"] == "finetune-local"
    assert _temporaries(tmp_path) == []


def test_attack_on_a_full_disk_writes_nothing(tmp_path, capsys, monkeypatch, photo_files):
    out = tmp_path / "out"
    DiskFull(monkeypatch, fail_at=5)  # the second render's blank image
    line = run_error(capsys, "attack", photo_files["cat"], photo_files["coffee"], "--text", "ipod", "--out", out)
    assert "No space left on device" in line
    assert not out.exists() or not any(out.iterdir())
    assert _temporaries(tmp_path) == []


def test_attack_on_a_real_small_disk_writes_nothing(tmp_path, capsys, monkeypatch, photo_files, small_disk):
    disk = small_disk(64 * 1024)  # about two renders' images
    if disk is None:
        disk = tmp_path / "disk"
        DiskFull(monkeypatch, fail_at=5)
    out = disk / "out"
    args = ["attack", *photo_files.values(), "--text", "ipod", "--n", "3", "--out", out]
    line = run_error(capsys, *args)
    assert "No space left on device" in line
    assert not out.exists() or not any(out.iterdir())
    assert _temporaries(disk) == []


def test_defend_takes_cov_reg(defended):
    meta = read_safetensors_metadata(defended / "edit.safetensors")
    assert json.loads(meta["hparams"])["cov_reg"] == 0.25


def test_outputs_have_the_usual_mode(defended, tmp_path, capsys, photo_files):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(["attack", photo_files["cat"], "--text", "ipod", "--out", tmp_path / "att"], capsys)
        assert code == 0, err
    finally:
        os.umask(old)
    files = [*defended.iterdir(), *(tmp_path / "att").iterdir()]
    assert len(files) == 6 and {p.stat().st_mode & 0o777 for p in files} == {0o644}
    assert {d.stat().st_mode & 0o777 for d in (defended, tmp_path / "att")} == {0o755}


def test_train_mini_never_writes_the_shipped_checkpoint_by_default():
    from clipedit.commands.train_mini import train_cmd
    from clipedit.models.mini import bundled_asset_dir

    default = next(p.default for p in train_cmd.params if p.name == "out")
    assert Path(default) == Path("runs") / "mini"
    assert Path(default).resolve() != bundled_asset_dir("mini").resolve()


def _audit_args(base, *extra):
    return ["audit", "--model", "tiny-vit", "--checkpoint", base, *extra]


def test_audit_refuses_out_equal_to_its_checkpoint(edit_files, tmp_path, capsys, image_folder):
    base = tmp_path / "model.safetensors"
    base.write_bytes(edit_files[0].read_bytes())
    before = base.read_bytes()
    line = run_error(capsys, *_audit_args(base, "--data", image_folder, "--out", base))
    assert "would overwrite the input --checkpoint" in line
    assert base.read_bytes() == before


def test_stats_refuses_out_equal_to_its_checkpoint(edit_files, tmp_path, capsys, image_folder):
    base = edit_files[0]
    before = base.read_bytes()
    line = run_error(capsys, "stats", "--model", "tiny-vit", "--checkpoint", base, "--reference", image_folder,
                     "--out", tmp_path / ".." / tmp_path.name / ".." / base.parent.name / base.name)
    assert "would overwrite the input --checkpoint" in line
    assert base.read_bytes() == before


def test_defend_refuses_an_out_folder_that_holds_its_checkpoint(edit_files, tmp_path, capsys):
    run = tmp_path / "d"
    run.mkdir()
    checkpoint = run / "model.safetensors"
    checkpoint.write_bytes(edit_files[0].read_bytes())
    line = run_error(capsys, *defend_args(checkpoint, run))
    assert "--out" in line and "would overwrite the input --checkpoint" in line
    assert checkpoint.read_bytes() == edit_files[0].read_bytes()


def test_apply_refuses_out_equal_to_the_edit_file(edit_files, tmp_path, capsys):
    base, _, edit = edit_files
    copy = tmp_path / "edit.safetensors"
    copy.write_bytes(edit.read_bytes())
    line = run_error(capsys, "apply", copy, "--model", "tiny-vit", "--checkpoint", base, "--out", copy)
    assert "would overwrite the input EDITS" in line
    assert copy.read_bytes() == edit.read_bytes()


def test_apply_refuses_to_write_into_the_bundled_assets(edit_files, capsys):
    mini = bundled_assets() / "mini" / "model.safetensors"
    before = mini.stat().st_mtime_ns, mini.stat().st_size
    sneaky = bundled_assets() / "mini" / ".." / "mini" / "model.safetensors"
    line = run_error(capsys, "apply", edit_files[2], "--model", "tiny-vit", "--checkpoint", edit_files[0],
                     "--out", sneaky)
    assert "bundled assets" in line
    assert (mini.stat().st_mtime_ns, mini.stat().st_size) == before


def test_defend_refuses_a_report_over_its_own_model(edit_files, tmp_path, capsys):
    run = tmp_path / "D"
    line = run_error(capsys, *defend_args(edit_files[0], run, "--report", run / "model.safetensors"))
    assert "--report" in line and "same file" in line
    assert not run.exists()


@pytest.mark.parametrize("outputs, message", [
    (("--out", "a.json", "--report", "a.json"), "--out and --report are the same file"),
    (("--out", "a.png"), "--out and the chart beside --out are the same file"),
    (("--out", "a.json", "--report", "a.png"), "the chart beside --out and --report are the same file"),
])
def test_audit_outputs_never_collide(edit_files, tmp_path, capsys, image_folder, outputs, message):
    args = [str(tmp_path / a) if not a.startswith("--") else a for a in outputs]
    line = run_error(capsys, *_audit_args(edit_files[0], "--data", image_folder, *args))
    assert message in line
    assert not any(tmp_path.glob("a.*"))


def test_a_symlinked_out_is_compared_by_what_it_names(edit_files, tmp_path, capsys, image_folder):
    link = tmp_path / "results.json"
    link.symlink_to(edit_files[0])
    line = run_error(capsys, *_audit_args(edit_files[0], "--data", image_folder, "--out", link))
    assert "would overwrite the input --checkpoint" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="this system has no /dev/full")
@pytest.mark.parametrize("option", ["--out", "--report"])
def test_audit_refuses_to_replace_dev_full(edit_files, capsys, image_folder, option):
    line = run_error(capsys, *_audit_args(edit_files[0], "--data", image_folder, option, "/dev/full"))
    assert "/dev/full" in line and "character device, not a regular file" in line
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_library_writers_refuse_a_fifo_and_a_device(edit_files, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(clipedit.ClipeditError, match="FIFO, not a regular file"):
        write_json(fifo, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    if Path("/dev/full").exists():
        with pytest.raises(clipedit.ClipeditError, match="character device"):
            clipedit.save_edits("/dev/full", load_edit(edit_files[2]))
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def _start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc for process start times")
def test_only_temporaries_of_gone_runs_are_removed(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()

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

    first = fork_run(slow_writer)
    assert os.read(staged_r, 1) == b"1"
    second = fork_run(second_writer)
    os.close(told_w)
    told = os.fdopen(told_r).readline()  # the second run's warning, or "" when it ended without waiting
    os.write(go_w, b"1")
    assert exit_code_of(first) == 0 and exit_code_of(second) == 0
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
        monkeypatch.setattr(os, "replace", replace)  # every writer of clipedit.io renames through it
        with io.atomic_output_set(out, replaces=SET) as stage:
            (stage / "model.safetensors").write_text("new")
            (stage / "results.json").write_text("new")

    pid = fork_run(work)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9


def _old_run_with_edit(out: Path) -> None:
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
    _old_run_with_edit(out)
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
    _old_run_with_edit(out)
    _killed_writer(out, 3, monkeypatch)
    assert not out.exists()  # killed with the old set aside and the new one not yet in
    with atomic_output_set(out, replaces=SET) as stage:
        (stage / "model.safetensors").write_text("next")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model.safetensors": "next", "notes.txt": "the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_json_is_always_strict(tmp_path):
    path = write_json(tmp_path / "r.json", {"acc": float("nan"), "rows": [1.0, float("inf")], "n": 3})

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"acc": None, "rows": [1.0, None], "n": 3}


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
