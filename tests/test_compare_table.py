"""``clipedit compare --table``: markdown tables regenerated from a record, new (paired) and old (cells only)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import exit_code

from clipedit.eval.compare_stats import bits, statistics
from clipedit.eval.compare_table import RERUN, cell_text, compare_record, markdown, render
from clipedit.eval.intervals import wilson
from clipedit.eval.paired import mcnemar_exact

ROOT = Path(__file__).resolve().parents[1]
OLD = sorted((ROOT / "bench" / "results").glob("compare_mini*.json"))  # the compare records (not compare_speed)


def small_record() -> dict:
    """One word, one seed, 100 test images: unedited 30%, edit 90% (65 images only edit gets right, 5 only
    unedited), a null method identical to unedited, and a budget for edit."""
    base = "1" * 25 + "0" * 65 + "1" * 5 + "0" * 5
    strong = "1" * 25 + "1" * 65 + "0" * 5 + "0" * 5
    clean = "1" * 100

    def entry(flags: str) -> dict:
        return {"text_acc": [flags.count("1"), 100, "notes", flags], "clean_acc": [100, 100, "clean", clean]}

    raw = {"unedited": {"-": {"ipod": entry(base)}}, "edit": {"0": {"ipod": entry(strong)}},
           "null": {"0": {"ipod": entry(base)}}}
    record = {"methods": ["edit", "null"], "words": ["ipod"], "seeds": [0], "raw": raw,
              "seconds": {"edit": {"mean_per_defense": 2.5, "runs": 1, "total": 2.5},
                          "null": {"mean_per_defense": 1.0, "runs": 1, "total": 1.0}},
              "budget": {"edit": {"images_seen": 640, "optimizer_steps": 0, "settings_tried": 34}},
              "notes": ["reading kept: left out (no signs were asked for (--n-signs 0))"]}
    record.update(statistics(raw, ["edit", "null"]))
    return record


def test_a_table_regenerates_from_a_small_record_with_its_values():
    record = small_record()
    text = render(record)
    lines = text.splitlines()
    assert bits([1, 0, True]) == "101"
    lo, hi = wilson(90, 100)
    assert f"| edit     |    90.0 [{100 * lo:.1f},{100 * hi:.1f}] |" in lines
    assert "| method   | defended word n=100 |" in lines and "unseen words" not in text
    assert "| method | images seen | steps | settings tried | s/defense |" in lines
    assert "| edit   |         640 |     0 |             34 |       2.5 |" in lines
    rows = {(c["method"], c["reference"], c["metric"]): c for c in record["comparisons"]}
    edit = rows[("edit", "unedited", "text_acc")]
    assert edit["diff"] == pytest.approx(0.6) and edit["p"] == pytest.approx(mcnemar_exact(65, 5))
    assert edit["verdict"] == "beats" and edit["p_holm"] < 0.05
    assert rows[("null", "unedited", "text_acc")]["verdict"] == "ties"
    assert rows[("null", "edit", "text_acc")]["verdict"] == "loses"
    assert ("edit", "edit", "text_acc") not in rows and ("unedited", "edit", "text_acc") not in rows
    paired = [line for line in text.splitlines() if line.startswith("| edit") and "beats" in line]
    assert len(paired) == 1 and "+60.0 [" in paired[0] and "<0.001" in paired[0]
    assert "Paired against unedited" in text and "Paired against edit" in text and RERUN not in text
    assert "- edit vs unedited: beats on defended word; ties on clean" in lines
    assert "- null vs edit: loses on defended word; ties on clean" in lines
    assert max(len(line) for line in text.splitlines()) <= 120


def test_markdown_alignment():
    assert markdown(["a", "bb"], [["x", "1"]]).splitlines() == ["| a | bb |", "|---|---:|", "| x |  1 |"]


@pytest.mark.parametrize("path", OLD, ids=[p.name for p in OLD])
def test_committed_records_print_their_cells_and_paired_verdicts_where_they_can(path, capsys):
    """Records written before compare kept per-image outcomes print their cells and ask for a re-run; newer
    ones print the paired tables."""
    assert exit_code(["compare", "--table", str(path)]) == 0
    out = capsys.readouterr().out
    record = compare_record(json.loads(path.read_text()))
    assert cell_text(record["cells"]["unedited"]["text_acc"]) in out
    if record.get("comparisons"):
        assert "Paired against unedited" in out and "no per-image outcomes" not in out
    else:
        assert "paired verdicts: this record has no per-image outcomes" in out and "Paired against" not in out
    assert max(len(line) for line in out.splitlines()) <= 120


@pytest.mark.parametrize("content, message", [
    ({"task": "audit"}, "not a compare record"),
    (None, "file not found"),
])
def test_table_of_a_bad_file_is_one_error_line(content, message, tmp_path, capsys):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(json.dumps(content))
    assert exit_code(["compare", "--table", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]


def test_help_states_the_defaults_duration_and_a_small_command(capsys):
    assert exit_code(["compare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "about a day on a CPU" in text and "--seeds 0 --n 100" in text and "--table" in text


DOC_BLOCK = re.compile(r"<!-- compare --table (\S+) -->\n(.*?)<!-- /compare --table -->", re.S)


PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_the_docs_compare_tables_are_the_records_output(page):
    """Every compare table on a page is ``clipedit compare --table RECORD`` pasted between markers: regenerated
    here from the record it names, and the page must hold exactly that."""
    text = (ROOT / page).read_text(encoding="utf-8")
    for record_path, block in DOC_BLOCK.findall(text):
        expected = render(compare_record(json.loads((ROOT / record_path).read_text())))
        assert block.strip() == expected.strip(), f"{page}: the table of {record_path} differs from --table's output"


def test_the_compare_page_has_its_generated_tables():
    blocks = DOC_BLOCK.findall((ROOT / "docs" / "compare.md").read_text(encoding="utf-8"))
    assert {Path(p).name for p, _ in blocks} == {p.name for p in OLD}
