"""Which sets a defense is evaluated on, and its figures: the CLI's before/after, from Python too.

    figures = clipedit.evaluate(bundle, ["ipod"], EvalOptions(n=200))      # the model as it is now
    defense = clipedit.defend(bundle, "ipod", evaluate=EvalOptions(n=200))  # before and after
    defense.figures["before"]["text_acc"], defense.figures["after"]["text_acc"]

The sets, in order of preference: a published benchmark (``data="KIND:PATH"``), an ImageFolder to
render notes on (``data=DIR``), else the model's world's held-out scenes (test split).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clipedit.data.benchmarks import LoadedBenchmark, load_benchmark_images, looks_like_spec, read_benchmark
from clipedit.errors import ClipeditError
from clipedit.eval.defense_metrics import evaluate_defense
from clipedit.eval.heldout import EvalSets, folder_eval_sets, world_eval_sets
from clipedit.eval.predictor import Predictor, make_predictor
from clipedit.models.bundle import ModelBundle

#: Held-out scenes per set of an evaluation (``EvalOptions.n``, ``--n-eval``, compare's ``n_test``).
N_EVAL = 1000

@dataclass
class EvalOptions:
    """Where and how much to evaluate.

    Attributes:
        data: ``KIND:PATH`` (a benchmark as published), an ImageFolder directory, or None (the
            model's world's held-out scenes).
        classes: class names for ``data`` (default: the benchmark's or the folder names).
        n: held-out scenes per set (a world's).
        keep_predictions: keep the per-image predictions (for a report).
    """

    data: Optional[str] = None
    classes: Optional[Sequence[str]] = None
    n: int = N_EVAL
    keep_predictions: bool = False


def evaluation_sets(bundle: ModelBundle, words: Sequence[str], options: EvalOptions) -> EvalSets | LoadedBenchmark:
    """The sets ``options`` name for ``bundle`` and the defended ``words`` (see the module docstring)."""
    names = list(options.classes) if options.classes is not None else None
    if options.data is not None and looks_like_spec(options.data):
        return load_benchmark_images(read_benchmark(options.data), names)
    if options.data is not None:
        # classes: --classes, else the folder names (as audit does), never the model's own class list
        return folder_eval_sets(Path(options.data), list(words), names, per_image=1)
    if bundle.world is not None and bundle.world.classnames:
        if names is not None:
            raise ClipeditError(f"--classes goes with --data: {bundle.world.name}'s held-out scenes have "
                                "their own classes")
        return world_eval_sets(bundle.world, list(words), options.n)
    raise ClipeditError(f"no evaluation data for {bundle.name}: pass --data DIR (or --no-eval)")


@dataclass
class Evaluation:
    """Fixed sets and zero-shot head, to score a model before and after a defense on the same images."""

    sets: EvalSets | LoadedBenchmark
    predictor: Predictor
    keep_predictions: bool = False

    @classmethod
    def of(cls, bundle: ModelBundle, words: Sequence[str], options: Optional[EvalOptions] = None) -> Evaluation:
        options = options or EvalOptions()
        sets = evaluation_sets(bundle, words, options)
        return cls(sets, make_predictor(bundle, sets.classnames), options.keep_predictions)

    def __call__(self, bundle: ModelBundle) -> dict[str, Any]:
        """The figures of ``bundle`` as it is now (:func:`~clipedit.eval.defense_metrics.evaluate_defense`)."""
        return evaluate_defense(bundle, self.predictor.with_bundle(bundle), self.sets,
                                keep_predictions=self.keep_predictions)


def evaluate(bundle: ModelBundle, words: str | Sequence[str], options: Optional[EvalOptions] = None
             ) -> dict[str, Any]:
    """The defense figures of ``bundle`` as it is now, on the sets ``options`` name (what ``clipedit defend``
    prints before and after)."""
    words = [words] if isinstance(words, str) else list(words)
    return Evaluation.of(bundle, words, options)(bundle)
