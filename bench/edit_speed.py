"""Cost of the edit on the bundled mini CLIP: the closed form against the paper's optimizer and the
fine-tuning baselines, on the same exemplars and key statistics, with the defended-word accuracy each
reaches on the held-out test split.

    python -m bench edit_speed [--quick]

The optimizer is run for ``--steps`` steps (its accuracy is measured there) and its cost for the
paper's 20000 steps is extrapolated from the time per step; the fine-tuning baselines run 40 (quick:
20) of their 200 steps and their time is scaled to 200. Writes (with --update-results) bench/results/edit_speed.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
from typing import Any

from bench.measure import add_update_option, device, ratio_line, results_dir, save, seconds, update_results
from clipedit import load_model
from clipedit.core import RewriteHParams, apply_edit, compute_rewrite, key_statistics
from clipedit.data.images import to_batches
from clipedit.data.prepare.exemplars import request_from_attacks
from clipedit.defenses.typographic import text_exemplars
from clipedit.eval.defense_metrics import evaluate_defense
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.methods.finetune import FinetuneHParams
from clipedit.methods.registry import run_defense
from clipedit.methods.spec import DefenseData
from clipedit.models.bundle import ModelBundle
from clipedit.settings.resolve import resolve_config

log = logging.getLogger(__name__)

WORD = "ipod"
PAPER_STEPS = RewriteHParams().steps  # 20000
FINETUNE_STEPS_RUN = {True: 20, False: 40}  # quick, full: of the baselines' 200 (time scaled to 200)
TARGET = 1000.0


def _scores(bundle: ModelBundle, predictor, sets) -> dict[str, Any]:
    out = evaluate_defense(bundle, predictor.with_bundle(bundle), sets)
    return {k: out.get(k) for k in ("clean_acc", "blank_acc", "text_acc", "other_text_acc")}


def _copy(bundle: ModelBundle) -> ModelBundle:
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def run(quick: bool = False, steps: int | None = None) -> dict[str, Any]:
    steps = steps or (20 if quick else 300)
    n_eval = 100 if quick else 300
    base = load_model("mini", device=device())
    config = resolve_config(base)
    hp = dataclasses.replace(config.hparams, layer=config.sites[0])  # mini's one default site
    sets = world_eval_sets(base.world, [WORD], n_eval, split="test")
    predictor = make_predictor(base, sets.classnames)
    exemplars = text_exemplars(base, WORD, config.renders, config.seed)
    request = request_from_attacks(base.preprocess, exemplars, use_text_mask=config.mask == "text")
    reference = base.world.reference_images(config.n_reference)
    batches = lambda: to_batches(reference, base.preprocess, 64)  # noqa: E731
    t_stats, stats = seconds(lambda: key_statistics(base.model, hp.layer, batches, forward=base.encode_images))
    rows: dict[str, dict[str, Any]] = {"unedited": {"seconds": 0.0, **_scores(base, predictor, sets)}}

    def edit_with(hparams: RewriteHParams) -> tuple[float, dict]:
        t, edit = seconds(lambda: compute_rewrite(base.model, request, hparams, stats, forward=base.encode_images),
                          repeat=2 if hparams.solver == "closed-form" else 1)
        bundle = _copy(base)
        apply_edit(bundle.model, edit)
        return t, _scores(bundle, predictor, sets)

    log.info("key statistics %.1f s; editing", t_stats)
    t_cf, rows["closed form"] = edit_with(hp)
    rows["closed form"]["seconds"] = t_cf
    t_opt, scores = edit_with(dataclasses.replace(hp, solver="optimize", steps=steps))
    per_step = t_opt / steps
    log.info("optimizer %.3f s/step", per_step)
    rows[f"optimizer, {steps} steps"] = {"seconds": t_opt, "seconds_per_step": per_step, **scores}
    rows[f"optimizer, {PAPER_STEPS} steps (extrapolated)"] = {"seconds": per_step * PAPER_STEPS}
    default_ft = FinetuneHParams()
    ft = dataclasses.replace(default_ft, steps=FINETUNE_STEPS_RUN[quick])
    for method in ("finetune-local", "finetune-global"):
        log.info("%s", method)
        bundle = _copy(base)
        tuned = resolve_config(base, {"method": method, "hparams": ft})
        data = DefenseData.of([WORD], request)
        t, _ = seconds(lambda b=bundle, c=tuned, d=data: run_defense(b, d, c, lambda layer: stats))
        # fewer steps than the default are run, and the time scaled to the default's (accuracy as run)
        rows[method] = {"seconds": t * default_ft.steps / ft.steps, "steps_run": ft.steps,
                        **_scores(bundle, predictor, sets)}

    ratios = {
        "optimizer (paper's 20000 steps) / closed form": per_step * PAPER_STEPS / t_cf,
        "optimizer (paper's 20000 steps) / (closed form + key statistics)": per_step * PAPER_STEPS / (t_cf + t_stats),
        f"optimizer ({steps} steps run) / closed form": t_opt / t_cf,
        "finetune-local / closed form": rows["finetune-local"]["seconds"] / t_cf,
        "finetune-global / closed form": rows["finetune-global"]["seconds"] / t_cf,
    }
    cf_acc, opt_acc = rows["closed form"]["text_acc"], scores["text_acc"]
    result = {"model": "mini", "word": WORD, "layer": hp.layer, "rank": hp.rank, "renders": config.renders,
              "n_eval": n_eval, "split": "test", "optimizer_steps_run": steps, "key_statistics_seconds": t_stats,
              "rows": rows, "ratios": ratios, "target": TARGET,
              "closed_form_at_least_as_accurate": cf_acc >= opt_acc,
              "met": ratios["optimizer (paper's 20000 steps) / closed form"] >= TARGET and cf_acc >= opt_acc}
    _print(result)
    save("edit_speed", result, quick)
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"edit speed: mini CLIP, {result['layer']}, rank {result['rank']}, {result['renders']} renders, "
          f"'{result['word']}', {result['n_eval']} test scenes")
    print(f"  {'':<44} {'seconds':>10} {'text acc':>9} {'other':>7} {'clean':>7}")
    for name, row in result["rows"].items():
        fmt = lambda v: f"{v:7.3f}" if isinstance(v, float) else f"{'-':>7}"  # noqa: E731
        print(f"  {name:<44} {row['seconds']:10.2f} {fmt(row.get('text_acc')):>9} "
              f"{fmt(row.get('other_text_acc'))} {fmt(row.get('clean_acc'))}")
    print(f"  key statistics ({result['key_statistics_seconds']:.2f} s) are shared by every method")
    ratios = list(result["ratios"].items())
    print("  " + ratio_line(ratios[0][0], ratios[0][1], TARGET))
    for label, value in ratios[1:]:
        print("  " + ratio_line(label, value))
    print(f"  closed form at least as accurate on the defended word: {result['closed_form_at_least_as_accurate']}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps to run (default 300, quick 20)")
    add_update_option(ap)


def main(args: argparse.Namespace) -> None:
    update_results(args.update_results)
    run(args.quick, args.steps)
    print(f"results in {results_dir()}/")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
