"""``clipedit compare``: intervals, the tie rule, end to end at tiny n, and bad input."""
from __future__ import annotations

import json

import pytest

from clipedit import cli
from clipedit.eval.intervals import cell, format_cell, mean_interval, verdict, wilson


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_cells_over_one_and_several_seeds_and_the_tie_rule():
    one = cell([(80, 100)])
    assert one["value"] == 0.8 and one["n"] == 100 and one["interval"] == "wilson"
    three = cell([(80, 100), (70, 100), (90, 100)])
    mean, lo, hi = mean_interval([0.8, 0.7, 0.9])
    assert three["value"] == pytest.approx(mean) and three["lo"] == pytest.approx(lo)
    assert hi - mean == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-3)  # t(2) = 4.303, sd = 0.1
    assert three["seeds"] == 3 and three["n"] == 300
    high, low = cell([(95, 100)]), cell([(50, 100)])
    assert verdict(high, low) == "A" and verdict(low, high) == "B"
    assert verdict(cell([(52, 100)]), cell([(50, 100)])) == "tie"
    assert format_cell(one).startswith("80.0% [") and "n=100" in format_cell(one)


def run_cli(args):
    try:
        cli.main(args)
    except SystemExit as e:
        return e.code
    return 0


@pytest.mark.parametrize("args, message", [
    (["--methods", "edit,bogus"], "unknown method 'bogus'"),
    (["--model", "mini", "--methods", "dyslexify"], "dyslexify does not apply to mini"),
    (["--seeds", ","], "--seeds is empty"),
    (["--n", "0"], "n_test must be >= 1"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini-vit", *args, "--out", str(out)]
    assert run_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]
    assert not out.exists()


@pytest.mark.slow
def test_compare_end_to_end_at_tiny_n(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini-vit", "--methods", "dyslexify,head-ablation-weights", "--words", "ipod",
            "--seeds", "0", "--n", "8", "--n-signs", "6", "--n-train", "12", "--n-val", "6", "--out", str(out),
            "--report", str(tmp_path / "r.html")]
    assert run_cli(argv) == 0
    record = json.loads((out / "compare.json").read_text())
    assert record["task"] == "typographic_defense_compare" and record["model"] == "mini-vit"
    assert all(not isinstance(v, (dict, list)) for v in record["metrics"].values())  # flat, clip_benchmark-style
    cells = record["compare"]["cells"]
    assert set(cells) == {"unedited", "dyslexify", "head-ablation-weights"}
    for method, row in cells.items():
        for key in ("text_acc", "other_text_acc", "clean_acc", "blank_acc", "reading_acc"):
            c = row[key]
            assert c["n"] > 0 and c["lo"] <= c["value"] <= c["hi"], (method, key)
    assert cells["unedited"]["clean_acc"]["n"] == 8 and cells["unedited"]["reading_acc"]["n"] == 6
    assert record["metrics"]["dyslexify/clean_acc_n"] == 8
    details = record["compare"]["details"]["dyslexify"]["0"]
    assert "rule" in details and "steps" in details
    assert not (out / "compare.partial.json").exists()  # kept while running, removed once the record is whole
    assert (out / "compare.png").stat().st_size > 0 and "<table>" in (tmp_path / "r.html").read_text()
    table = capsys.readouterr().out
    assert "defended word" in table and "n=8" in table


@pytest.mark.slow
def test_compare_runs_defense_prefix_with_its_settings_from_hparams(tmp_path, capsys):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"defense-prefix": {"steps": 40, "lrs": [0.02], "batch_size": 32}}))
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini", "--methods", "defense-prefix", "--words", "ipod", "--seeds", "0",
            "--n", "8", "--n-signs", "6", "--n-train", "16", "--n-val", "8", "--hparams", str(hp), "--out", str(out)]
    assert run_cli(argv) == 0
    record = json.loads((out / "compare.json").read_text())["compare"]
    assert record["settings"]["hparams"] == {"defense-prefix": {"steps": 40, "lrs": [0.02], "batch_size": 32}}
    details = record["details"]["defense-prefix"]["0"]
    assert details["lr"] == 0.02 and [r["lr"] for r in details["lr_curve"]] == [0.02]
    assert details["lr_curve"][0]["n"] == 8
    assert record["cells"]["defense-prefix"]["text_acc"]["n"] == 8


@pytest.mark.parametrize("content, message", [
    ({"bogus": {}}, "unknown method 'bogus'"),
    ({"defense-prefix": {"nope": 1}}, "unknown setting(s) of DefensePrefixHParams: nope"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_hparams_are_one_error_line(content, message, tmp_path, capsys):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(content))
    out = tmp_path / "cmp"
    assert run_cli(["compare", "--model", "mini", "--hparams", str(hp), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]
    assert not out.exists()


def test_pooled_cells_count_shared_images_once():
    from clipedit.defenses.compare import table_cells

    shared = {"-": {"a": {"clean_acc": (90, 100, "k"), "text_acc": (40, 100, "a")},
                    "b": {"clean_acc": (80, 100, "k"), "text_acc": (60, 100, "b")}}}
    cells = table_cells(shared)
    assert cells["clean_acc"]["n"] == 100 and cells["clean_acc"]["value"] == pytest.approx(0.85)
    assert cells["text_acc"]["n"] == 200 and cells["text_acc"]["value"] == pytest.approx(0.5)
    wide, narrow = cells["clean_acc"], table_cells({"-": {"a": {"clean_acc": (170, 200, "x")}}})["clean_acc"]
    assert wide["hi"] - wide["lo"] > narrow["hi"] - narrow["lo"]


def test_each_word_of_a_world_comparison_gets_its_own_test_scenes():
    from clipedit.defenses.compare import counts
    from clipedit.defenses.selection import heldout_data
    from clipedit.eval.heldout import SCENE_OFFSET
    from clipedit.models import load_model

    bundle = load_model("mini", device="cpu")
    a = heldout_data(bundle, ["ipod"], 6, 4, split="test")
    b = heldout_data(bundle, ["mug"], 6, 4, split="test", offset=SCENE_OFFSET)
    again = heldout_data(bundle, ["ipod"], 6, 4, split="test")
    ka, kb, ks = counts(a, bundle), counts(b, bundle), counts(again, bundle)
    assert all(ka[k][2] == ks[k][2] for k in ka)  # the key names the images: the same draw, the same key
    assert all(ka[k][2] != kb[k][2] for k in ("clean_acc", "blank_acc", "text_acc", "reading_acc"))
