"""The peer defenses (head ablation, PAINT) through the method dispatcher, and the reading-kept figure."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pytest
import torch

from clipedit.core.edit_sets import EditSet, apply_edit_set, load_edits, revert_edit_set, save_edits
from clipedit.core.nethook import get_module
from clipedit.data.prepare.exemplars import request_from_attacks
from clipedit.data.prepare.typo_train import typographic_training_set, validation_sets
from clipedit.defenses.typographic import DefenseConfig, defend, text_exemplars
from clipedit.errors import ClipeditError, EditError
from clipedit.eval.predictor import make_predictor
from clipedit.eval.reading import plain_signs, reading_accuracy, sign_set
from clipedit.methods.defense_prefix import DefensePrefixHParams
from clipedit.methods.finetune import FinetuneHParams
from clipedit.methods.head_ablation import (
    HeadAblationHParams,
    ablate_heads,
    ablation_edits,
    attention_sites,
    head_scores,
)
from clipedit.methods.paint import ALPHAS, PaintHParams, choose_alpha, cosine_lr, interpolate_, paint, schedule
from clipedit.methods.paint import images_seen as paint_images
from clipedit.methods.registry import METHODS
from clipedit.mini.world import CLASSNAMES, IMAGE_SIZE, MiniWorld


def with_world(bundle):
    return dataclasses.replace(bundle, world=MiniWorld(), classnames=list(CLASSNAMES))


def exemplar_request(bundle, n=4):
    return request_from_attacks(bundle.preprocess, text_exemplars(with_world(bundle), "ipod", n))


def state(bundle):
    return {k: v.clone() for k, v in bundle.model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- head ablation -----------------------------------------------------------------------------------------
def test_attention_sites_of_vit_and_resnet(tiny_vit, tiny_rn):
    vit = attention_sites(tiny_vit)
    assert [s.name for s in vit] == [f"visual.transformer.resblocks.{i}.attn" for i in range(2)]
    assert all(s.proj.endswith("attn.out_proj") and s.n_heads == 2 for s in vit)
    [pool] = attention_sites(tiny_rn)
    assert pool.name == "visual.attnpool" and pool.proj == "visual.attnpool.c_proj"


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_rn"])
def test_head_scores_are_the_share_of_attention_on_the_text(fixture, request):
    bundle = request.getfixturevalue(fixture)
    req = exemplar_request(bundle)
    sites = attention_sites(bundle)
    scores = head_scores(bundle, sites, req)
    for s in sites:
        assert scores[s.name].shape == (s.n_heads,)
        assert ((scores[s.name] > 0) & (scores[s.name] < 1)).all()
    everywhere = dataclasses.replace(req, mask=torch.ones_like(req.mask))
    for s in sites:  # text everywhere: all of a head's attention over image locations lands on it
        torch.testing.assert_close(head_scores(bundle, sites, everywhere)[s.name], torch.ones(s.n_heads))


def test_ablation_file_zeroes_heads_and_reverts_bit_exactly(tiny_vit, tmp_path):
    original = state(tiny_vit)
    sites = attention_sites(tiny_vit)
    chosen = [(sites[0], 1), (sites[1], 0)]
    path = save_edits(tmp_path / "heads.safetensors", EditSet(ablation_edits(tiny_vit, sites, chosen)))
    loaded = load_edits(path)  # the file `clipedit apply` / `revert` read
    assert [e.meta["heads"] for e in loaded.edits] == [[1], [0]]
    apply_edit_set(tiny_vit.model, loaded)
    w0 = get_module(tiny_vit.model, sites[0].proj).weight
    assert torch.equal(w0[:, 32:], torch.zeros_like(w0[:, 32:])) and w0[:, :32].abs().sum() > 0
    with pytest.raises(EditError, match="other weights"):
        apply_edit_set(tiny_vit.model, loaded)  # already applied: the weights are not the original ones
    revert_edit_set(tiny_vit.model, loaded)
    assert same(state(tiny_vit), original)


def test_greedy_ablation_keeps_only_heads_that_help_within_tolerance(tiny_rn):
    bundle = with_world(tiny_rn)
    original = state(bundle)
    result = ablate_heads(bundle, exemplar_request(bundle), ["ipod"], HeadAblationHParams(n_val=6, patience=2))
    kept = [s for s in result.steps if s["kept"]]
    assert [(s["site"], s["head"]) for s in kept] == result.heads
    scores = [s["score"] for s in result.steps]
    assert scores == sorted(scores, reverse=True)  # tried in score order
    accuracies = [s["text_acc"] for s in kept]
    assert accuracies == sorted(set(accuracies))  # each kept head raised the defended word's accuracy
    proj = get_module(bundle.model, "visual.attnpool.c_proj").weight
    width = proj.shape[1] // attention_sites(bundle)[0].n_heads
    for _, head in result.heads:  # the kept heads are zeroed, the model is otherwise unchanged
        assert torch.equal(proj[:, head * width:(head + 1) * width], torch.zeros_like(proj[:, :width]))
    if result.edit_set is None:
        assert not result.heads and same(state(bundle), original)
    else:
        assert result.edit_set.meta["heads"] == result.heads
        revert_edit_set(bundle.model, result.edit_set)
        assert same(state(bundle), original)


# -- PAINT ----------------------------------------------------------------------------------------------
def test_interpolation_endpoints_and_midpoint(tiny_rn):
    tower = tiny_rn.image_module
    theta0 = {k: v.clone() for k, v in tower.state_dict().items()}
    theta1 = {k: v + 1 if v.is_floating_point() else v for k, v in theta0.items()}
    interpolate_(tower, theta0, theta1, 1.0)
    assert all(torch.equal(tower.state_dict()[k], theta1[k]) for k in theta0)
    interpolate_(tower, theta0, theta1, 0.25)
    k = next(k for k, v in theta0.items() if v.is_floating_point())
    torch.testing.assert_close(tower.state_dict()[k], theta0[k] + 0.25)
    interpolate_(tower, theta0, theta1, 0.0)
    assert all(torch.equal(tower.state_dict()[k], theta0[k]) for k in theta0)


def test_paint_picks_lr_checkpoint_and_alpha_on_validation_and_leaves_the_model_there(tiny_rn):
    bundle = with_world(tiny_rn)
    tower = bundle.image_module
    theta0 = {k: v.clone() for k, v in tower.state_dict().items()}
    hp = PaintHParams(alphas=(0.0, 0.5, 1.0), lrs=(1e-5, 1e-3), n_train=8, epochs=1, batch_size=4, n_val=6,
                      n_signs=6, checkpoints=2)
    result = paint(bundle, hp)
    grid = {(r["lr"], r["step"], r["alpha"]) for r in result.rows}
    assert grid == {(lr, s, a) for lr in (1e-5, 1e-3) for s in (1, 2) for a in (0.0, 0.5, 1.0)}
    means = [(r["patch_acc"] + r["supported_acc"]) / 2 for r in result.rows]
    first_best = result.rows[means.index(max(means))]  # the rule: highest mean, ties to the first row
    assert (result.lr, result.step, result.alpha) == (first_best["lr"], first_best["step"], first_best["alpha"])
    assert all(r["n"] == 6 and r["n_signs"] == 6 and "reading_acc" in r for r in result.rows)
    assert "reading" not in result.rule and "supported-task" in result.rule
    budget = result.details["budget"]
    assert budget["per_lr"] == {"images_seen": 8, "steps": 2, "batch": 4, "warmup": 1}
    assert budget["images_seen"] == 16 and budget["optimizer_steps"] == 4 and budget["settings_tried"] == 12
    changed = any(not torch.equal(tower.state_dict()[k], theta0[k]) for k in theta0)
    assert changed == (result.alpha > 0)  # the tower stays at θ₀ exactly when α = 0 was chosen
    with pytest.raises(ClipeditError, match="alphas must"):  # refused by PaintHParams's schema, before training
        paint(bundle, PaintHParams(alphas=(1.5,)))
    with pytest.raises(ClipeditError, match="lrs must"):
        paint(bundle, PaintHParams(lrs=(0.0,)))


def test_paint_schedule_reaches_the_images_it_is_asked_for():
    hp = PaintHParams(n_train=100, batch_size=128, epochs=10)
    assert schedule(100, hp) == (100, 10, 1) and paint_images(100, hp) == 1000  # batch capped at the split
    floor = dataclasses.replace(hp, min_images=25_600)
    batch, steps, warmup = schedule(100, floor)
    assert steps == 256 and warmup == 25 and paint_images(100, floor) >= 25_600
    assert schedule(100_000, PaintHParams(min_images=10))[2] == 500  # the published warm-up at full scale
    for n in (999, 1000, 1001):  # the last batch of a pass is shorter: still at least the images asked for
        asked = dataclasses.replace(hp, n_train=n, min_images=1_240_000)
        assert 1_240_000 <= paint_images(n, asked) < 1_240_000 + 128


@pytest.mark.slow
def test_paint_theta1_learns_the_patching_task_through_a_frozen_head():
    from clipedit.models import load_model

    bundle = load_model("mini", device="cpu")
    predictor = make_predictor(bundle, list(bundle.world.classnames))
    head = predictor.weights.clone()
    text = {k: v.clone() for k, v in bundle.model.state_dict().items() if not k.startswith("visual.")}
    hp = PaintHParams(alphas=(0.0, 1.0), lrs=(1e-4,), n_train=96, batch_size=32, epochs=8, checkpoints=1,
                      n_val=60, n_signs=0)
    train = typographic_training_set(bundle, hp.n_train, 0)
    val = validation_sets(bundle, hp.n_val)
    result = paint(bundle, hp, train=train, val=val, predictor=predictor)
    curve = result.details["loss_curve"][str(1e-4)]
    assert curve[-1] < 0.8 * curve[0]  # θ₁'s training loss falls (measured 2.07 -> 0.33)
    at = {r["alpha"]: r for r in result.rows}
    # θ₁ reads 6+ more of the 60 validation notes right (measured 18 -> 42)
    assert at[1.0]["patch_acc"] * 60 >= at[0.0]["patch_acc"] * 60 + 6
    assert torch.equal(predictor.weights, head)  # the zero-shot head is frozen: bit-identical
    after = bundle.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in text.items())  # the text tower too


def test_paint_alpha_rule_on_a_synthetic_curve():
    def rows(patch, supported):
        return [{"alpha": a / 10, "patch_acc": p, "supported_acc": s} for a, (p, s) in enumerate(zip(patch, supported))]

    # mean of patching and supported accuracy: 0.50, 0.60, 0.65, 0.60 -> α = 0.2
    assert choose_alpha(rows([0.3, 0.5, 0.6, 0.7], [0.7, 0.7, 0.7, 0.5])) == 2
    # a tie goes to the smaller α (the model nearer θ₀)
    assert choose_alpha(rows([0.4, 0.5, 0.6], [0.8, 0.7, 0.6])) == 0
    assert len(ALPHAS) == 11 and ALPHAS[1] == 0.1 and ALPHAS[-1] == 1.0
    lrs = [cosine_lr(s, 1.0, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.001 and lrs == lrs[:10] + sorted(lrs[10:], reverse=True)


@pytest.mark.slow
@dataclasses.dataclass
class ShortPrefix(DefensePrefixHParams):
    steps: Optional[int] = 3


@dataclasses.dataclass
class ShortFinetune(FinetuneHParams):
    steps: int = 5


def test_peers_run_through_the_dispatcher(tiny_rn, monkeypatch):
    assert {"head-ablation-weights", "paint", "dyslexify"} <= set(METHODS)
    small = {"alphas": (0.0, 1.0), "lrs": (1e-3,), "n_val": 6, "n_signs": 6, "n_train": 8, "epochs": 1,
             "batch_size": 4, "checkpoints": 1}  # a small validation grid
    for name, cls in (("defense-prefix", ShortPrefix), ("finetune-global", ShortFinetune)):  # the peer budget
        monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], hparams_cls=cls))  # PAINT must reach
    bundle = with_world(tiny_rn)
    original = state(bundle)
    config = DefenseConfig(method="paint", renders=4, hparams=small)
    defense = defend(bundle, "ipod", config)
    assert defense.method == "paint" and not defense.exemplars  # it draws its own training split
    budget = defense.details["budget"]
    assert budget["peer_images"] == {"defense-prefix": 3 * 8, "finetune-global": 5 * 4}  # steps x images a step
    assert budget["meets_peers"] and budget["per_lr"]["images_seen"] == 24 and budget["seconds"] > 0
    curve = defense.details["alpha_curve"]
    best = max(curve, key=lambda r: (r["patch_acc"] + r["supported_acc"]) / 2)
    assert defense.details["alpha"] == best["alpha"] and [r["alpha"] for r in curve] == [0.0, 1.0]
    changed = not same(state(bundle), original)
    assert changed == (defense.details["alpha"] > 0)
    few = {"n_val": 6, "patience": 1}
    ablated = defend(with_world(tiny_rn), "ipod", DefenseConfig(method="head-ablation-weights", renders=4, hparams=few))
    assert ablated.method == "head-ablation-weights"
    assert (ablated.edit_set is None) == (not ablated.details["heads"])
    if ablated.edit_set is not None:
        assert ablated.layer == "visual.attnpool.c_proj" == ablated.edit_set.layers[0]
    with pytest.raises(ClipeditError, match="no labelled world"):
        defend(tiny_rn, "ipod", DefenseConfig(method="head-ablation-weights", renders=2))
    with pytest.raises(ClipeditError, match="class token"):
        defend(with_world(tiny_rn), "ipod", DefenseConfig(method="dyslexify", renders=2))


# -- reading kept ----------------------------------------------------------------------------------------
def test_signs_are_seeded_balanced_and_split_apart():
    world = MiniWorld()
    images, labels = world.signs(24, seed=5)
    again, _ = world.signs(24, seed=5)
    assert np.array_equal(np.asarray(images[3]), np.asarray(again[3]))
    assert sorted(labels) == sorted(list(range(len(CLASSNAMES))) * 2)
    assert images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    val, test = sign_set(world, 12, "validation"), sign_set(world, 12, "test")
    assert not np.array_equal(np.asarray(val.images[0]), np.asarray(test.images[0]))
    plain, plain_labels = plain_signs(["cat", "dog"], 4, seed=1, size=48)
    assert sorted(plain_labels) == [0, 0, 1, 1] and plain[0].size == (48, 48)
    with pytest.raises(ClipeditError, match="class names"):
        sign_set(None, 4)


def test_the_mini_clip_reads_signs_far_above_chance():
    from clipedit.models import load_model

    bundle = load_model("mini", device="cpu")
    signs = sign_set(bundle.world, 48, "validation")
    accuracy = reading_accuracy(bundle, make_predictor(bundle, signs.classnames), signs)
    assert accuracy > 3 / len(CLASSNAMES)  # chance is 1/12; it was trained on signs
