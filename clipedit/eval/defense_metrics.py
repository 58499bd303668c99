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
    out = {"figures": SCENES, **{k: ed.get(k) for k in SCENE_KEYS if k in ed},
           "strata": strata(sets.edited[0], sets.edited[1], ed["predictions"], predictor.classnames)}
    if keep_predictions:
        out["predictions"] = ed["predictions"]["text"]
    if sets.other is not None:
        ot = evaluate_attacks(bundle, predictor, *sets.other, batch_size=batch_size)
        out.update({"other_text_acc": ot["text_acc"], "other_attack_success_rate": ot["attack_success_rate"],
                    "other_clean_acc": ot["clean_acc"], "other_blank_acc": ot["blank_acc"], "n_other": ot["n"],
                    "n_other_text": ot["n_text"], "n_other_word_in_classes": ot["n_word_in_classes"],
                    "other_strata": strata(sets.other[0], sets.other[1], ot["predictions"], predictor.classnames)})
    return out


#: The figures of the defended words' set a defense records: the three accuracies, attack success, their
#: counts (n: scenes; n_clean: distinct clean photos; n_text, n_word_in_classes: the notes each rate is
#: over), and clip_benchmark's acc1 / acc5 / mean_per_class_recall on the text-note images.
SCENE_KEYS = ("clean_acc", "blank_acc", "text_acc", "attack_success_rate", "n", "n_clean", "n_text",
              "n_word_in_classes", "acc1", "acc5", "mean_per_class_recall")


#: (row label, figure, the count it is over; a missing count falls back to ``n``).
ROWS = (("clean", "clean_acc", "n_clean"), ("blank note", "blank_acc", "n"),
        ("text note (defended words)", "text_acc", "n_text"),
        ("attack success (defended words)", "attack_success_rate", "n_word_in_classes"),
        ("text note (other words)", "other_text_acc", "n_other_text"),
        ("attack success (other words)", "other_attack_success_rate", "n_other_word_in_classes"))


KIND_ROWS = ("notes + stickers", "bare text")


def comparison_rows(before: dict, after: dict) -> list[list]:
    """Table rows: metric, before, after, n (the images the figure is over, the same before and after),
    then text-note accuracy by kind (notes + stickers, bare text; a benchmark's: per image kind, see
    ``kind_rows``). An undefined figure (n = 0) is None."""
    if before.get("figures") == BENCHMARK:
        return kind_rows(before, after)
    default_n = before.get("n")
    rows = []
    for label, key, n_key in ROWS:
        if key in before:
            fallback = before.get("n_other") if key.startswith("other_") else default_n
            rows.append([label, before.get(key), after.get(key), before.get(n_key, fallback)])
    for key, words in (("strata", "defended words"), ("other_strata", "other words")):
        for group in KIND_ROWS:  # the headline (notes + stickers) apart from bare text
            if group in before.get(key, {}):
                figure = before[key][group]["text_acc"]
                rows.append([f"text note, {group} ({words})", figure["acc"], after[key][group]["text_acc"]["acc"],
                             figure["n"]])
    return rows
