"""Where the written text survives a defense: stage by stage, how far the attacked image's features stay
from the blank image's at the label, before and after the edit, and an oracle that patches the blank's
features in at that stage (of the edited model) — what a perfect edit there could still restore.

    python -m bench text_survival --model mini --split validation --n 300 [--words ipod|*]

Scenes: the split's leave-out factors, notes + stickers only (the kinds the headline reports).
Stages: a ResNet's ``layer1..4`` outputs; a ViT's block outputs. Residue = mean over scenes of
||attacked - blank|| / ||blank|| over the label's locations. Oracle accuracies carry n and a 95% Wilson
interval. Writes (with --update-results) bench/results/text_survival_<model>_<split>.json.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

import torch
import torch.nn.functional as F

from bench.fonts import ensure_fonts
from bench.measure import out_options, result_path
from clipedit import load_model
from clipedit.core.nethook import Trace
from clipedit.data.prepare.exemplars import preprocess_mask
from clipedit.defenses.typographic import defend
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.strata import format_proportion, proportion
from clipedit.io import write_json


def stages(bundle) -> list[str]:
    """The stage outputs to probe: ResNet layer1..4 or every ViT block."""
    visual = bundle.model.visual
    if hasattr(visual, "transformer"):
        return [f"visual.transformer.resblocks.{i}" for i in range(len(visual.transformer.resblocks))]
    return [f"visual.layer{i}" for i in range(1, 5)]


def location_mask(bundle, attacks, output: torch.Tensor) -> torch.Tensor:
    """(n, locations) label mask at a stage's output: (n, C, H, W) maps or (n, tokens, width) tokens."""
    pixels = torch.stack([preprocess_mask(bundle.preprocess, a.mask) for a in attacks]).unsqueeze(1)
    if output.ndim == 4:
        return (F.adaptive_avg_pool2d(pixels, output.shape[-2:]) > 0).flatten(1).float()
    grid = int((output.shape[1] - 1) ** 0.5)
    patches = (F.adaptive_avg_pool2d(pixels, (grid, grid)) > 0).flatten(1).float()
    return torch.cat([torch.zeros_like(patches[:, :1]), patches], 1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(n, locations, features) of a stage's output."""
    return x.flatten(2).transpose(1, 2) if x.ndim == 4 else x


@torch.no_grad()
def probe(bundle, predictor, attacks, labels, layer: str) -> dict:
    """Per scene: the text's residue at ``layer``, and whether the oracle (blank features patched in at the
    label) classifies it right (scenes whose word is their class are left out of ``hits``)."""
    attacked = torch.stack([bundle.preprocess(a.attacked) for a in attacks])
    blank = torch.stack([bundle.preprocess(a.blank) for a in attacks])
    outs = {}
    for name, x in (("attacked", attacked), ("blank", blank)):
        with Trace(bundle.model, layer, stop=True) as trace:
            bundle.encode_images(x)
        outs[name] = trace.output.detach().clone()
    mask = location_mask(bundle, attacks, outs["blank"])
    diff = (_flat(outs["attacked"]) - _flat(outs["blank"])).norm(dim=-1)
    ref = _flat(outs["blank"]).norm(dim=-1)
    residue = (diff * mask).sum(1) / (ref * mask).sum(1).clamp_min(1e-9)
    keep = mask.view(mask.shape[0], 1, *outs["blank"].shape[-2:]) if outs["blank"].ndim == 4 else mask.unsqueeze(-1)
    target = outs["blank"]
    with Trace(bundle.model, layer, edit_output=lambda out, _: out * (1 - keep) + target * keep,
               retain_output=False):
        pred = predictor(attacked).argmax(-1).cpu()
    words = [predictor.classnames.index(a.text) if a.text in predictor.classnames else -1 for a in attacks]
    counted = [i for i in range(len(attacks)) if words[i] != labels[i]]
    return {"residues": residue.tolist(), "hits": [bool(pred[i] == labels[i]) for i in counted]}


def survey(bundle, predictor, attacks, labels, batch: int = 100) -> dict[str, dict]:
    """:func:`probe` at every stage, over batches of scenes."""
    out = {}
    for layer in stages(bundle):
        parts = [probe(bundle, predictor, attacks[i:i + batch], labels[i:i + batch], layer)
                 for i in range(0, len(attacks), batch)]
        residues = [r for p in parts for r in p["residues"]]
        out[layer] = {"residue": sum(residues) / len(residues),
                      "oracle_text_acc": proportion([h for p in parts for h in p["hits"]])}
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="mini")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--words", default="ipod", help="the defense: 'ipod' or '*'")
    out_options(ap)


def main(args: argparse.Namespace) -> None:
    fonts = ensure_fonts()
    base = load_model(args.model, device="cpu")
    sets = world_eval_sets(base.world, ["ipod"], args.n, args.split)
    predictor = make_predictor(base, sets.classnames)
    scenes = {name: [(a, y) for a, y in zip(*s) if a.style.kind in ("note", "sticker")]
              for name, s in (("ipod", sets.edited), ("other words", sets.other))}
    edited = dataclasses.replace(base, model=copy.deepcopy(base.model))
    defend(edited, args.words)
    record = {"model": args.model, "split": args.split, "n": args.n, "defense": args.words, "kinds": "notes + stickers",
              "font_packages": fonts,
              "results": {}}
    for set_name, pairs in scenes.items():
        attacks, labels = [a for a, _ in pairs], [y for _, y in pairs]
        for model_name, bundle in (("unedited", base), ("edited", edited)):
            rows = survey(bundle, predictor.with_bundle(bundle), attacks, labels)
            record["results"][f"{set_name}, {model_name}"] = rows
            for layer, r in rows.items():
                print(f"{set_name:12s} {model_name:9s} {layer:32s} residue {r['residue']:.3f}  "
                      f"oracle text acc {format_proportion(r['oracle_text_acc'])}", flush=True)
    out = result_path(args.out, f"text_survival_{args.model.replace('-', '_')}_{args.split}")
    write_json(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
