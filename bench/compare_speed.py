"""Frozen work done once in a compare run, each cached path against its uncached twin, side by side in one
run on one machine (not a test): finetune-local replaying the layers below its site, Defense-Prefix's
learning rates in one batched pass, and a second render of the same scene sets from the scene cache; then
whole ``clipedit compare`` runs in fresh processes: the README's command scaled down with the caches off
(before) and on (now), the same command a second time (from the caches), and a tiny grid on one process
against two gloo ranks under torchrun.

    python -m bench compare_speed [--quick] [--no-compare] [--update-results]

Each pair of in-process timings runs alternately (best of ``--repeat``), so a shared machine's changing
load hits both alike; each row also records how far the cached path's result is from the uncached one's
(weights, tokens, pixels, compare cells), and the structural bound of the two training paths (the share
of a step that replaying or batching can remove at all). Writes runs/bench/compare_speed.json
(bench/results/ with --update-results). See docs/speed.md.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.measure import device, paired_seconds, quick_arguments, ratio_line, save
from clipedit import load_model
from clipedit.core.api import EditRequest
from clipedit.core.nethook import get_module, training_only
from clipedit.core.prompt_edits import placeholder_token_id, prefix_hook, with_placeholder
from clipedit.data.images import to_batches
from clipedit.data.prepare.exemplars import text_exemplars
from clipedit.data.prepare.typo_train import typographic_training_set
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.reading import sign_set
from clipedit.eval.zeroshot import DEFAULT_TEMPLATES, fill_template
from clipedit.methods import defense_prefix as prefix_module
from clipedit.methods import finetune as finetune_module
from clipedit.methods.defense_prefix import DefensePrefixHParams, check_text_tower, train_prefix, train_prefixes
from clipedit.methods.finetune import FinetuneHParams, finetune
from clipedit.settings.defaults import defaults_for

MODEL = "mini"  # the ResNet mini: its default site is layer3.0.conv3
TARGETS = {"finetune_local": 3.0, "defense_prefix": 2.0, "scene_render": 2.0, "compare_second_run": 2.0,
           "compare_ranks": 2.0}
#: The README's compare command (docs/compare.md: 3 words, --n 100 --n-signs 100 --n-train 300 --n-val 100,
#: 49 min) scaled down: one word, fewer scenes, each method at its default settings; --quick keeps only the
#: methods whose work the caches change beyond the scenes (the rewrite: key statistics; finetune-local,
#: Defense-Prefix), leaving out PAINT, finetune-global, edit-any-word and head-ablation-weights, whose fixed
#: schedules would take most of the time on a shared CPU and which gain only the scene cache.
README_SCALED = {True: ["--methods", "edit,defense-prefix,finetune-local", "--words", "ipod", "--seeds", "0",
                        "--n-test", "20", "--n-signs", "20", "--n-train", "20", "--n-val", "20"],
                 False: ["--words", "ipod", "--seeds", "0", "--n-test", "50", "--n-signs", "100", "--n-train", "100",
                         "--n-val", "50"]}
#: The 2-rank run's tiny setting: five units (the unedited model, two of each method's seeds)
TINY = ["--methods", "edit,finetune-local", "--words", "ipod", "--seeds", "0,1", "--n-test", "20", "--n-signs", "20",
        "--n-train", "20", "--n-val", "10"]
TINY_HPARAMS = {"finetune-local": {"steps": 30}}


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
    split = step_split(bundle, layer, attacked, repeat=max(3, repeat))
    return {"layer": layer, "exemplars": attacked.shape[0], "steps": steps, "seconds_uncached": plain,
            "seconds_cached": cached, "ratio": plain / cached, "max_abs_weight_difference": diff, "step": split}


class _Below(Exception):
    """Ends a forward pass where the trained layer would start."""


def step_split(bundle, layer: str, images: torch.Tensor, repeat: int) -> dict[str, float]:
    """Where a training step's time goes (seconds, best of ``repeat``): the whole step (forward and backward,
    only the layer's weight trained), the forward pass below ``layer`` (what replaying saves; nothing below
    it has a gradient to compute), and the rest (``layer`` and everything above it, forward and backward:
    what every step must still run, since the loss is on the tower's output). ``bound`` = whole / rest: the
    most that replaying the layers below can give at this site, whatever the implementation."""
    model = copy.deepcopy(bundle.model).eval()
    site = get_module(model, layer)

    def whole():
        with training_only(model, [site.weight]):
            model.encode_image(images).float().sum().backward()

    def stop(*_):
        raise _Below

    def below():
        handle = site.register_forward_pre_hook(stop)
        try:
            with torch.no_grad():
                model.encode_image(images)
        except _Below:
            pass
        finally:
            handle.remove()

    whole_s, below_s = paired_seconds(whole, below, repeat)
    rest = max(whole_s - below_s, 1e-9)
    return {"whole": whole_s, "below": below_s, "rest": rest, "below_fraction": below_s / whole_s,
            "bound": whole_s / rest}


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
    k = len(DefensePrefixHParams().lrs)
    rows = text_rows(bundle, train, templates, k, max(3, repeat))
    return {"lrs": list(DefensePrefixHParams().lrs), "steps": steps, "batch_size": DefensePrefixHParams().batch_size,
            "n_train": n_train, "seconds_sequential": plain, "seconds_batched": fast, "ratio": plain / fast,
            "seconds_per_step": {"sequential": per_step[0], "batched": per_step[1]},
            "ratio_per_step": per_step[0] / per_step[1], "max_abs_token_difference": diff, "text_tower": rows}


def text_rows(bundle, train, templates: list[str], k: int, repeat: int) -> dict[str, Any]:
    """The text tower's forward and backward on one lr's prompts (one row a class) against K lrs' prompts in one
    batch (best of ``repeat``): a batched step can beat K separate ones only by what the K-row batch costs
    below K times one (``saving`` = K x one / batched)."""
    layer = check_text_tower(bundle)
    classes = len(train.classnames)
    tokens = bundle.tokenizer([fill_template(templates[0], with_placeholder(c)) for c in train.classnames])
    emb = bundle.model.get_submodule(layer)
    saved = {p: p.requires_grad for p in bundle.model.parameters()}
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    try:
        def step(n: int) -> Callable[[], None]:
            vector = torch.zeros(n * classes, 1, emb.embedding_dim, requires_grad=True)

            def go():
                handle = emb.register_forward_hook(prefix_hook(vector, placeholder_token_id(bundle.tokenizer)))
                try:
                    with torch.enable_grad():
                        bundle.encode_texts(tokens.repeat(n, 1)).float().sum().backward()
                finally:
                    handle.remove()
            return go

        one, batched = paired_seconds(step(1), step(k), repeat)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    return {"classes": classes, "context": int(tokens.shape[1]), "k": k, "seconds_one": one,
            "seconds_batched": batched, "saving": k * one / batched}


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


class _WholePass(contextlib.nullcontext):
    """FrozenBelow's uncached twin: every step runs ``run()`` whole (what finetune-local did before)."""

    def __init__(self, model, layer, run, trained=()) -> None:
        super().__init__(run)


def compare_child(mode: str, argv: list[str]) -> None:
    """One ``clipedit compare`` in this process: ``after`` as compare runs now; ``before`` with the three
    caches off, as compare ran before them (scenes rendered at every call, finetune-local's whole pass at
    every step, each Defense-Prefix lr its own run with its own image features)."""
    if mode == "before":
        os.environ["CLIPEDIT_SCENE_CACHE"] = "0"
        finetune_module.FrozenBelow = _WholePass
        together = prefix_module.train_prefixes

        def one_after_another(bundle, train, templates, lrs, *rest):
            return [together(bundle, train, templates, (lr,), *rest)[0] for lr in lrs]

        prefix_module.train_prefixes = one_after_another
    from clipedit import cli

    cli.main(argv)


def _compare(mode: str, argv: list[str], cache: Path, ranks: int = 1) -> float:
    """Wall seconds of one compare run in a fresh process (``ranks`` > 1: under torchrun, gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CLIPEDIT_CACHE": str(cache)}
    env.pop("CLIPEDIT_SCENE_CACHE", None)
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "clipedit", *argv]
    else:
        cmd = [sys.executable, "-c", "import sys; from bench.compare_speed import compare_child; "
               "compare_child(sys.argv[1], sys.argv[2:])", mode, *argv]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"compare ({mode}, {ranks} rank(s)) failed: {done.stderr[-3000:]}")
    return wall


def _record(out: Path) -> dict[str, Any]:
    return json.loads((out / "compare.json").read_text())["compare"]


def compare_runs(settings: list[str]) -> dict[str, Any]:
    """The README's compare command scaled down to ``settings`` (every method at its default settings), three
    times in fresh processes: ``before`` (the caches off, an empty statistics cache), ``first`` (as compare runs
    now, an empty cache), ``second`` (the same command again, the caches the first filled)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        load = [os.getloadavg()[0]]
        walls = {}
        for mode, cache in (("before", "cache-before"), ("first", "cache"), ("second", "cache")):
            walls[mode] = _compare("before" if mode == "before" else "after",
                                   ["compare", "--model", MODEL, *settings, "--out", str(tmp / mode)], tmp / cache)
            load.append(os.getloadavg()[0])
        records = {mode: _record(tmp / mode) for mode in walls}
    same = {mode: records[mode]["raw"] == records["first"]["raw"]
            and records[mode]["cells"] == records["first"]["cells"] for mode in ("before", "second")}
    per_method = {mode: {m: round(v["total"], 2) for m, v in records[mode]["seconds"].items()} for mode in walls}
    return {"command": f"clipedit compare --model {MODEL} {' '.join(settings)}", "seconds": walls,
            "seconds_per_method": per_method, "ratio_second": walls["first"] / walls["second"],
            "ratio_before_after": walls["before"] / walls["first"], "same_cells_as_first": same,
            "load_average_1min": load}


def compare_ranks(settings: list[str], ranks: int = 2) -> dict[str, Any]:
    """One compare on a tiny setting, one process against ``ranks`` gloo ranks under torchrun, both reading the
    scene cache that a first one-process run fills (that run is not counted)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        load = [os.getloadavg()[0]]
        argv = lambda name: ["compare", "--model", MODEL, *settings, "--out", str(tmp / name)]  # noqa: E731
        hp = tmp / "hparams.json"
        hp.write_text(json.dumps(TINY_HPARAMS))
        walls = {"warm-up": _compare("after", [*argv("warm"), "--hparams", str(hp)], tmp / "cache")}
        walls["one"] = _compare("after", [*argv("one"), "--hparams", str(hp)], tmp / "cache")
        load.append(os.getloadavg()[0])
        walls["ranks"] = _compare("after", [*argv("ranks"), "--hparams", str(hp)], tmp / "cache", ranks=ranks)
        load.append(os.getloadavg()[0])
        one, many = _record(tmp / "one"), _record(tmp / "ranks")
    return {"command": f"clipedit compare --model {MODEL} {' '.join(settings)} --hparams {json.dumps(TINY_HPARAMS)}",
            "ranks": ranks, "seconds": walls, "ratio": walls["one"] / walls["ranks"],
            "same_cells": one["raw"] == many["raw"] and one["cells"] == many["cells"], "load_average_1min": load,
            "cores_visible": os.cpu_count()}


def run(quick: bool = False, repeat: int = 2, compare: bool = True) -> dict[str, Any]:
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
    save("compare_speed", {"model": MODEL, "rows": rows, "partial": True}, quick)  # kept if a compare run fails
    if compare:
        rows["compare_runs"] = compare_runs(README_SCALED[quick])
        save("compare_speed", {"model": MODEL, "rows": rows, "partial": True}, quick)
        rows["compare_ranks"] = compare_ranks(TINY)
    ratios = {"finetune_local": rows["finetune_local"]["ratio"], "defense_prefix": rows["defense_prefix"]["ratio"],
              "scene_render": rows["scene_render"]["ratio"]}
    if compare:
        ratios["compare_second_run"] = rows["compare_runs"]["ratio_second"]
        ratios["compare_ranks"] = rows["compare_ranks"]["ratio"]
    result = {"model": MODEL, "rows": rows, "targets": TARGETS, "ratios": ratios,
              "met": {k: ratios[k] >= TARGETS[k] for k in ratios}}
    f, d, s = rows["finetune_local"], rows["defense_prefix"], rows["scene_render"]
    print(f"{MODEL}, {device()}, best of {repeat} (each pair alternately):")
    print(f"  finetune-local {f['layer']}, {f['exemplars']} exemplars x {f['steps']} steps: "
          f"{f['seconds_uncached']:.2f} s every step's full pass, {f['seconds_cached']:.2f} s replayed "
          f"(weights differ by {f['max_abs_weight_difference']:.1e} at most)")
    print("  " + ratio_line("finetune-local, uncached / cached", f["ratio"], TARGETS["finetune_local"]))
    st = f["step"]
    print(f"  finetune-local a step: {1e3 * st['whole']:.0f} ms whole, {1e3 * st['below']:.0f} ms of it the forward "
          f"pass below the site ({100 * st['below_fraction']:.0f}%), {1e3 * st['rest']:.0f} ms the site and above "
          "(forward and backward, run at every step)")
    print("  " + ratio_line("finetune-local, the most replaying can give (whole / rest)", st["bound"]))
    print(f"  defense-prefix lrs {d['lrs']}, {d['steps']} steps, {d['n_train']} scenes: "
          f"{d['seconds_sequential']:.2f} s one after another, {d['seconds_batched']:.2f} s batched "
          f"(tokens differ by {d['max_abs_token_difference']:.1e} at most)")
    print("  " + ratio_line("defense-prefix, sequential / batched", d["ratio"], TARGETS["defense_prefix"]))
    print(f"  defense-prefix a step: {1e3 * d['seconds_per_step']['sequential']:.0f} ms for the lrs one after another, "
          f"{1e3 * d['seconds_per_step']['batched']:.0f} ms batched")
    print("  " + ratio_line("defense-prefix a step, sequential / batched", d["ratio_per_step"]))
    tt = d["text_tower"]
    print(f"  text tower forward+backward: {1e3 * tt['seconds_one']:.1f} ms on {tt['classes']} prompts (one lr), "
          f"{1e3 * tt['seconds_batched']:.1f} ms on {tt['k']} x {tt['classes']} (batched)")
    print("  " + ratio_line(f"text tower, {tt['k']} x one / batched (what batching can save a step)", tt["saving"]))
    print(f"  scene sets ({s['pictures']} pictures: {', '.join(s['words'])} x validation/test at {s['n_per_set']}, "
          f"signs, {s['n_train']} training scenes): {s['seconds_rendered']:.2f} s rendered, "
          f"{s['seconds_from_cache']:.2f} s from the cache (identical: {s['identical']})")
    print("  " + ratio_line("second render, uncached / cached", s["ratio"], TARGETS["scene_render"]))
    if compare:
        c, r = rows["compare_runs"], rows["compare_ranks"]
        w = c["seconds"]
        print(f"  {c['command']} (the README's command scaled down), fresh processes: {w['before']:.0f} s with the "
              f"caches off (before), {w['first']:.0f} s now with an empty cache, {w['second']:.0f} s again "
              f"(same cells: {c['same_cells_as_first']}; load {', '.join(f'{x:.1f}' for x in c['load_average_1min'])})")
        print("  " + ratio_line("README compare scaled down, before / now", c["ratio_before_after"]))
        print("  " + ratio_line("a second compare run, first / second", c["ratio_second"],
                                TARGETS["compare_second_run"]))
        print(f"  {r['command']}: {r['seconds']['one']:.0f} s one process, {r['seconds']['ranks']:.0f} s "
              f"{r['ranks']} gloo ranks (same cells: {r['same_cells']}; {r['cores_visible']} cores, load "
              f"{', '.join(f'{x:.1f}' for x in r['load_average_1min'])})")
        print("  " + ratio_line(f"compare, 1 rank / {r['ranks']} ranks", r["ratio"], TARGETS["compare_ranks"]))
    save("compare_speed", result, quick)
    return result


def add_arguments(ap) -> None:
    """``--quick``, ``--repeat``, ``--no-compare`` and ``--update-results``."""
    quick_arguments(ap)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each path (the best is kept)")
    ap.add_argument("--no-compare", action="store_true",
                    help="leave out the whole compare runs (second run, ranks, the README command scaled down)")


def main(args) -> None:
    run(args.quick, args.repeat, compare=not args.no_compare)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
