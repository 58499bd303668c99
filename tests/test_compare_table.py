"""``clipedit compare --table``: markdown tables regenerated from a record, new (paired) and old (cells only)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import exit_code

from clipedit.eval.compare_stats import bits, has_outcomes, statistics
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


def plane_record() -> dict:
    """One word, one seed, 100 notes and 100 signs: unedited reads 90 signs and 30 notes; ``keeper`` fixes 60
    notes and reads as unedited; ``blinder`` fixes the same notes and loses 50 signs; ``null`` is unedited."""
    notes = {"base": "1" * 30 + "0" * 70, "fixed": "1" * 90 + "0" * 10}
    signs = {"base": "1" * 90 + "0" * 10, "blind": "1" * 40 + "0" * 60}

    def entry(text: str, reading: str) -> dict:
        return {"text_acc": [text.count("1"), 100, "notes", text],
                "other_text_acc": [text.count("1"), 100, "other", text],
                "reading_acc": [reading.count("1"), 100, "signs", reading]}

    raw = {"unedited": {"-": {"ipod": entry(notes["base"], signs["base"])}},
           "keeper": {"0": {"ipod": entry(notes["fixed"], signs["base"])}},
           "blinder": {"0": {"ipod": entry(notes["fixed"], signs["blind"])}},
           "null": {"0": {"ipod": entry(notes["base"], signs["base"])}}}
    methods = ["keeper", "blinder", "null"]
    return {"methods": methods, "words": ["ipod"], "seeds": [0], "raw": raw, **statistics(raw, methods)}


def test_the_plane_flags_are_computed_from_the_paired_verdicts():
    from clipedit.eval.compare_table import plane_rows

    record = plane_record()
    rows = {r["method"]: r for r in plane_rows(record)}
    assert list(rows)[0] == "unedited" and "keeps_reading" not in rows["unedited"]
    flags = {m: (rows[m]["keeps_reading"], rows[m]["removes_attack"]) for m in ("keeper", "blinder", "null")}
    assert flags == {"keeper": (True, True), "blinder": (False, True), "null": (True, False)}
    verdicts = {(c["method"], c["metric"]): c["verdict"] for c in record["comparisons"] if c["reference"] == "unedited"}
    assert verdicts[("blinder", "reading_acc")] == "loses" and verdicts[("keeper", "reading_acc")] == "ties"
    lo, hi = wilson(40, 100)
    assert rows["blinder"]["intervals"]["reading_acc"] == {"acc": 0.4, "n": 100, "ci": [lo, hi]}
    assert rows["blinder"]["reading"]["ci"] == [lo, hi] and rows["unedited"]["text_acc"] == pytest.approx(0.3)
    text = render(record)
    lines = text.splitlines()
    assert ("| method   |   defended n=100 |     unseen n=100 |    reading n=100 | keeps reading | "
            "removes attack |") in lines
    assert ("| blinder  | 90.0 [82.6,94.5] | 90.0 [82.6,94.5] | 40.0 [30.9,49.8] |            no |            "
            "yes |") in lines
    assert ("| null     | 30.0 [21.9,39.6] | 30.0 [21.9,39.6] | 90.0 [82.6,94.5] |           yes |             "
            "no |") in lines
    assert "Removes the attack and keeps reading: keeper." in lines
    assert max(len(line) for line in lines) <= 120


def test_the_plane_of_committed_records_new_with_flags_old_with_cells_only(capsys):
    new = compare_record(json.loads((ROOT / "bench/results/compare_mini_small.json").read_text()))
    old = compare_record(json.loads((ROOT / "bench/results/compare_mini_vit.json").read_text()))
    from clipedit.eval.compare_table import plane_rows, plane_table

    verdicts = {(c["method"], c["metric"]): c["verdict"] for c in new["comparisons"] if c["reference"] == "unedited"}
    for r in plane_rows(new)[1:]:
        assert r["keeps_reading"] == (verdicts[(r["method"], "reading_acc")] in ("ties", "beats"))
        assert r["removes_attack"] == (verdicts[(r["method"], "text_acc")] == "beats")
    title, header, rows = plane_table(new)
    assert header[-2:] == ["keeps reading", "removes attack"] and len(rows) == len(new["cells"])
    assert "comparisons" not in old and not has_outcomes(old["raw"])  # written before per-image outcomes
    title, header, rows = plane_table(old)
    assert "keeps reading" not in header and all(len(r) == len(header) == 4 for r in rows)
    assert rows[1][0] == "edit" and rows[1][3] == cell_text(old["cells"]["edit"]["reading_acc"])
    assert all(r.get("keeps_reading") is None for r in plane_rows(old)[1:])
    assert exit_code(["compare", "--table", str(ROOT / "bench/results/compare_mini_vit.json")]) == 0
    out = capsys.readouterr().out
    assert "Attack removed vs reading kept" in out and "keeps reading" not in out and "Removes the attack" not in out


def test_compare_png_draws_every_method_on_the_plane_beside_gain_vs_cost(tmp_path):
    from PIL import Image

    from clipedit.eval.compare_table import plane_rows
    from clipedit.selection.compare_results import pareto_rows
    from clipedit.selection.tradeoff import plot_tradeoff

    record = plane_record()
    rows = pareto_rows(record)
    assert [r["method"] for r in rows] == ["keeper", "blinder", "null"]
    assert rows[1]["reading_acc"] == pytest.approx(0.4) and rows[1]["gain"] == pytest.approx(0.6)
    assert rows[1]["intervals"]["text_acc"]["ci"][0] < 0.9 < rows[1]["intervals"]["text_acc"]["ci"][1]
    plot_tradeoff(rows, tmp_path / "plane.png", "t", baseline=plane_rows(record)[0], unseen=True)
    plot_tradeoff([{k: v for k, v in r.items() if k != "reading_acc"} for r in rows], tmp_path / "one.png", "t")
    assert Image.open(tmp_path / "plane.png").width > 1.5 * Image.open(tmp_path / "one.png").width
