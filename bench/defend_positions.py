"""Defense of the bundled mini CLIP on "ipod" notes placed anywhere in the picture, not only on the object.

    python -m bench defend_positions [--n 600] [--seed 4242]

The notes use the mini world's held-out styles (`world.note_sampler()`) with ``position="random"``;
the edit is `defend(bundle, "ipod")` with the defaults.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses

from clipedit import load_model
from clipedit.defenses.typographic import defend
from clipedit.eval.defense_metrics import ROWS, evaluate_defense
from clipedit.eval.heldout import EvalSets, split_seed
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table
from clipedit.mini import world


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=split_seed("test") + 2,
                    help="held-out scenes (default: the test split's, offset past its two attack sets)")


def main(args: argparse.Namespace) -> None:

    base = load_model("mini", device="cpu")
    sampler = dataclasses.replace(world.note_sampler(), position="random")
    sets = EvalSets(list(base.classnames), world.attack_set(args.n, args.seed, words=["ipod"], sampler=sampler),
                    None, "mini-world, notes anywhere")
    predictor = make_predictor(base, sets.classnames)
    before = evaluate_defense(base, predictor, sets)
    edited = dataclasses.replace(base, model=copy.deepcopy(base.model))
    defend(edited, "ipod")
    after = evaluate_defense(edited, predictor.with_bundle(edited), sets)
    rows = [[label, before[key], after[key]] for label, key in ROWS if key in before]
    print(format_table(rows, header=["", "before", "after"]))


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
