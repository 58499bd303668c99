"""One edit against any written word (``defend --text '*'``) on the bundled mini CLIP, measured on
words and fonts its exemplars never used.

    python -m bench any_word                      # the table on the test split -> bench/results/any_word.json
    python -m bench any_word --tune               # the '*' settings grid on the validation split
    python -m bench any_word --model mini-vit     # the same columns for the mini ViT

Every set uses its split's leave-out factors (:mod:`attacks.factors`: font families, size band, inks,
papers and weight that no exemplar uses); ``<set>_strata`` holds each set's figures by kind (notes,
stickers, bare text) and size band with n and 95% Wilson intervals, and the table prints the headline,
notes + stickers.

Columns: the unedited model; the single-word edit ("ipod"); the joint edit of every exemplar class
name; '*' (the vocabulary edit, at the setting picked on validation); finetune-global on vocabulary
exemplars; head-ablation when ``clipedit/methods/head_ablation.py`` exists. Rows: clean, blank note,
text notes writing the exemplar class names (defended), class names held out of every exemplar,
held-out vocabulary words (never exemplars), the held-out class names in fonts the mini world never
uses (Debian's TeX Gyre / Carlito / Noto: tuned on some, reported on others), and reading kept (signs
with a class name alone, zero-shot over the class names). Also: seconds to defend, and the peak
memory of the '*' solve at N and 4N exemplars (a fresh process each, ``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from bench.fonts import ensure_fonts
from bench.measure import out_options, result_path
from clipedit import load_model
from clipedit.attacks.factors import split_sampler
from clipedit.core import RewriteHParams
from clipedit.data.prepare.vocabulary import build_vocabulary
from clipedit.defenses.typographic import defend
from clipedit.eval.heldout import split_seed
from clipedit.eval.metrics import evaluate_attacks
from clipedit.eval.predictor import make_predictor
from clipedit.eval.reading import reading_accuracy, sign_set
from clipedit.eval.results import format_table
from clipedit.eval.strata import format_proportion, strata
from clipedit.io import write_json
from clipedit.mini.world import attack_set, note_sampler
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.resolve import resolve_config

log = logging.getLogger("any_word")

#: Fonts the mini world never uses (Debian packages fonts-texgyre, fonts-crosextra-carlito,
#: fonts-noto-core): settings are tuned on the validation fonts and reported on the test fonts.
UNSEEN_FONTS: dict[str, tuple[str, ...]] = {
    "validation": ("/usr/share/texmf/fonts/opentype/public/tex-gyre/texgyreheros-regular.otf",
                   "/usr/share/texmf/fonts/opentype/public/tex-gyre/texgyretermes-regular.otf",
                   "/usr/share/texmf/fonts/opentype/public/tex-gyre/texgyrecursor-regular.otf",
                   "/usr/share/fonts/truetype/noto/NotoSerif-Italic.ttf"),
    "test": ("/usr/share/fonts/truetype/crosextra/Carlito-Regular.ttf",
             "/usr/share/texmf/fonts/opentype/public/tex-gyre/texgyrepagella-regular.otf",
             "/usr/share/texmf/fonts/opentype/public/tex-gyre/texgyreadventor-regular.otf",
             "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
             "/usr/share/fonts/truetype/noto/NotoSerif-Regular.ttf"),
}
FONT_PACKAGES = "fonts-texgyre fonts-crosextra-carlito fonts-noto-core"
#: Offsets from the split's seed (heldout.py uses +0/+1, reading.py +2).
SET_SEEDS = {"defended": 11, "heldout_classes": 12, "heldout_words": 13, "unseen_fonts": 14}

ROWS = (("clean", "clean_acc"), ("blank note", "blank_acc"),
        ("text note: exemplar class names (defended)", "defended_text_acc"),
        ("text note: held-out class names", "heldout_classes_text_acc"),
        ("attack success: held-out class names", "heldout_classes_attack_success"),
        ("text note: held-out vocabulary words", "heldout_words_text_acc"),
        ("text note: held-out class names, unseen fonts", "unseen_fonts_text_acc"),
        ("blank note, unseen fonts", "unseen_fonts_blank_acc"),
        ("gap to blank: held-out class names (points)", "gap_heldout_classes"),
        ("gap to unedited blank: held-out class names (points)", "gap_heldout_classes_unedited_blank"),
        ("gap to blank: unseen fonts (points)", "gap_unseen_fonts"),
        ("reading kept: signs (zero-shot)", "signs_acc"))


def unseen_fonts(split: str) -> tuple[str, ...]:
    """The split's unseen fonts that are installed (logs loudly when some are absent)."""
    fonts = UNSEEN_FONTS[split]
    present = tuple(f for f in fonts if Path(f).is_file())
    if len(present) < len(fonts):
        log.warning("%d of %d unseen fonts of the %s split are ABSENT (apt-get install -y %s); the "
                    "unseen-font rows use %s", len(fonts) - len(present), len(fonts), split, FONT_PACKAGES,
                    "the rest" if present else "nothing: they are left out")
    return present


@dataclasses.dataclass
class Suite:
    """The evaluation sets of one split."""

    sets: dict[str, tuple[list, list[int]]]
    signs: Any
    classnames: list[str]
    fonts: tuple[str, ...]


def build_suite(bundle: ModelBundle, vocab, split: str, n: int) -> Suite:
    """Attack sets of ``split`` (``n`` scenes each) writing the vocabulary's words, and signs."""
    seed = split_seed(split)
    words = {"defended": list(vocab.exemplar_classnames), "heldout_classes": list(vocab.heldout_classnames),
             "heldout_words": [w for w in vocab.heldout_words if w not in vocab.classnames]}
    factors = split_sampler(split, note_sampler())
    sets = {name: attack_set(n, seed + SET_SEEDS[name], words=w, sampler=factors) for name, w in words.items()}
    fonts = unseen_fonts(split)
    if fonts:
        sampler = dataclasses.replace(factors, fonts=fonts)
        sets["unseen_fonts"] = attack_set(n, seed + SET_SEEDS["unseen_fonts"], words=words["heldout_classes"],
                                          sampler=sampler)
    return Suite(sets, sign_set(bundle.world, n, split), list(bundle.classnames), fonts)


def evaluate(bundle: ModelBundle, suite: Suite) -> dict[str, Any]:
    """Every row of the table for ``bundle``."""
    predictor = make_predictor(bundle, suite.classnames)
    out: dict[str, Any] = {}
    for name, (attacks, labels) in suite.sets.items():
        m = evaluate_attacks(bundle, predictor, attacks, labels, batch_size=128, progress=False)
        out[f"{name}_text_acc"] = m["text_acc"]
        out[f"{name}_attack_success"] = m["attack_success_rate"]
        out[f"{name}_blank_acc"] = m["blank_acc"]
        out[f"{name}_clean_acc"] = m["clean_acc"]
        out[f"{name}_strata"] = strata(attacks, labels, m["predictions"], suite.classnames)
    names = list(suite.sets)
    out["clean_acc"] = sum(out[f"{k}_clean_acc"] for k in names) / len(names)
    out["blank_acc"] = sum(out[f"{k}_blank_acc"] for k in names if k != "unseen_fonts") / 3
    out["gap_heldout_classes"] = 100 * (out["heldout_classes_blank_acc"] - out["heldout_classes_text_acc"])
    if "unseen_fonts_text_acc" in out:
        out["gap_unseen_fonts"] = 100 * (out["unseen_fonts_blank_acc"] - out["unseen_fonts_text_acc"])
    out["signs_acc"] = reading_accuracy(bundle, predictor, suite.signs)
    return out


def copy_of(bundle: ModelBundle) -> ModelBundle:
    return dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))


def star_config(base: ModelBundle, rank: int, words: int, renders: int, mask: str,
                sites: Optional[tuple[str, ...]]) -> DefenseConfig:
    """A '*' setting; sites None: the model's default single site."""
    layer = None if sites else star_defaults(base).sites[0]
    return DefenseConfig(hparams=RewriteHParams(layer=layer, rank=rank), vocab_words=words, renders=renders,
                         mask=mask, sites=sites)


def star_defaults(base: ModelBundle) -> DefenseConfig:
    """What '*' uses on ``base`` by default (its ``edit-any-word`` default file over its ``edit`` file)."""
    return resolve_config(base, any_word=True)


def methods(base: ModelBundle, vocab) -> dict[str, Callable[[ModelBundle], Any]]:
    """Column name -> a call that defends a copy of the model in place."""
    joint = list(vocab.exemplar_classnames)
    out: dict[str, Callable[[ModelBundle], Any]] = {
        "edit 'ipod'": lambda b: defend(b, "ipod"),
        f"edit, {len(joint)} class names (joint)": lambda b: defend(b, joint),
        "edit '*'": lambda b: defend(b, "*"),
        "finetune-global '*' (128 exemplars)": lambda b: defend(b, "*", DefenseConfig(
            method="finetune-global", vocab_words=128, renders=1)),
    }
    try:
        from clipedit.methods import head_ablation  # noqa: F401  (another issue's defense)
    except ImportError:
        log.warning("clipedit/methods/head_ablation.py is absent: no head-ablation column")
    else:
        ablate = getattr(head_ablation, "defend_head_ablation", None) or getattr(head_ablation, "ablate", None)
        if ablate is not None:
            out["head-ablation"] = lambda b: ablate(b)
    return out


def peak_memory_mb(n_words: int, renders: int) -> float:
    """Peak RSS (MB, ``VmHWM``) of a fresh process that loads the mini and solves '*' with ``n_words`` x
    ``renders`` exemplars (``ru_maxrss`` would carry this process's high-water mark across the exec)."""
    code = ("from clipedit import load_model; from clipedit.defenses.typographic import DefenseConfig, defend; "
            "b = load_model('mini', device='cpu'); "
            f"defend(b, '*', DefenseConfig(vocab_words={n_words}, renders={renders})); "
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def peak_memory(n_words: int) -> dict[str, float]:
    """Peak RSS of the '*' solve at N = ``n_words`` x 4 renders and at 4N exemplars."""
    peaks = {f"{n * 4} exemplars": peak_memory_mb(n, 4) for n in (n_words, 4 * n_words)}
    print("peak RSS of the '*' solve (fresh process, model included): "
          + ", ".join(f"{k}: {v:.0f} MB" for k, v in peaks.items()), flush=True)
    return peaks


def tune_grid(base: ModelBundle) -> dict[str, DefenseConfig]:
    """'*' settings compared on the validation split."""
    d = star_defaults(base)
    stage = lambda *ls: tuple(base.image_prefix + f"layer{i}.0.conv3" for i in ls)  # noqa: E731
    return {
        "layer3, rank 32, 128x4": star_config(base, 32, 128, 4, d.mask, None),
        "layer3, rank 64, 256x4": star_config(base, 64, 256, 4, d.mask, None),
        "layer2+3, rank 64, 256x4": star_config(base, 64, 256, 4, d.mask, stage(2, 3)),
        "layer3, rank 128, 256x4": star_config(base, 128, 256, 4, d.mask, None),
        "layer1+2+3, rank 64, 256x4": star_config(base, 64, 256, 4, d.mask, stage(1, 2, 3)),
        "layer3, rank 64, 256x4, label mask": star_config(base, 64, 256, 4, "label", None),
        "layer3, rank 64, 1024x1": star_config(base, 64, 1024, 1, d.mask, None),
        "layer3+4, rank 64, 256x4": star_config(base, 64, 256, 4, d.mask, stage(3, 4)),
        "layer3, rank 96, 256x4": star_config(base, 96, 256, 4, d.mask, None),
        "layer3, rank 128, 512x4": star_config(base, 128, 512, 4, d.mask, None),
        "layer3, rank 128, 256x4, label mask": star_config(base, 128, 256, 4, "label", None),
        "layer3+4, rank 128, 256x4": star_config(base, 128, 256, 4, d.mask, stage(3, 4)),
        "layer3, rank 128, 1024x1": star_config(base, 128, 1024, 1, d.mask, None),
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=400, help="scenes per attack set (and signs)")
    ap.add_argument("--tune", action="store_true", help="compare '*' settings on the validation split")
    ap.add_argument("--only", default=None, help="tune: run only these settings ('|'-separated names)")
    ap.add_argument("--memory-words", type=int, default=256, help="N for the peak-memory rows (words x 4 renders)")
    ap.add_argument("--memory-only", action="store_true", help="only (re)measure peak memory into --out's JSON")
    ap.add_argument("--model", default="mini", help="mini or mini-vit (--tune and the memory rows: mini only)")
    out_options(ap)


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    fonts = ensure_fonts()
    if args.memory_only:
        out = result_path(args.out, "any_word")
        record = json.loads(out.read_text()) if out.is_file() else {}
        record["peak_rss_mb"] = peak_memory(args.memory_words)
        write_json(out, record)
        return

    base = load_model(args.model, device="cpu")
    vocab = build_vocabulary(base.classnames, n_words=star_defaults(base).vocab_words)
    split = "validation" if args.tune else "test"
    suite = build_suite(base, vocab, split, args.n)
    results = {"unedited": evaluate(base, suite)}
    print("unedited: " + _summary(results["unedited"]), flush=True)
    seconds: dict[str, float] = {}
    runs = tune_grid(base) if args.tune else methods(base, vocab)
    for name, run in runs.items():
        if args.only and name not in args.only.split("|"):
            continue
        bundle = copy_of(base)
        start = time.perf_counter()
        defend(bundle, "*", run) if isinstance(run, DefenseConfig) else run(bundle)
        seconds[name] = time.perf_counter() - start
        results[name] = evaluate(bundle, suite)
        print(f"{name}: {seconds[name]:.1f} s; " + _summary(results[name]), flush=True)
    for r in results.values():  # the gap to the unedited model's blank-note accuracy, too
        r["gap_heldout_classes_unedited_blank"] = 100 * (results["unedited"]["heldout_classes_blank_acc"]
                                                         - r["heldout_classes_text_acc"])
    rows = [[label, *(r.get(key) if not key.startswith("gap") else _points(r.get(key)) for r in results.values())]
            for label, key in ROWS]
    rows.append(["seconds to defend (2 shared CPU cores)", "", *(f"{seconds[k]:.1f}" for k in results if k in seconds)])
    for set_name in suite.sets:
        rows.append([f"text note, notes + stickers: {set_name}",
                     *(format_proportion(r[f"{set_name}_strata"]["notes + stickers"]["text_acc"])
                       for r in results.values())])
    print(format_table(rows, header=["", *results]))
    record: dict[str, Any] = {
        "split": split, "n": args.n, "unseen_fonts": list(suite.fonts), "font_packages": fonts,
        "unseen_fonts_absent": [f for f in UNSEEN_FONTS[split] if f not in suite.fonts],
        "vocabulary": {"exemplar_class_names": vocab.exemplar_classnames,
                       "heldout_class_names": vocab.heldout_classnames,
                       "n_exemplar_words": len(vocab.exemplar_words),
                       "heldout_words": [w for w in vocab.heldout_words if w not in vocab.classnames]},
        "any_word_defaults": star_defaults(base).to_dict(),
        "results": results, "seconds": seconds,
    }
    if not args.tune and args.model == "mini":
        record["peak_rss_mb"] = peak_memory(args.memory_words)
    suffix = "" if args.model == "mini" else "_" + args.model.replace("-", "_")
    out = result_path(args.out, f"any_word{'_tune' if args.tune else ''}{suffix}")
    write_json(out, json.loads(json.dumps(record, default=str)))
    print(f"wrote {out}; own peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def _summary(result: dict[str, Any]) -> str:
    keys = [key for _, key in ROWS]
    return ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in result.items() if k in keys)


def _points(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{value:.1f}"


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
