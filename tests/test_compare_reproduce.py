"""The check behind ``python -m bench compare_reproduce``: a committed compare record against a re-run of its
settings, figure by figure, each inside the record's 95% interval."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from bench.compare_reproduce import RECORD, check, compare_argv


def test_a_record_reproduces_itself_and_a_figure_outside_its_interval_is_named():
    record = json.loads(RECORD.read_text())
    same = check(record, record)
    assert same["all_inside"] and same["cells"] == same["equal"] > 100 and same["max_abs_difference"] == 0
    moved = copy.deepcopy(record)
    cell = moved["compare"]["cells"]["edit"]["text_acc"]
    cell["value"] = record["compare"]["cells"]["edit"]["text_acc"]["hi"] + 0.01  # the re-run's figure
    gone = copy.deepcopy(record)
    del gone["compare"]["cells"]["paint"]
    result = check(record, moved)
    assert not result["all_inside"] and [r["cell"] for r in result["outside"]] == ["cells/edit/text_acc"]
    missing = check(record, gone)
    assert not missing["all_inside"] and "cells/paint/text_acc" in missing["missing"]


def test_the_rerun_command_is_the_records_settings():
    record = json.loads(RECORD.read_text())
    argv = compare_argv(record, Path("out"))
    settings = record["compare"]["settings"]
    assert argv[:3] == ["compare", "--model", record["model"]]
    assert argv[argv.index("--methods") + 1].split(",") == record["compare"]["methods"]
    assert argv[argv.index("--n-test") + 1] == str(settings["n_test"])
    assert argv[argv.index("--n-signs") + 1] == str(settings["n_signs"])
    assert argv[argv.index("--words") + 1] == ",".join(settings["words"])
