"""Defense of the mini CLIP on notes placed anywhere in the picture (held-out styles): python bench/defend_positions.py"""
import torch, copy, dataclasses; torch.set_num_threads(2)
from attacks import StyleSampler
from clipedit import load_model
from clipedit.defend import defend
from clipedit.defense_eval import EvalSets, evaluate_defense
from clipedit.mini import world
from clipedit.predict import make_predictor
base = load_model("mini", device="cpu")
s = StyleSampler.heldout(position="random", font_size=(0.19, 0.22), padding=(0.1, 0.25), rotation=(-10.0, 10.0), perspective=(0.0, 0.1))
sets = EvalSets(list(base.classnames), world.attack_set(600, 4242, words=["ipod"], sampler=s), None, "random-position")
pred = make_predictor(base, sets.classnames)
print("before", evaluate_defense(base, pred, sets))
b = dataclasses.replace(base, model=copy.deepcopy(base.model)); defend(b, "ipod")
print("after", evaluate_defense(b, pred.with_bundle(b), sets))
