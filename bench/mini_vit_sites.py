"""Where to rewrite the bundled mini ViT: every block's ``mlp.c_proj`` and the conv stem's convs x ranks,
masks and thresholds, on the VALIDATION split, plus an oracle that patches the blank image's output of the
stem or of a block into the text tokens (bench/results/mini_vit_sites.json).

    python -m bench mini_vit_sites [--n 300] [--word ipod] [--out bench/results/mini_vit_sites.json]
    python -m bench mini_vit_sites --parts value --n 1000 --out bench/results/mini_vit_sites_value.json
    python -m bench mini_vit_sites --model mini-vit-deep --parts oracle,heads --n 300 \
        --out bench/results/mini_vit_sites_deep_oracles.json

``heads``: per block, each head's word-agnostic typographic score (Dyslexify's: the share of the class
token's attention to patch tokens that falls on the text band, on scenes with a random class name in the
bottom rows; a head that ignores position scores the band's share of the grid).

``value``: block 0's attention value projection (``attn.v_proj``, where the class token reads the
text tokens) and ``mlp.c_proj`` edited as one multi-site edit, x ranks x ``keep_targets`` (the weight of
keeping the blank exemplars as they are), picked by the issue's rule: the largest defended-word
accuracy with clean and blank-note loss <= 1 point on validation.

The oracle answers "how much can a token-level edit after block i restore at most, with this token
mask?": it replaces the attacked image's residual stream after block i by the blank image's, at the
tokens the mask selects (glyphs, the whole label, the glyphs grown by one token), and scores the result.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch
import torch.nn.functional as F

from bench.measure import out_options, result_path
from clipedit import load_model
from clipedit.core import RewriteHParams
from clipedit.core.nethook import Trace
from clipedit.core.sites import resolve_site
from clipedit.data.prepare.exemplars import preprocess_mask
from clipedit.defenses.typographic import DefenseConfig, defend, text_exemplars
from clipedit.eval.defense_metrics import evaluate_defense
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table
from clipedit.io import write_json

SITE = "visual.transformer.resblocks.{}.mlp.c_proj"
VALUE_SITE = "visual.transformer.resblocks.{}.attn.v_proj"
BLOCK = "visual.transformer.resblocks.{}"
STEM_OUTPUT = "visual.conv1"


def stem_convs(model) -> list[str]:
    """The stem's convs after the first (which sees raw pixels): sites that act before any token is mixed."""
    convs = [f"{STEM_OUTPUT}.{i}" for i, m in enumerate(model.visual.conv1) if isinstance(m, torch.nn.Conv2d)]
    return convs[1:]


def run_defense(base, predictor, sets, exemplars, settings: list[tuple[str, int, str, float]]) -> dict:
    """Defend a copy of ``base`` at each (layer, rank, mask, threshold) in turn (several: stacked edits)."""
    bundle = dataclasses.replace(base, model=copy.deepcopy(base.model))
    start = time.perf_counter()
    for layer, rank, mask, threshold in settings:
        config = DefenseConfig(hparams=RewriteHParams(layer=layer, rank=rank, mask_threshold=threshold), mask=mask)
        defend(bundle, "ipod", config, exemplars=exemplars)
    seconds = time.perf_counter() - start
    result = evaluate_defense(bundle, predictor.with_bundle(bundle), sets)
    print(settings, {k: round(result[k], 4) for k in ("clean_acc", "blank_acc", "text_acc", "other_text_acc")},
          flush=True)
    return {**result, "seconds": seconds}


def run_multisite(base, predictor, sets, exemplars, sites: list[str], rank: int, mask: str, keep: float) -> dict:
    """One multi-site edit of a copy of ``base`` (sites solved in order, one rank and keep weight)."""
    bundle = dataclasses.replace(base, model=copy.deepcopy(base.model))
    start = time.perf_counter()
    config = DefenseConfig(hparams=RewriteHParams(layer=sites[0], rank=rank, keep_targets=keep), mask=mask,
                           sites=tuple(sites) if len(sites) > 1 else None)
    defend(bundle, "ipod", config, exemplars=exemplars)
    seconds = time.perf_counter() - start
    result = evaluate_defense(bundle, predictor.with_bundle(bundle), sets)
    print(sites, rank, mask, keep, {k: round(result[k], 4) for k in ("clean_acc", "blank_acc", "text_acc",
                                                                     "other_text_acc")}, flush=True)
    return {**result, "seconds": seconds, "sites": sites, "rank": rank, "mask": mask, "keep_targets": keep}


def within_limits(result: dict, unedited: dict, limit: float = 0.01) -> bool:
    """Clean and blank-note accuracy each lost at most ``limit``."""
    return all(unedited[k] - result[k] <= limit + 1e-9 for k in ("clean_acc", "blank_acc"))


def token_masks(bundle, attacks, site_layer: str) -> dict[str, torch.Tensor]:
    """(n, tokens) masks of the glyphs, the whole label and the glyphs grown by one token."""
    site = resolve_site(bundle.model, site_layer)
    n_tokens = 1 + int(bundle.model.visual.grid_size[0]) ** 2
    grid = bundle.model.visual.grid_size[0]
    glyphs = torch.stack([preprocess_mask(bundle.preprocess, a.text_mask) for a in attacks])
    label = torch.stack([preprocess_mask(bundle.preprocess, a.mask) for a in attacks])
    text = site.location_weights(glyphs, n_tokens)
    grown = F.max_pool2d(text[:, 1:].view(-1, 1, grid, grid), 3, stride=1, padding=1).flatten(1)
    label_tokens = site.location_weights(label, n_tokens)
    return {"glyphs": text, "label": label_tokens,
            "glyphs+1 token": torch.cat([text[:, :1], grown], 1),
            "all patches": torch.cat([torch.zeros_like(text[:, :1]), torch.ones_like(text[:, 1:])], 1),
            "class token": torch.cat([torch.ones_like(text[:, :1]), torch.zeros_like(text[:, 1:])], 1),
            "label + class token": torch.cat([torch.ones_like(text[:, :1]), label_tokens[:, 1:]], 1)}


def text_note_acc(logits: torch.Tensor, predictor, attacks, labels) -> float:
    """Accuracy over the scenes whose written word is not their class (as ``evaluate_defense`` counts)."""
    labels = torch.as_tensor(labels)
    words = torch.tensor([predictor.classnames.index(a.text) for a in attacks])
    counted = words != labels
    return float((logits.argmax(-1).cpu() == labels)[counted].float().mean())


@torch.no_grad()
def oracle_text_acc(bundle, predictor, attacks, labels, layer: str, mask: torch.Tensor) -> float:
    """Text-note accuracy when the blank image's output of ``layer`` (a block: the residual stream; the stem:
    the patch embeddings) replaces the attacked one at the tokens of ``mask`` (n, 1 + grid**2)."""
    attacked = torch.stack([bundle.preprocess(a.attacked) for a in attacks])
    blank = torch.stack([bundle.preprocess(a.blank) for a in attacks])
    with Trace(bundle.model, layer, stop=True) as trace:
        bundle.encode_images(blank)
    target = trace.output
    if target.ndim == 4:  # the stem's (n, width, grid, grid) map: patch tokens only
        keep = mask[:, 1:].to(target.dtype).view(target.shape[0], 1, *target.shape[-2:])
    else:
        keep = mask.to(target.dtype).unsqueeze(-1)
    patch = lambda out, _: out * (1 - keep) + target * keep  # noqa: E731
    with Trace(bundle.model, layer, edit_output=patch, retain_output=False):
        logits = predictor(attacked)
    return text_note_acc(logits, predictor, attacks, labels)


@torch.no_grad()
def oracle_values_text_acc(bundle, predictor, attacks, labels, mask: torch.Tensor, value_blocks: list[int],
                           output_block: int | None) -> float:
    """Text-note accuracy when, at the tokens of ``mask``, the attention of each of ``value_blocks`` reads the
    blank image's values (its value input replaced by the blank's) and, with ``output_block``, that block's
    output is the blank's too: what the value-projection site plus an ``mlp.c_proj`` can restore at most."""
    attacked = torch.stack([bundle.preprocess(a.attacked) for a in attacks])
    blank = torch.stack([bundle.preprocess(a.blank) for a in attacks])
    keep = mask.unsqueeze(-1)
    blocks = bundle.model.visual.transformer.resblocks
    ln_out, block_out, handles = {}, {}, []
    for b in value_blocks:
        handles.append(blocks[b].ln_1.register_forward_hook(lambda m, i, o, b=b: ln_out.__setitem__(b, o.clone())))
    if output_block is not None:
        handles.append(blocks[output_block].register_forward_hook(lambda m, i, o: block_out.__setitem__(0, o.clone())))
    bundle.encode_images(blank)
    for h in handles:
        h.remove()

    def read_blank_values(b):
        def pre(module, args, kwargs):
            q, k, v = args[:3]
            return (q, k, v * (1 - keep) + ln_out[b] * keep, *args[3:]), kwargs
        return pre
    handles = [blocks[b].attn.register_forward_pre_hook(read_blank_values(b), with_kwargs=True) for b in value_blocks]
    if output_block is not None:
        handles.append(blocks[output_block].register_forward_hook(lambda m, i, o: o * (1 - keep) + block_out[0] * keep))
    try:
        logits = predictor(attacked)
    finally:
        for h in handles:
            h.remove()
    return text_note_acc(logits, predictor, attacks, labels)


def site_name(short: str) -> str:
    """``v3`` -> block 3's attn.v_proj, ``c3`` -> its mlp.c_proj."""
    kind, block = short[0], int(short[1:])
    return {"v": VALUE_SITE, "c": SITE}[kind].format(block)


VALUE_SETS = "v0+c0,v0+v1+c0,v0+c0+v1,v0+v1+v2+c0"  # the grid that chose mini-vit's default


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="mini-vit", help="a ViT mini: mini-vit or mini-vit-deep")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--word", default="ipod")
    ap.add_argument("--ranks", default="8,16,32,64")
    out_options(ap)
    ap.add_argument("--parts", default="oracle,blocks,stem,extras",
                    help="what to run (comma-separated): oracle, blocks, stem, extras (masks, thresholds, two "
                         "blocks), value (attention value projection + mlp.c_proj, with keep_targets), "
                         "heads (typographic score of every head)")
    ap.add_argument("--value-sets", default=VALUE_SETS,
                    help="--parts value: site sets, comma-separated; vN = block N's attn.v_proj, cN = its "
                         "mlp.c_proj, '+' joins one multi-site edit (solved in order)")
    ap.add_argument("--value-ranks", default="16,32")
    ap.add_argument("--keeps", default="0,1,2,3", help="--parts value: keep_targets weights")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a shared, busy CPU)")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)

    base = load_model(args.model, device="cpu")
    blocks = range(len(base.model.visual.transformer.resblocks))
    ranks = [int(r) for r in args.ranks.split(",")]
    sets = world_eval_sets(base.world, [args.word], args.n, split="validation")
    predictor = make_predictor(base, sets.classnames)
    exemplars = text_exemplars(base, args.word, 128)
    results: dict[str, dict] = {"unedited": evaluate_defense(base, predictor, sets)}

    parts = set(args.parts.split(","))
    attacks, labels = sets.edited
    oracle: dict[str, dict] = {}
    if "oracle" in parts:
        masks = token_masks(base, attacks, SITE.format(0))
        layers = {"stem (patch embeddings)": STEM_OUTPUT, **{f"block {b}": BLOCK.format(b) for b in blocks}}
        oracle = {name: {mask: oracle_text_acc(base, predictor, attacks, labels, layer, m) for mask, m in masks.items()}
                  for name, layer in layers.items()}
        oracle["tokens per image"] = {name: f"{float(m[:, 1:].sum(1).mean()):.1f}" for name, m in masks.items()}
        oracle["block 0 values (attn.v_proj)"] = {
            mask: oracle_values_text_acc(base, predictor, attacks, labels, m, [0], None) for mask, m in masks.items()}
        oracle["block 0 values + block 0 output"] = {
            mask: oracle_values_text_acc(base, predictor, attacks, labels, m, [0], 0) for mask, m in masks.items()}
        print(format_table([[k, *v.values()] for k, v in oracle.items()], header=["oracle patch after", *masks]),
              flush=True)
    if "blocks" in parts:
        for b in blocks:
            for r in ranks:
                results[f"block {b}, rank {r}"] = run_defense(base, predictor, sets, exemplars,
                                                              [(SITE.format(b), r, "text", 0.0)])
    if "stem" in parts:
        for layer in stem_convs(base.model):
            for r in ranks:
                for mask in ("text", "label"):
                    results[f"{layer}, rank {r}, {mask} mask"] = run_defense(base, predictor, sets, exemplars,
                                                                           [(layer, r, mask, 0.0)])
    if "extras" in parts:
        for b in (0, 1):
            results[f"block {b}, rank 32, label mask"] = run_defense(base, predictor, sets, exemplars,
                                                                      [(SITE.format(b), 32, "label", 0.0)])
            results[f"block {b}, rank 32, threshold 0.25"] = run_defense(base, predictor, sets, exemplars,
                                                                          [(SITE.format(b), 32, "text", 0.25)])
        results["blocks 0+1, rank 32"] = run_defense(
            base, predictor, sets, exemplars, [(SITE.format(0), 32, "text", 0.0), (SITE.format(1), 32, "text", 0.0)])

    heads: dict[str, list[float]] = {}
    if "heads" in parts:
        from clipedit.methods.dyslexify import class_token_sites, scoring_images, typographic_scores

        band = 2
        sites = class_token_sites(base)
        scores = typographic_scores(base, sites, scoring_images(base, args.n, band), band)
        heads = {name.removeprefix("visual.transformer.resblocks.").removesuffix(".attn"): [round(float(x), 4)
                 for x in scores[name]] for name, _ in sites}
        heads["chance (band share of the grid)"] = [band / int(base.model.visual.grid_size[0])]
        print(format_table([[k, *v] for k, v in heads.items()], header=["block", "head scores"]), flush=True)
    picked = None
    if "value" in parts:
        site_sets = [[site_name(part) for part in item.split("+")] for item in args.value_sets.split(",")]
        keeps = [float(k) for k in args.keeps.split(",")]
        grid = [(sites, int(r), "label", keep) for sites in site_sets for r in args.value_ranks.split(",")
                for keep in keeps]
        if args.value_sets == VALUE_SETS:  # the grid that chose mini-vit's default
            grid += [([SITE.format(0)], 32, "label", keep) for keep in (1.0, 4.0)]
        for sites, rank, mask, keep in grid:
            name = f"{' + '.join(s.removeprefix('visual.transformer.resblocks.') for s in sites)}, rank {rank}, " \
                   f"{mask} mask, keep {keep:g}"
            results[name] = run_multisite(base, predictor, sets, exemplars, sites, rank, mask, keep)
        ok = {k: r for k, r in results.items() if k != "unedited" and within_limits(r, results["unedited"])}
        picked = max(ok, key=lambda k: ok[k]["text_acc"]) if ok else None
        print("picked (text-note accuracy, clean and blank-note loss <= 1 point):", picked)

    keys = ["clean_acc", "blank_acc", "text_acc", "attack_success_rate", "other_text_acc"]
    print(format_table([[name, *(r.get(k) for k in keys)] for name, r in results.items()], header=["", *keys]))
    out = write_json(result_path(args.out, "mini_vit_sites"), {
        "model": args.model, "split": "validation", "n": args.n, "word": args.word, "renders": 128,
        "oracle_text_acc": oracle, "head_scores": heads, "results": results, "picked": picked})
    print(f"wrote {out}")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
