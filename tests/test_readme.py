"""The README and docs/ run as written: every Python block, and every shell line unless it is marked.

A shell line's trailing comment may mark it:

* ``# needs network`` — it downloads weights, packages or a data set; it is not run here, except in the
  recipes for real models (:data:`RECIPES`), which run with :data:`SUBSTITUTIONS`: a tiny random-init model
  in place of ``ViT-B-32`` and of the Hugging Face hub;
* ``# long: …`` — it takes minutes or more (a reproduction of a measured figure, the test suite itself);
  not run here.

Marked or not, every ``clipedit`` and ``python -m bench`` line is checked against the command line's
options. Each file's blocks run in order in one folder (a later block reads what an earlier one wrote), which
holds the placeholder inputs the docs name (``my_photos/``, ``road.jpg`` …) made from scikit-image's photos.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import click
import pytest
import skimage.data
from PIL import Image

from clipedit import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

NETWORK, LONG = "needs network", "long"
MARKER = re.compile(r"\s#\s*(needs network|long)\b.*$")
# What a line that downloads looks like: it must carry `# needs network`.
DOWNLOADS = re.compile(r"pip install|:openai\b|:webli\b|:laion|hf:[\w.-]+/|download\.pytorch\.org")
# The recipe for real models, run offline: hub names -> tiny random-init models ({hf}: a toy CLIPModel folder).
SUBSTITUTIONS = [("ViT-B-32:openai", "tiny-vit"), ('"ViT-B-32"', '"tiny-vit"'),
                 ("hf:openai/clip-vit-base-patch32", "hf:{hf}:none")]
RECIPES = {"README.md", "families.md"}


def blocks(path: Path) -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced ``python`` or ``bash`` block, in order."""
    return re.findall(r"```(python|bash)\n(.*?)```", path.read_text(), flags=re.S)


def shell_lines(text: str) -> list[str]:
    """The commands of a shell block: continuations joined, blank and comment-only lines left out."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def marker(line: str) -> Optional[str]:
    m = MARKER.search(line)
    return m.group(1) if m else None


def every_shell_line() -> list[tuple[str, str]]:
    return [(path.name, line) for path in DOCS for lang, text in blocks(path) if lang == "bash"
            for line in shell_lines(text)]


def substituted(text: str, hf_folder: str) -> str:
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new.format(hf=hf_folder))
    return text


def commands(line: str) -> list[list[str]]:
    """Each ``&&``-joined command of a line as argv, the trailing comment dropped."""
    code = MARKER.sub("", line) if marker(line) else line
    words = shlex.split(code, comments=True)
    out, current = [], []
    for word in words:
        if word == "&&":
            out.append(current)
            current = []
        else:
            current.append(word)
    return [*out, current]


def clipedit_args(argv: list[str]) -> Optional[list[str]]:
    """The arguments after ``clipedit`` (``.venv/bin/clipedit``, ``-m clipedit``), or None."""
    for i, word in enumerate(argv):
        if word.endswith("clipedit") and (i == 0 or argv[i - 1] == "-m" or word.endswith("bin/clipedit")):
            return argv[i + 1:]
    return None


def bench_args(argv: list[str]) -> Optional[list[str]]:
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "bench":
            return argv[i + 2:]
    return None


def check_clipedit_options(args: list[str]) -> None:
    """Parse ``args`` against the command's options (names, arity, choices and numbers; paths are not
    looked up): an unknown option or a bad value fails."""
    cmd = cli.cli.get_command(None, args[0])
    assert cmd is not None, f"no command {args[0]!r}"
    ctx = click.Context(cmd, info_name=args[0])
    values, extra, _ = cmd.make_parser(ctx).parse_args(list(args[1:]))
    params = {p.name: p for p in cmd.params}
    for name, value in values.items():
        kind = params[name].type
        if not isinstance(kind, (click.Path, click.File)) and value is not None:
            params[name].type_cast_value(ctx, value)
    if extra:
        assert any(isinstance(p, click.Argument) for p in cmd.params), f"stray arguments {extra}"


# -- fast checks: on every line, run or not ----------------------------------------------------------------
def test_the_docs_have_blocks_and_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 300
    assert sum(lang == "python" for lang, _ in blocks(README)) >= 3
    assert len(every_shell_line()) >= 30


@pytest.mark.parametrize("name,line", every_shell_line())
def test_every_command_line_of_the_docs_parses(name, line):
    for argv in commands(line):
        args = clipedit_args(argv)
        if args:
            check_clipedit_options(args)
        args = bench_args(argv)
        if args is not None:
            from bench.harness import parser

            parser().parse_args(args)


def test_every_inline_command_of_the_prose_parses():
    """`clipedit …` written in the prose, where it has no placeholder (SPEC, …, [A|B]), parses too."""
    checked = 0
    for path in DOCS:
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for code in re.findall(r"`(clipedit [^`]+)`", prose):
            if re.search(r"[…\[|<]|\.\.\.|\b[A-Z]{3,}\b|\bW0?\b", code):
                continue
            args = clipedit_args(commands(code)[0])
            if args and not args[0].startswith("-"):
                check_clipedit_options(args)
                checked += 1
    assert checked >= 20


def test_a_line_that_downloads_says_so():
    unmarked = [f"{name}: {line}" for name, line in every_shell_line()
                if DOWNLOADS.search(line) and marker(line) != NETWORK]
    assert not unmarked


def test_the_markers_are_the_two_known_ones():
    odd = [f"{name}: {line}" for name, line in every_shell_line()
           if re.search(r"#\s*(need|network|slow|skip)", line) and marker(line) is None]
    assert not odd


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = [line for name, line in every_shell_line() if name == "README.md" and "pytest -q" in line
              and "not slow" not in line]
    assert [MARKER.sub("", line).strip() for line in readme] == [ci]


def test_every_link_of_the_docs_leads_somewhere():
    def anchors(path: Path) -> set[str]:
        heads = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
        return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}

    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
                broken.append(f"{path.name}: {target}")
    assert not broken


# -- the docs run: every block of each file, in order, in one folder ---------------------------------------
def make_inputs(folder: Path) -> None:
    """The placeholder inputs the docs name, from scikit-image's photos."""
    photos = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
    for root in ("my_photos", "my_imagefolder"):
        for name, src in photos.items():
            (folder / root / name).mkdir(parents=True)
            image = Image.fromarray(getattr(skimage.data, src)()).convert("RGB").resize((96, 96))
            image.save(folder / root / name / "a.jpg")
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / root / name / "b.jpg")
    (folder / "my_reference_photos").mkdir()
    for src in ("astronaut", "camera", "coffee", "chelsea"):
        Image.fromarray(getattr(skimage.data, src)()).convert("RGB").resize((96, 96)).save(
            folder / "my_reference_photos" / f"{src}.jpg")
    Image.fromarray(skimage.data.coffee()).convert("RGB").resize((224, 224)).save(folder / "road.jpg")
    Image.fromarray(skimage.data.grass()).convert("RGB").resize((128, 128)).save(folder / "snow.jpg")


def run_line(line: str, folder: Path, capsys) -> None:
    argv = commands(line)
    args = clipedit_args(argv[0]) if len(argv) == 1 else None
    if args is not None and argv[0][0] in ("clipedit", str(BIN / "clipedit")):  # in-process: no start-up
        try:
            cli.main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        err = capsys.readouterr().err
        assert code == 0, f"{line}\n{err}"
        return
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"


@pytest.mark.slow  # each file's commands and Python on tiny models and the minis (the README's: a few minutes)
@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_every_block_of_the_docs_runs(path, tmp_path, monkeypatch, capsys):
    import open_clip

    from clipedit.models.hf import write_config_folder
    from clipedit.models.registry import config_files

    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    hf = str(write_config_folder(tmp_path / "hf-tiny-clip", "clip"))
    tiny = Path(str(config_files()["tiny-vit"]))
    open_clip.add_model_config(tiny)  # for `create_model("tiny-vit")`, taken off again below
    ran = 0
    try:
        for i, (lang, text) in enumerate(blocks(path)):
            if lang == "python":
                code = substituted(text, hf) if path.name in RECIPES else text
                exec(compile(code, f"{path.name} python block {i + 1}", "exec"), {"__name__": f"docs_{i}"})
                ran += 1
                continue
            for line in shell_lines(text):
                local = substituted(line, hf) if path.name in RECIPES else line
                if marker(line) == LONG or (marker(line) == NETWORK and local == line):
                    continue
                run_line(local, tmp_path, capsys)
                ran += 1
    finally:
        open_clip.factory._MODEL_CONFIGS.pop("tiny-vit", None)
        if tiny in open_clip.factory._MODEL_CONFIG_PATHS:
            open_clip.factory._MODEL_CONFIG_PATHS.remove(tiny)
    if path == README:
        assert ran >= 10 and (tmp_path / "ipod-edit.safetensors").is_file() and (tmp_path / "run-hf").is_dir()


@pytest.mark.slow  # the default defense of each mini (mini's spans two sites)
@pytest.mark.parametrize("model", ["mini", "mini-vit"])
def test_the_package_docstring_example_runs_on_both_minis(model, tmp_path, monkeypatch, capsys):
    import clipedit

    code = "\n".join(line[4:] for line in clipedit.__doc__.splitlines() if line.startswith("    "))
    assert 'load_model("mini")' in code and "n=200" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"mini"', repr(model)).replace("n=200", "n=20"), "clipedit.__doc__", "exec"), {})
    edits = clipedit.load_edits(tmp_path / "ipod-edit.safetensors")
    assert edits.layers == list(clipedit.resolve_config(clipedit.load_model(model, device="cpu")).sites)
    before, after = (float(x) for x in capsys.readouterr().out.split())
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
