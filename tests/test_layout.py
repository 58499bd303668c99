"""The package's shape: one-way dependencies, no cycles, a whole wheel, names that do not collide."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import from its own layer and the ones before it, never after.
LAYERS = [
    ("clipedit.attacks",),  # the attack generator (attacks/ in the repository), below everything
    ("clipedit.errors", "clipedit.io", "clipedit.inputs", "clipedit.outputs"),
    ("clipedit.core",),  # the rewrite engine
    ("clipedit.data",),  # images from disk, worlds, splits, benchmarks
    ("clipedit.mini", "clipedit.mini.world", "clipedit.mini.shapes"),
    ("clipedit.models",),
    ("clipedit.eval",),  # measuring, and the pick rule every tuned method and driver shares
    ("clipedit.settings.config", "clipedit.settings.defaults"),  # the settings as data and the default files
    ("clipedit.data.prepare",),  # what a defense learns from, tunes on and is scored on
    ("clipedit.methods",),  # one module per method, the table and its dispatcher
    # defend() and concept edits (a method run, a run's files); resolving settings reads the method table
    ("clipedit.defenses", "clipedit.settings"),
    ("clipedit.selection",),  # the experiment drivers: sweep, compare
    ("clipedit.mini.training",),
    ("clipedit.commands", "clipedit.cli"),
]

#: Imports against the layering that are known and named (importer, imported): why each is there.
ALLOWED_UPWARD: set[tuple[str, str]] = set()  # none at present


def layer_of(module: str) -> int:
    """Index of the layer holding ``module`` (the longest matching prefix wins)."""
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(path: Path):
    """Every AST node of a file, at any depth, but those under ``if TYPE_CHECKING:`` (imports for type hints
    only, never run)."""
    skip = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if id(n) not in skip]


def imported_modules(path: Path) -> set[str]:
    """Every ``clipedit``/``attacks`` module a file imports at run time, at any depth (function-level imports
    too; not those only for type hints)."""
    out = set()
    for node in runtime_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.split(".")[0] in ("clipedit", "attacks")}


def library_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_dependencies_point_one_way():
    wrong = []
    for path in library_files("clipedit"):
        me = module_name(path)
        if me in ("clipedit", "clipedit.__main__"):
            continue  # the package's front door re-exports from every layer
        for target in imported_modules(path):
            if target.startswith(("attacks", "clipedit.attacks")):
                continue  # the attack generator sits below clipedit
            if (me, target) in ALLOWED_UPWARD:
                continue
            if target == "clipedit" or layer_of(target) > layer_of(me):
                wrong.append(f"{me} -> {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    """No module reaches itself through clipedit imports (module-level or inside functions)."""
    modules = {module_name(p): p for p in library_files("clipedit")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in runtime_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("clipedit"):
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in modules and t not in (name, "clipedit")}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt == path[0]:
                cycles.append(" -> ".join(path + [nxt]))
            elif nxt not in path and len(path) < 8:
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_attacks_import_nothing_from_clipedit():
    offenders = [f"{module_name(p)} -> {t}" for p in library_files("attacks") for t in imported_modules(p)
                 if t.startswith("clipedit")]
    assert not offenders


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_import_attacks_loads_no_clipedit_module():
    r = _run("import attacks, sys; assert not any(m.startswith('clipedit') for m in sys.modules), "
             "sorted(m for m in sys.modules if m.startswith('clipedit'))")
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_the_core_imports_alone():
    """Import ``clipedit.core`` without the package's front door: nothing of models/eval/… comes along."""
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('clipedit'); pkg.__path__ = [{str(ROOT / 'clipedit')!r}]\n"
        "sys.modules['clipedit'] = pkg\n"
        "import clipedit.core\n"
        "from clipedit.core import apply_rewrite, key_statistics\n"
        "above = ('clipedit.models', 'clipedit.eval', 'clipedit.data', 'clipedit.defenses', 'clipedit.mini',"
        " 'clipedit.commands', 'open_clip', 'attacks')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(above))\n"
        "assert not bad, bad\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr


def test_public_names_do_not_shadow_submodules():
    """``from clipedit.defenses.typographic import X`` must not turn ``clipedit.defend`` into a module."""
    import importlib
    import pkgutil

    import clipedit

    for info in pkgutil.walk_packages(clipedit.__path__, "clipedit."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        subs = {m.name for m in pkgutil.iter_modules(package.__path__)}
        assert not subs & set(getattr(package, "__all__", ())), info.name
    subs = {m.name for m in pkgutil.iter_modules(clipedit.__path__)}
    assert not subs & set(clipedit.__all__)
    from clipedit.defenses.typographic import DefenseConfig  # noqa: F401

    assert callable(clipedit.defend) and clipedit.defend.__module__ == "clipedit.defenses.typographic"


#: The public API, name -> the module that defines it; everything else is imported from its module.
PUBLIC_API = {
    "load_model": "clipedit.models.registry", "list_models": "clipedit.models.registry",
    "defend": "clipedit.defenses.typographic", "evaluate": "clipedit.eval.evaluation",
    "EvalOptions": "clipedit.eval.evaluation", "audit": "clipedit.eval.audit",
    "compare": "clipedit.selection.compare", "CompareSettings": "clipedit.selection.compare",
    "load_edits": "clipedit.core.edit_sets", "save_edits": "clipedit.core.edit_sets",
    "apply_edit_set": "clipedit.core.edit_sets", "revert_edit_set": "clipedit.core.edit_sets",
    "resolve_config": "clipedit.settings.resolve", "DefenseResult": "clipedit.methods.spec",
    "save_run": "clipedit.defenses.run_files", "METHODS": None, "MethodSpec": "clipedit.methods.spec",
    "register_method": "clipedit.methods.registry", "ClipeditError": "clipedit.errors", "USER_ERRORS": None,
}


def test_the_public_api_is_these_names_and_each_resolves():
    import clipedit
    from clipedit.attacks import AttackError
    from clipedit.methods.registry import METHODS

    assert sorted(clipedit.__all__) == sorted(PUBLIC_API)
    for name, module in PUBLIC_API.items():
        value = getattr(clipedit, name)
        if module is not None:
            assert value.__module__ == module, name
    assert clipedit.METHODS is METHODS and clipedit.USER_ERRORS == (clipedit.ClipeditError, AttackError)
    assert "load_edit" not in dir(clipedit) and "EditSet" not in dir(clipedit)  # edits: the set API only


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_is_in_the_wheel():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {module_name(p.parent / "__init__.py") for pkg in ("clipedit", "attacks")
             for p in (ROOT / pkg).rglob("__init__.py")}
    found = {"clipedit." + name if name.split(".")[0] == "attacks" else name for name in found}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    mapped = setuptools["package-dir"]
    assert mapped == {"clipedit.assets": "assets", "clipedit.attacks": "attacks"}
    assert (ROOT / "assets" / "__init__.py").is_file()
    assert "py-modules" not in setuptools and not any(p.split(".")[0] != "clipedit" for p in listed)
    assert _pyproject()["project"]["scripts"] == {"clipedit": "clipedit.cli:main"}


@pytest.mark.parametrize("package, folder, required", [
    ("clipedit.assets", "assets", ["mini/config.json", "mini/model.safetensors"]),
    ("clipedit.assets.mini", "assets/mini", ["config.json", "model.safetensors"]),
    ("clipedit.models.configs", "clipedit/models/configs", ["tiny-vit.json", "tiny-rn.json"]),
    ("clipedit.settings", "clipedit/settings", ["defaults_grid.json", "hparams/edit/default.json",
                                                "hparams/edit/families/ResNet.json", "hparams/edit/models/mini.json"]),
    ("clipedit", "clipedit", ["py.typed"]),
])
def test_package_data_globs_cover_the_files_runtime_reads(package, folder, required):
    globs = _pyproject()["tool"]["setuptools"]["package-data"][package]
    for rel in required:
        assert (ROOT / folder / rel).is_file(), rel
        assert any(fnmatch(rel, g) for g in globs), f"{rel} is not shipped by {package}'s package-data {globs}"


def test_list_models_names_clipedits_models_without_touching_open_clips_registry():
    import open_clip

    from clipedit import list_models, load_model

    names = list_models()
    assert {"mini", "tiny-vit", "tiny-rn", "ViT-B-32", "RN50"} <= set(names)
    load_model("tiny-vit", device="cpu")
    assert "tiny-vit" not in open_clip.list_models() and "mini" not in open_clip.list_models()


@pytest.mark.slow
def test_python_dash_m_clipedit_lists_the_commands():
    r = subprocess.run([sys.executable, "-m", "clipedit", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for command in ("attack", "audit", "defend", "apply", "revert", "edit-classifier", "train-mini"):
        assert command in r.stdout


@pytest.mark.slow
def test_a_users_own_attacks_and_cli_do_not_stand_in_for_clipedits(tmp_path):
    """The wheel installs attacks/ as clipedit.attacks and the command line as clipedit.cli: from a folder
    holding its own ``attacks/`` and ``cli.py``, ``import clipedit`` and ``python -m clipedit --help`` work."""
    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "__init__.py").write_text("raise ImportError('a user attacks package')\n")
    (tmp_path / "cli.py").write_text("main = None\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", "import clipedit, clipedit.attacks; print(clipedit.attacks.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == (ROOT / "attacks" / "__init__.py").resolve()
    r = subprocess.run([sys.executable, "-m", "clipedit", "--help"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "defend" in r.stdout


@pytest.mark.parametrize("home, never", [
    ("clipedit.core", ("clipedit.data", "clipedit.models", "clipedit.eval", "clipedit.methods", "clipedit.defenses",
                       "clipedit.selection", "clipedit.commands")),
    ("clipedit.data", ("clipedit.methods", "clipedit.selection", "clipedit.defenses", "clipedit.commands")),
    ("clipedit.eval", ("clipedit.data.prepare", "clipedit.methods", "clipedit.selection", "clipedit.defenses",
                       "clipedit.commands")),
    ("clipedit.methods", ("clipedit.selection", "clipedit.commands", "clipedit.settings.resolve",
                          "clipedit.defenses.typographic", "clipedit.defenses.run_files")),
    ("clipedit.defenses", ("clipedit.selection", "clipedit.commands")),
    ("clipedit.selection", ("clipedit.commands",)),
])
def test_a_home_imports_nothing_above_it(home, never):
    """Each home by job, read as a reader would: data preparation never reaches for a method, a method never
    for the drivers that choose between methods, nothing of the library for the command line."""
    base = ROOT / home.replace(".", "/")
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    wrong = [f"{module_name(p)} -> {t}" for p in files for t in imported_modules(p)
             if t.startswith(never) and (home != "clipedit.data" or not module_name(p).startswith("clipedit.data"))]
    assert not wrong, "\n".join(wrong)


#: Calls on the defend path from a layer into one above it: each a function the caller was handed, never an import.
CALLBACKS = {
    ("clipedit.core.keys_values", "clipedit.models.bundle"): "the forward function handed to the core",
    ("clipedit.core.statistics", "clipedit.models.bundle"): "the forward function handed to the core",
    ("clipedit.core.statistics", "clipedit.data.prepare.exemplars"): "the reference image batches",
    ("clipedit.core.multisite", "clipedit.defenses.typographic"): "key statistics of the model as it is when each "
                                                                   "site is solved (sites are solved in order)",
    ("clipedit.core.multisite", "clipedit.methods.spec"): "the exemplar batches (DefenseData.requests)",
    ("clipedit.core.hparams", "clipedit.settings.defaults"): "HParams.from_dict builds the settings class it is "
                                                            "called on (a model's default file)",
}
#: The most orchestration modules (settings, data preparation, methods, the defense entry, selection, commands)
#: whose functions run on ``clipedit defend`` from the command to the saved files.
DEFEND_PATH_MODULES = 12


def test_the_defend_path_is_short_and_calls_back_up_only_through_callbacks(tiny_vit, tmp_path, capsys):
    """``clipedit defend`` on a tiny model, profiled from the command's function to the written files: the
    orchestration modules it runs are few (the engine, ``clipedit.core`` and the attack renderer, and the
    services below the settings, ``io``/``models``/``eval``/``data``, are not counted), and a lower layer calls
    a higher one only through a function it was handed."""
    from conftest import run_cli

    from clipedit.models import save_state_dict

    base = save_state_dict(tmp_path / "base.safetensors", tiny_vit.model.state_dict())
    seen: set[str] = set()
    upward: set[tuple[str, str]] = set()
    started = []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_flags & 1:  # functions only (not module or class bodies)
            return
        me = frame.f_globals.get("__name__", "")
        if me == "clipedit.commands.defend" and frame.f_code.co_name == "defend_cmd":
            started.append(True)
        if not started or not me.startswith("clipedit.") or frame.f_code.co_name == "__create_fn__":
            return
        seen.add(me)
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
        if caller.startswith("clipedit.") and layer_of(me) > layer_of(caller):
            upward.add((caller, me))

    args = ["defend", "--model", "tiny-vit", "--checkpoint", str(base), "--text", "ipod", "--renders", "2",
            "--rank", "2", "--layer", "visual.transformer.resblocks.1.mlp.c_proj", "--no-eval",
            "--out", str(tmp_path / "run")]
    sys.setprofile(profile)
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        sys.setprofile(None)
    assert code == 0, err
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"edit.safetensors", "model.safetensors", "results.json"}
    orchestration = sorted(m for m in seen if layer_of(m) >= layer_of("clipedit.settings.config"))
    assert "clipedit.commands.defend" in orchestration and "clipedit.defenses.run_files" in orchestration
    assert len(orchestration) <= DEFEND_PATH_MODULES, orchestration
    assert upward <= set(CALLBACKS), sorted(upward - set(CALLBACKS))
