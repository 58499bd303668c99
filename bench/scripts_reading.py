"""Can the minis read scripts other than Latin? Class names written in each script (letter-by-letter
transliteration, :func:`attacks.scripts.transliterate`, in a font that writes it, shaped with raqm) on the
test split's notes, against the same names in Latin.

    python -m bench scripts_reading [--n 300] [--models mini,mini-vit]

Attack success = prediction equals the class whose name is written (scenes whose written class is their
own are left out), with n and a 95% Wilson interval. Writes (with --update-results) bench/results/scripts_reading.json.
"""
from __future__ import annotations

import argparse

from bench.fonts import ensure_fonts
from bench.measure import out_options, result_path
from clipedit import load_model
from clipedit.attacks.scripts import SCRIPTS, script_font, transliterate
from clipedit.eval.heldout import split_seed
from clipedit.eval.metrics import evaluate_attacks
from clipedit.eval.predictor import make_predictor
from clipedit.eval.strata import format_proportion, proportion
from clipedit.io import write_json


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--models", default="mini,mini-vit")
    out_options(ap)


def main(args: argparse.Namespace) -> None:
    fonts = ensure_fonts()
    record: dict = {"n": args.n, "split": "test", "fonts": {}, "results": {}, "font_packages": fonts}
    for name in args.models.split(","):
        bundle = load_model(name, device="cpu")
        classes = list(bundle.classnames)
        predictor = make_predictor(bundle, classes)
        for script in SCRIPTS:
            written = {transliterate(c, script): i for i, c in enumerate(classes)}
            font = None if script == "latin" else script_font(script)
            record["fonts"][script] = font
            attacks, labels = bundle.world.attack_set(args.n, split_seed("test") + 7, list(written), split="test",
                                                      fonts=(font,) if font else None)
            m = evaluate_attacks(bundle, predictor, attacks, labels, [written[a.text] for a in attacks],
                                 batch_size=128, progress=False)
            counted = [i for i, a in enumerate(attacks) if written[a.text] != labels[i]]
            text = m["predictions"]["text"]
            hit = [text[i] == written[attacks[i].text] for i in counted]
            ok = [text[i] == labels[i] for i in counted]
            row = {"attack_success": proportion(hit), "text_acc": proportion(ok),
                   "blank_acc": proportion([p == y for p, y in zip(m["predictions"]["blank"], labels)]),
                   "chance": 1 / len(classes), "example": transliterate("umbrella", script)}
            record["results"][f"{name}, {script}"] = row
            print(f"{name:9s} {script:11s} attack success {format_proportion(row['attack_success'])}  "
                  f"text note {format_proportion(row['text_acc'])}  blank {format_proportion(row['blank_acc'])}",
                  flush=True)
    out = write_json(result_path(args.out, "scripts_reading"), record)
    print(f"wrote {out}")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
