"""Frozen work done once in a compare run, each cached path against its uncached twin, side by side in one
run on one machine (not a test): finetune-local replaying the layers below its site, Defense-Prefix's
learning rates in one batched pass, and a second render of the same scene sets from the scene cache.

    python -m bench compare_speed [--quick] [--update-results]

Each pair runs alternately (best of ``--repeat``), so a shared machine's changing load hits both alike;
each row also records how far the cached path's result is from the uncached one's (weights, tokens,
pixels). Writes runs/bench/compare_speed.json (bench/results/ with --update-results). See docs/speed.md.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import numpy as np
import torch

from bench.measure import device, paired_seconds, quick_arguments, ratio_line, save
from clipedit import load_model
from clipedit.core.api import EditRequest
from clipedit.core.nethook import get_module
from clipedit.core.prompt_edits import placeholder_token_id
from clipedit.data.images import to_batches
from clipedit.data.prepare.exemplars import text_exemplars
from clipedit.data.prepare.typo_train import typographic_training_set
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.reading import sign_set
from clipedit.eval.zeroshot import DEFAULT_TEMPLATES
from clipedit.methods.defense_prefix import DefensePrefixHParams, check_text_tower, train_prefix, train_prefixes
from clipedit.methods.finetune import FinetuneHParams, finetune
from clipedit.settings.defaults import defaults_for

MODEL = "mini"  # the ResNet mini: its default site is layer3.0.conv3
TARGETS = {"finetune_local": 3.0, "defense_prefix": 2.0, "scene_render": 2.0}


def finetune_local(bundle, steps: int, renders: int, repeat: int) -> dict[str, Any]:
    """finetune-local on the model's default site and exemplar count: replayed vs every step's full pass."""
    layer = defaults_for(bundle).layer
    attacks = text_exemplars(bundle, "ipod", renders, 0)
    attacked = torch.cat(list(to_batches([a.attacked for a in attacks], bundle.preprocess, 256)))
    target = torch.cat(list(to_batches([a.blank for a in attacks], bundle.preprocess, 256)))
    request = EditRequest(attacked, target, torch.ones(attacked.shape[0], *attacked.shape[2:]))
    hp = FinetuneHParams(steps=steps)
    models = {}

    def run(cached: bool):
        model = copy.deepcopy(bundle.model)
        finetune(model, [get_module(model, layer).weight], request, hp, forward=model.encode_image,
                 frozen_below=layer if cached else None)
        models[cached] = model

    plain, cached = paired_seconds(lambda: run(False), lambda: run(True), repeat)
    weights = [get_module(models[k], layer).weight.detach() for k in (True, False)]
    diff = float((weights[0] - weights[1]).abs().max())
    return {"layer": layer, "exemplars": attacked.shape[0], "steps": steps, "seconds_uncached": plain,
            "seconds_cached": cached, "ratio": plain / cached, "max_abs_weight_difference": diff}


def defense_prefix(bundle, steps: int, n_train: int, repeat: int) -> dict[str, Any]:
    """The published three learning rates: one batched pass vs three runs one after another, at ``steps``
    and at one step (the difference: the cost of a step, which dominates at the published 2480 steps; the
    set-up, e.g. the training split's image features, is paid once instead of once per lr)."""
    layer, token = check_text_tower(bundle), placeholder_token_id(bundle.tokenizer)
    train = typographic_training_set(bundle, n_train, 0)
    templates = list(bundle.templates or DEFAULT_TEMPLATES)
    out: dict[str, Any] = {}

    def timed(n_steps: int) -> tuple[float, float]:
        hp = DefensePrefixHParams(steps=n_steps, n_train=n_train)

        def sequential():
            out["sequential"] = [train_prefix(bundle, train, templates, lr, hp, layer, token) for lr in hp.lrs]

        def batched():
            out["batched"] = train_prefixes(bundle, train, templates, hp.lrs, hp, layer, token)

        return paired_seconds(sequential, batched, repeat)

    one = timed(1)
    plain, fast = timed(steps)
    diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(out["sequential"], out["batched"]))
    per_step = ((plain - one[0]) / (steps - 1), (fast - one[1]) / (steps - 1))
    return {"lrs": list(DefensePrefixHParams().lrs), "steps": steps, "batch_size": DefensePrefixHParams().batch_size,
            "n_train": n_train, "seconds_sequential": plain, "seconds_batched": fast, "ratio": plain / fast,
            "seconds_per_step": {"sequential": per_step[0], "batched": per_step[1]},
            "ratio_per_step": per_step[0] / per_step[1], "max_abs_token_difference": diff}


def scene_render(bundle, words: list[str], n: int, n_train: int, repeat: int) -> dict[str, Any]:
    """What a compare run renders per seed (validation and test sets of each word, signs, the training
    split): a second time from the scene cache vs rendered again with the cache off."""
    world = bundle.world
    out: dict[str, Any] = {}

    def sets():
        return ([world_eval_sets(world, [w], n, split) for w in words for split in ("validation", "test")],
                [sign_set(world, n, split) for split in ("validation", "test")],
                typographic_training_set(bundle, n_train, 0))

    with tempfile.TemporaryDirectory() as cache:
        saved = {k: os.environ.get(k) for k in ("CLIPEDIT_CACHE", "CLIPEDIT_SCENE_CACHE")}
        os.environ["CLIPEDIT_CACHE"] = cache
        try:
            os.environ["CLIPEDIT_SCENE_CACHE"] = "1"
            out["first"] = sets()  # fills the cache

            def render():
                os.environ["CLIPEDIT_SCENE_CACHE"] = "0"
                out["rendered"] = sets()

            def read():
                os.environ["CLIPEDIT_SCENE_CACHE"] = "1"
                out["read"] = sets()

            plain, fast = paired_seconds(render, read, repeat)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    (sets_r, signs_r, train_r), (sets_c, signs_c, train_c) = out["rendered"], out["read"]
    same = torch.equal(train_r.attacked, train_c.attacked) and all(
        np.array_equal(np.asarray(a.attacked), np.asarray(b.attacked))
        for x, y in zip(sets_r, sets_c) for a, b in zip(x.edited[0], y.edited[0])) and all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for x, y in zip(signs_r, signs_c) for a, b in zip(x.images, y.images))
    scenes = sum(len(s.edited[0]) + (len(s.other[0]) if s.other else 0) for s in sets_r) + n_train \
        + sum(len(s.images) for s in signs_r)
    return {"words": words, "n_per_set": n, "n_train": n_train, "pictures": scenes, "seconds_rendered": plain,
            "seconds_from_cache": fast, "ratio": plain / fast, "identical": bool(same)}


def run(quick: bool = False, repeat: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_model(MODEL, device=device())
    rows = {
        "finetune_local": finetune_local(bundle, steps=20, renders=64 if quick else 128,
                                         repeat=repeat),
        "defense_prefix": defense_prefix(bundle, steps=21 if quick else 41, n_train=64 if quick else 128,
                                         repeat=repeat),
        "scene_render": scene_render(bundle, ["ipod"] if quick else ["ipod", "pizza"], n=50,
                                     n_train=100 if quick else 200, repeat=repeat),
    }
    result = {"model": MODEL, "rows": rows, "targets": TARGETS,
              "met": {k: rows[k]["ratio"] >= t for k, t in TARGETS.items()}}
    f, d, s = rows["finetune_local"], rows["defense_prefix"], rows["scene_render"]
    print(f"{MODEL}, {device()}, best of {repeat} (each pair alternately):")
    print(f"  finetune-local {f['layer']}, {f['exemplars']} exemplars x {f['steps']} steps: "
          f"{f['seconds_uncached']:.2f} s every step's full pass, {f['seconds_cached']:.2f} s replayed "
          f"(weights differ by {f['max_abs_weight_difference']:.1e} at most)")
    print("  " + ratio_line("finetune-local, uncached / cached", f["ratio"], TARGETS["finetune_local"]))
    print(f"  defense-prefix lrs {d['lrs']}, {d['steps']} steps, {d['n_train']} scenes: "
          f"{d['seconds_sequential']:.2f} s one after another, {d['seconds_batched']:.2f} s batched "
          f"(tokens differ by {d['max_abs_token_difference']:.1e} at most)")
    print("  " + ratio_line("defense-prefix, sequential / batched", d["ratio"], TARGETS["defense_prefix"]))
    print(f"  defense-prefix a step: {1e3 * d['seconds_per_step']['sequential']:.0f} ms for the lrs one after another, "
          f"{1e3 * d['seconds_per_step']['batched']:.0f} ms batched")
    print("  " + ratio_line("defense-prefix a step, sequential / batched", d["ratio_per_step"]))
    print(f"  scene sets ({s['pictures']} pictures: {', '.join(s['words'])} x validation/test at {s['n_per_set']}, "
          f"signs, {s['n_train']} training scenes): {s['seconds_rendered']:.2f} s rendered, "
          f"{s['seconds_from_cache']:.2f} s from the cache (identical: {s['identical']})")
    print("  " + ratio_line("second render, uncached / cached", s["ratio"], TARGETS["scene_render"]))
    save("compare_speed", result, quick)
    return result


def add_arguments(ap) -> None:
    """``--quick``, ``--repeat`` and ``--update-results``."""
    quick_arguments(ap)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each path (the best is kept)")


def main(args) -> None:
    run(args.quick, args.repeat)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
