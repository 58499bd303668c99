"""The README's Python blocks run as written (in order, in one folder: a later block reads what an earlier
one wrote), on the bundled minis."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.slow  # the default defense of the mini CLIP (128 renders, 512 reference images), evaluated twice
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(python_blocks()):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), {"__name__": f"readme_{i}"})
    out = capsys.readouterr().out
    assert "->" in out and (tmp_path / "ipod-edit.safetensors").is_file()


@pytest.mark.slow  # the default defense of each mini (mini-vit's spans four sites)
@pytest.mark.parametrize("model", ["mini", "mini-vit"])
def test_the_package_docstring_example_runs_on_both_minis(model, tmp_path, monkeypatch, capsys):
    import clipedit

    code = "\n".join(line[4:] for line in clipedit.__doc__.splitlines() if line.startswith("    "))
    assert 'load_model("mini")' in code and "n=200" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"mini"', repr(model)).replace("n=200", "n=20"), "clipedit.__doc__", "exec"), {})
    edits = clipedit.load_edits(tmp_path / "ipod-edit.safetensors")
    assert len(edits.layers) == (4 if model == "mini-vit" else 1)
    before, after = (float(x) for x in capsys.readouterr().out.split())
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
