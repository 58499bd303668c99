"""The rewrite beside the defenses a user would pick today, on a bundled mini CLIP, on the test split.

    python bench/peers.py [--model mini|mini-vit] [--n 300] [--n-signs 120] [--word ipod] [--out …]

Rows: unedited; edit (the default from defaults.json: mini visual.layer3.0.conv3, rank 32; mini-vit the
multi-site edit of blocks 0-2's attn.v_proj and block 0's mlp.c_proj); edit (auto: the sweep's pick on the
validation split); head-ablation (Dyslexify-style, training-free); paint (fine-tune + weight
interpolation, α chosen on validation); finetune-local; finetune-global. All use the same exemplars
(128 renders of the word) and are scored on the same test scenes: the defended word's notes, other
words' notes (unseen), clean, blank note, and signs (reading kept: written class names alone).
"Seconds to defend" includes each method's own tuning on validation (the sweep for edit (auto), the
greedy search for head-ablation, the α grid for paint). Also writes a gain-vs-cost plot (test split).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time
from pathlib import Path

import torch

from clipedit import load_model
from clipedit.defenses.config import DefenseConfig
from clipedit.defenses.resolve import resolve_config
from clipedit.defenses.selection import gains, heldout_data, score
from clipedit.defenses.sweep import SweepSettings, plot_tradeoff, sweep
from clipedit.defenses.typographic import defend
from clipedit.eval.results import format_table
from clipedit.io import write_json

COLUMNS = (("defended word", "text_acc"), ("unseen words", "other_text_acc"), ("clean", "clean_acc"),
           ("blank note", "blank_acc"), ("reading kept", "reading_acc"))


def methods(base) -> dict[str, DefenseConfig]:
    """The compared settings, each resolved from the model's defaults (edit (auto) is the default config
    with the sweep's sites and rank)."""
    default = resolve_config(base)
    return {
        "edit (default)": default,
        "edit (auto)": default,
        **{m: resolve_config(base, {"method": m}) for m in ("head-ablation", "paint", "finetune-local",
                                                             "finetune-global")},
    }


def run(name: str, base, config: DefenseConfig, word: str) -> tuple[object, dict, float]:
    """Defend a copy of ``base`` with ``config``; returns (bundle, details, seconds)."""
    bundle = dataclasses.replace(base, model=copy.deepcopy(base.model))
    details: dict = {}
    start = time.perf_counter()
    if name == "edit (auto)":
        result = sweep(bundle, [word], SweepSettings(), config)
        details["sweep_top"] = result.ranking()[:5]
        details["picked"] = result.picked
        if result.picked is not None:
            hp = dataclasses.replace(config.hparams, layer=None, rank=result.picked["rank"])
            config = resolve_config(bundle, dataclasses.replace(config, hparams=hp, method_hparams=None,
                                                                sites=tuple(result.picked["sites"])))
    defense = defend(bundle, word, config)
    seconds = time.perf_counter() - start
    details["layer"] = defense.layer
    if config.method == "edit":
        details["rank"] = config.hparams.rank
    if config.method == "head-ablation":
        details["heads"] = defense.details["heads"]
        details["steps"] = defense.details["steps"]
    if config.method == "paint":
        details["alpha"] = defense.details["alpha"]
        details["alphas"] = defense.details["rows"]
    return bundle, details, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="test scenes per set")
    ap.add_argument("--n-signs", type=int, default=120)
    ap.add_argument("--word", default="ipod")
    ap.add_argument("--only", default=None, help="comma-separated method names to run (default: all)")
    ap.add_argument("--model", default="mini", help="a bundled model with a world: mini or mini-vit")
    ap.add_argument("--out", default=None, help="default: bench/results/peers.json (mini), peers_<model>.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    args.out = args.out or ("bench/results/peers.json" if args.model == "mini"
                            else f"bench/results/peers_{args.model.replace('-', '_')}.json")
    base = load_model(args.model, device="cpu")
    test = heldout_data(base, [args.word], args.n, args.n_signs, split="test")
    results = {"unedited": score(test)}
    seconds, details = {"unedited": 0.0}, {}
    chosen = methods(base)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    for name, config in chosen.items():
        bundle, details[name], seconds[name] = run(name, base, config, args.word)
        defended = dataclasses.replace(test.bundle, model=bundle.model)  # the test set's memoised preprocessing
        data = dataclasses.replace(test, bundle=defended, predictor=test.predictor.with_bundle(defended))
        results[name] = score(data)
        print(f"{name}: {seconds[name]:.1f} s, " + ", ".join(f"{label} {results[name].get(key)}"
                                                              for label, key in COLUMNS), flush=True)

    rows = [[label, *(results[m].get(key) for m in results)] for label, key in COLUMNS]
    rows.append(["seconds to defend", *(f"{seconds[m]:.1f}" if m != "unedited" else "" for m in results)])
    print(format_table(rows, header=["", *results]))
    record = {"model": args.model, "word": args.word, "split": "test", "n": args.n, "n_signs": args.n_signs,
              "results": results, "seconds": seconds, "details": details, "threads": torch.get_num_threads(),
              "load_average_at_end": os.getloadavg()}
    write_json(args.out, record)
    plot(record, Path(args.out).with_suffix(".png"))


def plot(record: dict, path: Path) -> None:
    """Gain vs cost of each method on the test split (one marker per method, the Pareto front)."""
    base = record["results"]["unedited"]
    rows = [{"method": m, **gains(r, base)} for m, r in record["results"].items() if m != "unedited"]
    plot_tradeoff(rows, path, f"{record.get('model', 'mini')} CLIP vs '{record['word']}' notes "
                              f"(test split, {record['n']} scenes a set)")


if __name__ == "__main__":
    main()
