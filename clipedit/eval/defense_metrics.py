"""Before/after figures of a defense on held-out sets: clean, blank note, defended and other words."""
from __future__ import annotations

from typing import Any

from clipedit.data.benchmarks import LoadedBenchmark
from clipedit.eval.benchmark_metrics import evaluate_benchmark, kind_rows
from clipedit.eval.heldout import EvalSets
from clipedit.eval.metrics import evaluate_attacks
from clipedit.eval.predictor import Predictor
from clipedit.eval.results import drop_predictions
from clipedit.eval.strata import strata
from clipedit.models.bundle import ModelBundle

#: The ``figures`` tag of evaluate_defense's result: held-out scenes (clean / blank / text note of the same
#: scene, defended and other words) or a benchmark's photos (per image kind, ``evaluate_benchmark``).
SCENES, BENCHMARK = "scenes", "benchmark"


def evaluate_defense(bundle: ModelBundle, predictor: Predictor, sets: EvalSets | LoadedBenchmark,
                     batch_size: int = 128, keep_predictions: bool = False) -> dict[str, Any]:
    """clean / blank-note accuracy, text-note accuracy and attack success for edited and other words
    (a benchmark: :func:`~clipedit.eval.benchmark_metrics.evaluate_benchmark`'s figures on its photos).
    ``keep_predictions``: add ``predictions``, the class predicted for each text-note image of the
    defended words' set (or each benchmark image), for a report."""
    if isinstance(sets, LoadedBenchmark):
        out = {"figures": BENCHMARK, **evaluate_benchmark(bundle, predictor, sets, batch_size=batch_size)}
        return out if keep_predictions else drop_predictions(out)
    ed = evaluate_attacks(bundle, predictor, *sets.edited, batch_size=batch_size)
    out = {"figures": SCENES, "clean_acc": ed["clean_acc"], "blank_acc": ed["blank_acc"],
           "text_acc": ed["text_acc"], "attack_success_rate": ed["attack_success_rate"], "n": ed["n"],
           "strata": strata(sets.edited[0], sets.edited[1], ed["predictions"], predictor.classnames)}
    if keep_predictions:
        out["predictions"] = ed["predictions"]["text"]
    if sets.other is not None:
        ot = evaluate_attacks(bundle, predictor, *sets.other, batch_size=batch_size)
        out.update({"other_text_acc": ot["text_acc"], "other_attack_success_rate": ot["attack_success_rate"],
                    "other_clean_acc": ot["clean_acc"], "other_blank_acc": ot["blank_acc"], "n_other": ot["n"],
                    "other_strata": strata(sets.other[0], sets.other[1], ot["predictions"], predictor.classnames)})
    return out


ROWS = (("clean", "clean_acc"), ("blank note", "blank_acc"), ("text note (defended words)", "text_acc"),
        ("attack success (defended words)", "attack_success_rate"),
        ("text note (other words)", "other_text_acc"), ("attack success (other words)", "other_attack_success_rate"))


KIND_ROWS = ("notes + stickers", "bare text")


def comparison_rows(before: dict, after: dict) -> list[list]:
    """Table rows: metric, before, after, then text-note accuracy by kind (notes + stickers, bare text;
    a benchmark's: per image kind, see ``kind_rows``)."""
    if before.get("figures") == BENCHMARK:
        return [row[:3] for row in kind_rows(before, after)]
    rows = [[label, before.get(key), after.get(key)] for label, key in ROWS if key in before]
    for key, words in (("strata", "defended words"), ("other_strata", "other words")):
        for group in KIND_ROWS:  # the headline (notes + stickers) apart from bare text
            if group in before.get(key, {}):
                rows.append([f"text note, {group} ({words})", before[key][group]["text_acc"]["acc"],
                             after[key][group]["text_acc"]["acc"]])
    return rows
