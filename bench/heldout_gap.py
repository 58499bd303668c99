"""The gap on the leave-out factors: a mini's defenses on notes + stickers in font families,
a size band, inks, papers and weight the exemplars never use, and what closes it.

    python -m bench.heldout_gap --model mini --split validation --n 300 [--only NAME|NAME]
    python -m bench.heldout_gap --model mini-vit --split test --n 1000 --final

Validation (``--split validation``) compares the levers: the exemplars' distribution (large notes in a
band the held-out sets never use, 0.25-0.30; fonts of the catalogue's exemplar split), rank, several
sites, keep-blank, the multi-site recipe for '*', and fine-tuning on the same exemplars. ``--final``
runs the README's columns (unedited, defaults for "ipod" and '*') on ``--split test``.

Every figure is a proportion with n and a 95% Wilson interval, by kind and size band
(:func:`clipedit.eval.strata.strata`); the headline is notes + stickers. Writes
bench/results/heldout_gap_<model>_<split>.json.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional
from unittest import mock

from bench.fonts import ensure_fonts
from clipedit import load_model
from clipedit.attacks import StyleSampler
from clipedit.attacks.catalogue import split_font_paths
from clipedit.core import RewriteHParams
from clipedit.defenses.typographic import DefenseConfig, defend
from clipedit.eval.defense_metrics import evaluate_defense
from clipedit.eval.heldout import world_eval_sets
from clipedit.eval.predictor import make_predictor
from clipedit.eval.strata import format_proportion
from clipedit.io import write_json
from clipedit.mini.world import MiniWorld

HEADLINE = "notes + stickers"
LARGE = (0.25, 0.30)  # a size band outside the held-out one (0.19-0.24): interpolation, not a peek


class Mixture:
    """Exemplar styles drawn from several samplers in turn (one draw picks the sampler)."""

    def __init__(self, samplers: list[StyleSampler]) -> None:
        self.samplers = samplers

    def sample(self, rng):  # noqa: ANN001 - the StyleSampler interface
        return self.samplers[int(rng.integers(len(self.samplers)))].sample(rng)


@contextlib.contextmanager
def exemplar_styles(large: bool = False, fonts: bool = False) -> Iterator[None]:
    """Patch the mini world's exemplar styles (not its reference images) for one defense: add large notes
    (``LARGE`` band) and/or the catalogue's exemplar-split fonts to DejaVu."""
    if not (large or fonts):
        yield
        return
    original = StyleSampler.exemplar.__func__

    def exemplar(cls, **overrides):
        base = original(cls, **overrides)
        if fonts:
            base = dataclasses.replace(base, fonts=base.fonts + split_font_paths("exemplar"))
        return Mixture([base, dataclasses.replace(base, font_size=LARGE)]) if large else base

    world_exemplars = MiniWorld.exemplars

    def exemplars(self, word, n, rng):  # noqa: ANN001 - only the exemplars, never the reference images
        with mock.patch.object(StyleSampler, "exemplar", classmethod(exemplar)):
            return world_exemplars(self, word, n, rng)

    with mock.patch.object(MiniWorld, "exemplars", exemplars):
        yield


@dataclasses.dataclass
class Setting:
    words: str
    config: Optional[DefenseConfig] = None
    large: bool = False
    fonts: bool = False


def resnet_settings(prefix: str) -> dict[str, Setting]:
    stage = lambda *ls: tuple(f"{prefix}layer{i}.0.conv3" for i in ls)  # noqa: E731
    hp = lambda rank, **k: RewriteHParams(layer=f"{prefix}layer3.0.conv3", rank=rank, **k)  # noqa: E731
    return {
        "ipod default": Setting("ipod"),
        "ipod +fonts": Setting("ipod", fonts=True),
        "ipod rank 64": Setting("ipod", DefenseConfig(hparams=hp(64))),
        "ipod rank 64, 512 renders": Setting("ipod", DefenseConfig(hparams=hp(64), renders=512)),
        "ipod +large": Setting("ipod", large=True),
        "ipod +large +fonts": Setting("ipod", large=True, fonts=True),
        "ipod +large +fonts rank 64": Setting("ipod", DefenseConfig(hparams=hp(64)), True, True),
        "ipod +large +fonts rank 64, 512 renders": Setting("ipod", DefenseConfig(hparams=hp(64), renders=512),
                                                           True, True),
        "ipod +large +fonts layer2+3 rank 32": Setting("ipod", DefenseConfig(hparams=hp(32), sites=stage(2, 3)),
                                                       True, True),
        "ipod +large +fonts keep-blank 3": Setting("ipod", DefenseConfig(hparams=hp(32, keep_targets=3.0)),
                                                   True, True),
        "ipod +large +fonts label mask": Setting("ipod", DefenseConfig(mask="label"), True, True),
        "ipod rank 128, 1024 renders": Setting("ipod", DefenseConfig(hparams=hp(128), renders=1024)),
        "* default": Setting("*"),
        "* rank 128": Setting("*", DefenseConfig(hparams=hp(128))),
        "* +large +fonts": Setting("*", large=True, fonts=True),
        "ipod finetune-global +large +fonts": Setting("ipod", DefenseConfig(method="finetune-global"), True, True),
    }


def vit_settings(prefix: str) -> dict[str, Setting]:
    four = tuple(prefix + s for s in ("transformer.resblocks.0.attn.v_proj", "transformer.resblocks.1.attn.v_proj",
                                      "transformer.resblocks.2.attn.v_proj", "transformer.resblocks.0.mlp.c_proj"))
    hp = lambda rank, keep=3.0: RewriteHParams(layer=f"{prefix}transformer.resblocks.0.mlp.c_proj",  # noqa: E731
                                               rank=rank, keep_targets=keep)
    star = lambda rank, **k: DefenseConfig(hparams=hp(rank), sites=four, mask="label", **k)  # noqa: E731
    return {
        "ipod default": Setting("ipod"),
        "ipod +large": Setting("ipod", large=True),
        "ipod +large +fonts": Setting("ipod", large=True, fonts=True),
        "ipod +large +fonts rank 64": Setting("ipod", DefenseConfig(hparams=hp(64), sites=four, mask="label"),
                                              True, True),
        "ipod +large +fonts 512 renders": Setting("ipod", DefenseConfig(renders=512), True, True),
        "ipod +large +fonts keep-blank 0": Setting("ipod", DefenseConfig(hparams=hp(32, 0.0), sites=four,
                                                                         mask="label"), True, True),
        "* default": Setting("*"),
        "* 4-site recipe": Setting("*", star(32)),
        "* 4-site recipe +large +fonts": Setting("*", star(32), True, True),
        "* 4-site recipe, keep-blank 0": Setting("*", DefenseConfig(hparams=hp(32, 0.0), sites=four, mask="label")),
        "* 4-site recipe rank 64 +large +fonts": Setting("*", star(64), True, True),
        "ipod finetune-global +large +fonts": Setting("ipod", DefenseConfig(method="finetune-global"), True, True),
    }


def final_settings() -> dict[str, Setting]:
    return {"ipod default": Setting("ipod"), "* default": Setting("*")}


def headline(result: dict[str, Any]) -> dict[str, str]:
    """The row of one column: notes + stickers, "ipod" and other words; clean and blank-note accuracy."""
    ed, ot = result["strata"][HEADLINE], result["other_strata"][HEADLINE]
    return {"ipod notes+stickers": format_proportion(ed["text_acc"]),
            "other words notes+stickers": format_proportion(ot["text_acc"]),
            "blank note (notes+stickers)": format_proportion(ed["blank_acc"]),
            "clean": format_proportion(ed["clean_acc"]),
            "ipod attack success": format_proportion(ed["attack_success_rate"])}


def run(base, predictor, sets, name: str, setting: Setting) -> dict[str, Any]:
    bundle = dataclasses.replace(base, model=copy.deepcopy(base.model))
    start = time.perf_counter()
    with exemplar_styles(setting.large, setting.fonts):
        defend(bundle, setting.words, setting.config)
    seconds = time.perf_counter() - start
    result = evaluate_defense(bundle, predictor.with_bundle(bundle), sets)
    result["seconds"] = seconds
    print(f"{name} ({seconds:.0f} s): {headline(result)}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--only", default=None, help="'|'-separated setting names")
    ap.add_argument("--final", action="store_true", help="the README's columns only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    fonts = ensure_fonts()
    base = load_model(args.model, device="cpu")
    sets = world_eval_sets(base.world, ["ipod"], args.n, args.split)
    predictor = make_predictor(base, sets.classnames)
    grid: dict[str, Setting] = final_settings() if args.final else (
        vit_settings(base.image_prefix) if "vit" in args.model else resnet_settings(base.image_prefix))
    results: dict[str, Any] = {"unedited": evaluate_defense(base, predictor, sets)}
    print(f"unedited: {headline(results['unedited'])}", flush=True)
    chosen: Callable[[str], bool] = lambda k: not args.only or k in args.only.split("|")  # noqa: E731
    for name, setting in grid.items():
        if chosen(name):
            results[name] = run(base, predictor, sets, name, setting)
    out = args.out or f"bench/results/heldout_gap_{args.model.replace('-', '_')}_{args.split}.json"
    write_json(out, {"model": args.model, "split": args.split, "n": args.n, "headline": HEADLINE,
                     "font_packages": fonts,
                     "fonts": {"exemplar_extra": list(split_font_paths("exemplar"))},
                     "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
