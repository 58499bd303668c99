"""Defense of a bundled mini CLIP against "ipod" notes: the default edit, the paper's single-exemplar
rank-1 setting, and both fine-tuning baselines, evaluated side by side on the test split.

    python -m bench defend_mini [--model mini|mini-vit] [--n 1000] [--word ipod] [--out FILE]

Exemplars use `StyleSampler.exemplar()` styles on fresh scenes; the held-out sets use the test split's
leave-out factors (:mod:`attacks.factors`: font families, size band, inks, papers and weight no exemplar
uses) on the mini world's note geometry, and other seeds. Figures by kind (notes, stickers, bare text;
the headline is notes + stickers) and size band, with n and 95% Wilson intervals.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time

from bench.fonts import ensure_fonts
from bench.measure import out_options, result_path
from clipedit import load_model
from clipedit.defenses.typographic import defend
from clipedit.eval.defense_metrics import ROWS, evaluate_defense
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table
from clipedit.eval.strata import strata_rows
from clipedit.io import write_json
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import defaults_for
from clipedit.settings.resolve import resolve_config


def settings(base) -> dict[str, DefenseConfig]:
    """The default (one site or several, the model's ``edit`` default file), the paper's single-exemplar rank-1
    edit of the default layer, and the fine-tuning baselines (on the default layer / the whole image tower)."""
    default, layer = resolve_config(base), defaults_for(base).layer
    out = {"edit (default)": default}
    if len(default.sites) > 1:  # the default layer alone, as the rewrite had it before the multi-site default
        out[f"edit, {layer.rpartition('resblocks.')[2]} only, rank 32"] = resolve_config(
            base, {"layer": layer, "rank": 32, "keep_targets": 0.0})
    return {**out,
            "edit, 1 exemplar, rank 1 (paper)": resolve_config(base, {"layer": layer, "rank": 1, "keep_targets": 0.0,
                                                                      "renders": 1}),
            "finetune-local": resolve_config(base, {"method": "finetune-local"}),
            "finetune-global": resolve_config(base, {"method": "finetune-global"})}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--word", default="ipod")
    ap.add_argument("--model", default="mini", help="a bundled model with a world: mini or mini-vit")
    out_options(ap)


def main(args: argparse.Namespace) -> None:
    fonts = ensure_fonts()

    args.out = result_path(args.out, f"defend_{args.model.replace('-', '_')}")
    base = load_model(args.model, device="cpu")
    sets = world_eval_sets(base.world, [args.word], args.n)
    predictor = make_predictor(base, sets.classnames)
    results = {"unedited": evaluate_defense(base, predictor, sets)}
    timings = {}
    for name, config in settings(base).items():
        bundle = dataclasses.replace(base, model=copy.deepcopy(base.model))
        start = time.perf_counter()
        defense = defend(bundle, args.word, config)
        timings[name] = time.perf_counter() - start
        results[name] = evaluate_defense(bundle, predictor.with_bundle(bundle), sets)
        results[name]["layer"] = defense.layer

    header = ["", *results]
    rows = [[label, *(r.get(key) for r in results.values())] for label, key in ROWS]
    print(format_table(rows, header=header))
    for metric in ("text_acc", "blank_acc", "clean_acc"):
        print(format_table(strata_rows(results, metric), header=header))
    print("seconds to defend: " + ", ".join(f"{k}: {v:.1f}" for k, v in timings.items()))
    write_json(args.out, {"model": args.model, "word": args.word, "n": args.n, "split": sets.split,
                          "font_packages": fonts,
                          "default_config": resolve_config(base).to_dict(),
                          "results": results, "seconds": timings})


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
