"""Held-out figures of a CLIP on the mini world: clean, blank-note and text-note zero-shot accuracy."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from clipedit.eval.heldout import split_seed
from clipedit.eval.metrics import evaluate_attacks
from clipedit.eval.predictor import Predictor
from clipedit.eval.zeroshot import zero_shot_weights
from clipedit.mini.world import CLASSNAMES, TEMPLATES, attack_set
from clipedit.models.bundle import ModelBundle

HELDOUT_N = 1200
HELDOUT_SEED = split_seed("test")


def heldout_figures(model, preprocess: Callable, tokenizer, n: int = HELDOUT_N, seed: int = HELDOUT_SEED,
                    classnames: Sequence[str] = CLASSNAMES, templates: Sequence[str] = TEMPLATES) -> dict:
    """Accuracy on clean, blank-note and text-note versions of ``n`` held-out scenes, and attack success.

    The notes use held-out styles and name another class; attack success is the share of
    text-note images classified as the written word. Works on a model in training (no disk cache).
    """
    was_training = model.training
    model.eval()
    try:
        bundle = ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name="mini")
        weights = zero_shot_weights(model, tokenizer, list(classnames), list(templates))
        predictor = Predictor(bundle, classnames, templates, weights=weights)
        attacks, labels = attack_set(n, seed)
        result = evaluate_attacks(bundle, predictor, attacks, labels, batch_size=256, progress=False)
    finally:
        model.train(was_training)
    return {"n": n, "seed": seed,
            **{k: round(result[k], 4) for k in ("clean_acc", "blank_acc", "text_acc")},
            "attack_success": round(result["attack_success_rate"], 4)}
