"""Outputs never lose a user's data, by the concept they guard: the clean-up removes only temporaries clipedit
can prove it made (of runs that are gone); a swap journal is authenticated and confined to its own output;
every writer, CLI or Python, goes through one guard; a multi-file output is one atomic set, locked against
concurrent writers, that a kill -9 leaves whole (old or new, finished by the next writer)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_error

import clipedit
from clipedit.errors import ClipeditError
from clipedit.io import (
    _journal_path,
    _set_journal_path,
    _temp_name,
    _write_journal,
    atomic_file_set,
    atomic_output_set,
    remove_stale_temporaries,
    write_json,
)
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

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            slow()
            code = 0
        finally:
            os._exit(code)
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
    assert {"long name": "too long", "fifo": "FIFO", "device": "character device"}[kind] in line
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
