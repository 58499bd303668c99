"""Throughput of the audit (zero-shot evaluation of clean / blank-note / text-note images) against a
plain ``encode_image`` loop over the same images; a first run builds the zero-shot head (text
encoding), a second run finds it in the cache and encodes no text.

    python -m bench eval_speed [--quick]

Writes (with --update-results) bench/results/eval_speed.json.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from bench.measure import device, paired_seconds, quick_arguments, ratio_line, save, seconds
from bench.stats_speed import encode_loop
from clipedit import load_model
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.metrics import attack_image_sets, evaluate_attacks
from clipedit.eval.predictor import make_predictor
from clipedit.mini.world import MiniWorld
from clipedit.models.bundle import ModelBundle

TARGET = 0.9
BATCH = 64
REPEAT = 3  # alternate runs of each; the best counts


class _CountingTextEncoder:
    """Wraps ``model.encode_text`` to count the prompts it encodes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.inner, self.prompts = model, model.encode_text, 0

    def __enter__(self) -> _CountingTextEncoder:
        def counted(tokens, *args, **kwargs):
            self.prompts += len(tokens)
            return self.inner(tokens, *args, **kwargs)

        self.model.encode_text = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.model.encode_text  # the instance attribute; the class method shows through again


def audit(bundle: ModelBundle, sets) -> dict[str, Any]:
    predictor = make_predictor(bundle, sets.classnames)
    return evaluate_attacks(bundle, predictor, *sets.edited, batch_size=BATCH, progress=False)


def measure(spec: str, n: int) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_model(spec, device=device())
    # the mini world's scenes serve every model (its preprocessing resizes them)
    sets = world_eval_sets(bundle.world or MiniWorld(), ["ipod"], n)
    images = [im for group in attack_image_sets(sets.edited[0]).values() for im in group]
    encode_loop(bundle, images[:BATCH])  # warm-up
    with tempfile.TemporaryDirectory() as cache:
        old = os.environ.get("CLIPEDIT_CACHE")
        os.environ["CLIPEDIT_CACHE"] = cache
        try:
            with _CountingTextEncoder(bundle.model) as first:
                t_first, _ = seconds(lambda: audit(bundle, sets))
            with _CountingTextEncoder(bundle.model) as second:
                t_plain, t_second = paired_seconds(lambda: encode_loop(bundle, images), lambda: audit(bundle, sets),
                                                   repeat=REPEAT)
        finally:
            if old is None:
                del os.environ["CLIPEDIT_CACHE"]
            else:
                os.environ["CLIPEDIT_CACHE"] = old
    k = len(images)
    return {"model": spec, "n_images": k, "encode_image_images_per_s": k / t_plain,
            "audit_first_images_per_s": k / t_first, "audit_cached_head_images_per_s": k / t_second,
            "prompts_encoded": {"first": first.prompts, "cached_head": second.prompts // REPEAT},
            "ratio_first": t_plain / t_first, "ratio_cached_head": t_plain / t_second}


def run(quick: bool = False) -> dict[str, Any]:
    configs = [("mini", 100 if quick else 400)]
    if not quick:
        configs.append(("ViT-B-32:none", 16))
    rows = [measure(spec, n) for spec, n in configs]
    result = {"rows": rows, "target": TARGET, "met": all(r["ratio_cached_head"] >= TARGET for r in rows)}
    print("audit (clean + blank + text notes) vs encode_image over the same images:")
    for r in rows:
        print(f"  {r['model']}, {r['n_images']} images: encode_image {r['encode_image_images_per_s']:.1f}/s, "
              f"audit {r['audit_first_images_per_s']:.1f}/s (first: {r['prompts_encoded']['first']} prompts "
              f"encoded), {r['audit_cached_head_images_per_s']:.1f}/s (cached head: "
              f"{r['prompts_encoded']['cached_head']} prompts encoded)")
        print("  " + ratio_line("  audit (cached head) / encode_image", r["ratio_cached_head"], TARGET))
        print("  " + ratio_line("  audit (first run, builds the head) / encode_image", r["ratio_first"]))
    save("eval_speed", result, quick)
    return result


add_arguments = quick_arguments


def main(args) -> None:
    run(args.quick)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
