"""``clipedit compare``: intervals, the tie rule, end to end at tiny n, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import exit_code

from clipedit import cli
from clipedit.eval.compare_stats import bits, method_cells, seed_cells, strata_cells, word_cells
from clipedit.eval.intervals import wilson
from clipedit.eval.paired import BOOTSTRAP


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_several_seed_cells_count_distinct_images_not_seeds_times_images():
    rng = np.random.default_rng(0)
    flags = {w: (rng.random(100) < 0.6) for w in ("a", "b", "c")}  # three words, each its own 100 images
    raw = {str(s): {w: {"text_acc": [int(f.sum()), 100, w, bits(f)]} for w, f in flags.items()} for s in range(3)}
    c = method_cells(raw)["text_acc"]
    assert c["n"] == 300 and c["seeds"] == 3 and c["interval"] == BOOTSTRAP  # not 900
    assert c["value"] == pytest.approx(np.mean([f.mean() for f in flags.values()]))
    assert c["hi"] - c["lo"] > 0.1  # seeds agree, yet the test sample's error stays in
    words = word_cells(raw)
    assert set(words) == {"a", "b", "c"} and all(words[w]["text_acc"]["n"] == 100 for w in words)
    seeds = seed_cells(raw)
    assert set(seeds) == {"0", "1", "2"} and seeds["0"]["text_acc"]["interval"] == "wilson"


@pytest.mark.parametrize("args, message", [
    (["--methods", "edit,bogus"], "unknown method 'bogus'"),
    (["--model", "mini", "--methods", "dyslexify"], "dyslexify does not apply to mini"),
    (["--seeds", ","], "--seeds is empty"),
    (["--n", "0"], "n_test must be >= 1"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini-vit", *args, "--out", str(out)]
    assert exit_code(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]
    assert not out.exists()


@pytest.mark.slow
def test_compare_end_to_end_at_tiny_n(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini-vit", "--methods", "dyslexify,head-ablation-weights", "--words", "ipod",
            "--seeds", "0", "--n", "8", "--n-signs", "6", "--n-train", "12", "--n-val", "6", "--out", str(out),
            "--report", str(tmp_path / "r.html")]
    assert exit_code(argv) == 0
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
    assert 0 <= record["metrics"]["dyslexify/vs_unedited/text_acc_p_holm"] <= 1
    details = record["compare"]["details"]["dyslexify"]["0"]
    assert "rule" in details and "steps" in details
    ablation = record["compare"]["details"]["head-ablation-weights"]["0:ipod"]
    for chose in (details, ablation):  # one validation for all: the validation split at --n-val
        assert chose["selection"]["split"] == "validation" and chose["selection"]["n"] == 6
    spent = record["compare"]["budget"]
    assert spent["dyslexify"]["runs"] == 1 and spent["dyslexify"]["settings_tried"] == len(details["steps"]) + 1
    assert spent["head-ablation-weights"]["seconds"] > 0 and spent["dyslexify"]["offline_settings"] == 0
    assert not list(out.glob("compare*.partial.json"))  # kept per rank while running, removed once the record is whole
    assert (out / "compare.png").stat().st_size > 0 and "<table>" in (tmp_path / "r.html").read_text()
    captured = capsys.readouterr()
    table = captured.out
    for method in ("dyslexify", "head-ablation-weights"):  # a log line as each method starts and ends
        assert f"{method}: started" in captured.err and f"{method}: done in" in captured.err
    assert "defended word n=8" in table and "Paired against unedited" in table
    assert max(len(line) for line in table.splitlines() if line.startswith("|")) <= 120
    compare = record["compare"]
    bits_ = compare["raw"]["dyslexify"]["0"]["ipod"]["clean_acc"][3]
    assert len(bits_) == 8 and set(bits_) <= {"0", "1"}  # per-image outcomes, aligned with the set's images
    pairs = {(c["method"], c["reference"], c["metric"]) for c in compare["comparisons"]}
    assert ("dyslexify", "unedited", "text_acc") in pairs and all(c["verdict"] in ("beats", "ties", "loses")
                                                                  for c in compare["comparisons"])
    assert compare["by_word"]["dyslexify"]["ipod"]["clean_acc"]["n"] == 8 and "0" in compare["by_seed"]["dyslexify"]
    assert compare["strata"]["unedited"] and all(c["text_acc"]["n"] > 0 for c in compare["strata"]["unedited"].values()
                                                 if "text_acc" in c)
    assert exit_code(["compare", "--table", str(out / "compare.json")]) == 0
    again = capsys.readouterr().out
    assert again.split("\n\n")[:6] == table.split("\n\n")[:6]  # the tables regenerate from the record
    page = (tmp_path / "r.html").read_text()
    assert "Paired against unedited" in page and "Per defended word" in page and "By kind and size band" in page
    assert "red frame" not in page  # the compare page shows no images
    assert "Attack removed vs reading kept" in page and "Attack removed vs reading kept" in table
    assert "defended word vs reading kept plane" in page  # the chart says what its second panel is
    from PIL import Image

    assert Image.open(out / "compare.png").width >= 1400  # gain vs cost, and the plane beside it


@pytest.mark.slow
def test_compare_runs_defense_prefix_with_its_settings_from_hparams(tmp_path, capsys):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"defense-prefix": {"steps": 40, "lrs": [0.02], "batch_size": 32}}))
    out = tmp_path / "cmp"
    argv = ["compare", "--model", "mini", "--methods", "defense-prefix", "--words", "ipod", "--seeds", "0",
            "--n", "8", "--n-signs", "6", "--n-train", "16", "--n-val", "8", "--hparams", str(hp), "--out", str(out)]
    assert exit_code(argv) == 0
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
    assert exit_code(["compare", "--model", "mini", "--hparams", str(hp), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]
    assert not out.exists()


def test_two_seed_stable_methods_at_60_and_57_percent_on_300_images_tie_in_a_record():
    from clipedit.eval.compare_stats import statistics

    rng = np.random.default_rng(3)
    words = ("a", "b", "c")  # per word, 100 images: both right 40, only edit 20, only other 17, neither 23
    edit = {w: np.array([1] * 40 + [1] * 20 + [0] * 17 + [0] * 23, bool) for w in words}
    other = {w: np.array([1] * 40 + [0] * 20 + [1] * 17 + [0] * 23, bool) for w in words}

    def method(flags, seeds):
        return {s: {w: {"text_acc": [int(f.sum()), 100, w, bits(f)]} for w, f in flags.items()} for s in seeds}

    raw = {"unedited": method({w: rng.random(100) < 0.3 for w in words}, ["-"]),
           "edit": method(edit, ["0", "1", "2"]), "other": method(other, ["0", "1", "2"])}
    stats = statistics(raw, ["edit", "other"])
    for m, value in (("edit", 0.60), ("other", 0.57)):
        c = stats["cells"][m]["text_acc"]
        assert c["value"] == pytest.approx(value) and c["n"] == 300
        assert c["hi"] - c["lo"] > 0.1  # three identical seeds: no zero-width interval
    rows = {(c["method"], c["reference"]): c for c in stats["comparisons"]}
    assert rows[("other", "edit")]["verdict"] == "ties" and rows[("other", "edit")]["n"] == 300
    assert rows[("edit", "unedited")]["verdict"] == "beats" and rows[("edit", "unedited")]["p_holm"] < 0.05


def test_strata_cells_by_kind_group_and_size_band():
    labels = [["note", "0.19-0.215"]] * 4 + [["sticker", "0.215-0.24"]] * 4 + [["text", None]] * 2
    raw = {"0": {"a": {"text_acc": [5, 10, "k:text", "1111" + "1000" + "00"]}}}
    out = strata_cells(raw, {"k:text": labels})
    assert list(out)[:2] == ["notes + stickers", "notes + stickers, size 0.19-0.215"]
    assert out["notes + stickers"]["text_acc"]["n"] == 8 and out["notes + stickers"]["text_acc"]["value"] == 5 / 8
    assert out["notes"]["text_acc"]["value"] == 1.0 and out["stickers, size 0.215-0.24"]["text_acc"]["n"] == 4
    assert out["bare text"]["text_acc"]["value"] == 0.0 and "bare text, size None" not in out


def test_pooled_cells_count_shared_images_once():
    clean_a, clean_b = "1" * 90 + "0" * 10, "1" * 80 + "0" * 20  # two words' models on the same 100 clean images
    shared = {"-": {"a": {"clean_acc": [90, 100, "k", clean_a], "text_acc": [40, 100, "a", "1" * 40 + "0" * 60]},
                    "b": {"clean_acc": [80, 100, "k", clean_b], "text_acc": [60, 100, "b", "1" * 60 + "0" * 40]}}}
    cells = method_cells(shared)
    assert cells["clean_acc"]["n"] == 100 and cells["clean_acc"]["value"] == pytest.approx(0.85)
    assert cells["text_acc"]["n"] == 200 and cells["text_acc"]["value"] == pytest.approx(0.5)
    narrow = method_cells({"-": {"a": {"clean_acc": [170, 200, "x", "1" * 170 + "0" * 30]}}})["clean_acc"]
    wide = cells["clean_acc"]
    assert wide["hi"] - wide["lo"] > narrow["hi"] - narrow["lo"]
    assert (wide["lo"], wide["hi"]) == pytest.approx(wilson(85, 100))


def test_each_word_of_a_world_comparison_gets_its_own_test_scenes():
    from clipedit.eval.heldout import SCENE_OFFSET
    from clipedit.eval.pick import heldout_data
    from clipedit.models import load_model
    from clipedit.selection.compare_scoring import counts

    bundle = load_model("mini", device="cpu")
    a = heldout_data(bundle, ["ipod"], 6, 4, split="test")
    b = heldout_data(bundle, ["mug"], 6, 4, split="test", offset=SCENE_OFFSET)
    again = heldout_data(bundle, ["ipod"], 6, 4, split="test")
    ka, kb, ks = counts(a, bundle), counts(b, bundle), counts(again, bundle)
    assert all(ka[k][2] == ks[k][2] for k in ka)  # the key names the images: the same draw, the same key
    assert all(ka[k][2] != kb[k][2] for k in ("clean_acc", "blank_acc", "text_acc", "reading_acc"))


def test_word_seed_reaches_the_compare_settings(monkeypatch, tmp_path):
    """``--word-seed`` is the library's ``CompareSettings.word_seed`` (the CLI parses, the library splits)."""
    import clipedit.commands.compare as command

    seen = {}

    class Stop(Exception):
        pass

    def capture(bundle, settings, **kwargs):
        seen["word_seed"] = settings.word_seed
        raise Stop

    monkeypatch.setattr(command, "compare", capture)
    with pytest.raises(Stop):
        cli.main(["compare", "--model", "mini", "--methods", "edit", "--words", "ipod", "--seeds", "0",
                  "--n", "4", "--n-signs", "0", "--n-train", "8", "--n-val", "4", "--word-seed", "7",
                  "--out", str(tmp_path / "c")])
    assert seen == {"word_seed": 7}
