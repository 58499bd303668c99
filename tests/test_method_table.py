"""The method table is the one place a method lives: a toy method registered there runs through
``defend``, ``sweep`` and ``compare`` with no other change, and its properties decide how each runs it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from clipedit.core import LayerEdit, RewriteHParams, resolve_site
from clipedit.core.edit_sets import EditSet, apply_edit_set
from clipedit.core.hparams import HParams
from clipedit.defenses.typographic import defend
from clipedit.errors import ClipeditError
from clipedit.methods.registry import METHODS, register_method
from clipedit.methods.spec import DefenseResult, MethodSpec, budget
from clipedit.mini.world import CLASSNAMES, MiniWorld
from clipedit.selection.compare import CompareSettings, compare, compare_methods
from clipedit.selection.sweep import SweepSettings, sweep


def with_world(bundle):
    return dataclasses.replace(bundle, world=MiniWorld(), classnames=list(CLASSNAMES))


CALLS: list[dict] = []


def zero_columns(bundle, data, hparams: RewriteHParams, context) -> DefenseResult:
    """Toy: zero the first ``rank`` input columns of each site's weight (one rank-r edit per site)."""
    CALLS.append({"sites": context.sites, "rank": hparams.rank, "images": data.images, "words": list(data.words)})
    edits = []
    for name in context.sites:
        w = resolve_site(bundle.model, name).weight.detach()
        d = torch.eye(w.shape[1])[:, :hparams.rank]
        edits.append(LayerEdit.create(name, -w @ d, d, w, {"method": "toy"}))
    edit_set = EditSet(edits, {"method": "toy"})
    apply_edit_set(bundle.model, edit_set)
    details = {"selection": {"rule": "none", "tolerance": None}, "budget": budget(data.images, 0, 1)}
    return DefenseResult("toy", ",".join(context.sites), edit_set=edit_set, details=details)


@dataclasses.dataclass
class NoSettings(HParams):
    n_train: int = 4


def word_agnostic_toy(bundle, data, hparams: NoSettings, context) -> DefenseResult:
    CALLS.append({"agnostic": True, "n_train": hparams.n_train, "words": list(data.words)})
    return DefenseResult("toy-any", "none", details={"budget": budget(hparams.n_train, 2, 1)})


@pytest.fixture
def toys():
    specs = {"toy": MethodSpec(RewriteHParams, zero_columns, model_defaults=True, sweepable=True),
             "toy-any": MethodSpec(NoSettings, word_agnostic_toy, word_agnostic=True, exemplars=False,
                                   needs_world=True)}
    CALLS.clear()
    for name, spec in specs.items():
        register_method(name, spec)
    try:
        yield specs
    finally:
        for name in specs:
            METHODS.pop(name, None)


def test_register_refuses_a_second_method_of_the_same_name(toys):
    with pytest.raises(ClipeditError, match="already in the table"):
        register_method("toy", MethodSpec(RewriteHParams, zero_columns))
    with pytest.raises(ClipeditError, match="MethodSpec"):
        register_method("other", zero_columns)
    assert {"toy", "toy-any"} <= set(compare_methods())


def test_a_registered_method_runs_through_defend(toys, tiny_vit):
    bundle = with_world(tiny_vit)
    site = "visual.transformer.resblocks.0.mlp.c_proj"
    defense = defend(bundle, "ipod", {"method": "toy", "layer": site, "rank": 3, "renders": 2})
    assert defense.method == "toy" and CALLS == [{"sites": (site,), "rank": 3, "images": 2, "words": ["ipod"]}]
    w = resolve_site(bundle.model, site).weight
    assert torch.equal(w[:, :3], torch.zeros_like(w[:, :3])) and defense.details["budget"]["seconds"] >= 0
    CALLS.clear()
    defend(with_world(tiny_vit), "ipod", {"method": "toy-any", "renders": 2})
    assert CALLS == [{"agnostic": True, "n_train": 4, "words": ["ipod"]}]  # no exemplars rendered for it
    with pytest.raises(ClipeditError, match="no labelled world"):
        defend(tiny_vit, "ipod", {"method": "toy-any", "renders": 2})


def test_a_registered_method_runs_through_sweep(toys, tiny_vit):
    bundle = with_world(tiny_vit)
    sites = ["visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.mlp.c_proj"]
    result = sweep(bundle, ["ipod"], SweepSettings(sites=sites, ranks=[1, 2], n_val=4, n_signs=0),
                   {"method": "toy", "renders": 2})
    assert [(r["method"], r["site"], r["rank"]) for r in result.rows] == [
        ("toy", s, r) for s in sites for r in (1, 2)]
    assert [c["rank"] for c in CALLS] == [1, 2, 1, 2]  # one run of the method per candidate
    with pytest.raises(ClipeditError, match="not swept"):
        sweep(bundle, ["ipod"], SweepSettings(sites=sites[:1], ranks=[1], n_val=4, n_signs=0),
              {"method": "toy-any", "renders": 2})


def test_a_registered_method_runs_through_compare(toys, tiny_vit):
    bundle = with_world(tiny_vit)
    settings = CompareSettings(methods=("toy", "toy-any"), words=("ipod", "mug"), seeds=(0, 1), n_test=4,
                               n_signs=0, n_train=6, n_val=4, hparams={"toy": {"rank": 2}})
    record = compare(bundle, settings)
    assert set(record["cells"]) == {"unedited", "toy", "toy-any"}
    assert set(record["details"]["toy"]) == {"0:ipod", "0:mug", "1:ipod", "1:mug"}  # word-specific: per word
    assert set(record["details"]["toy-any"]) == {"0", "1"}  # word-agnostic: once a seed, scored on every word
    assert [c["rank"] for c in CALLS if "rank" in c] == [2, 2, 2, 2]
    assert [c["n_train"] for c in CALLS if c.get("agnostic")] == [6, 6]  # compare's n_train, through the field
    assert record["budget"]["toy-any"]["images_seen"] == 6 and record["budget"]["toy-any"]["runs"] == 2
    assert record["budget"]["toy"]["runs"] == 4 and record["budget"]["toy"]["word_agnostic"] is False
    held = record["word_split"]["heldout"]
    assert held and not set(held) & {"ipod", "mug"}


# -- the word-disjoint split -------------------------------------------------------------------------------
def test_word_split_keeps_held_out_words_out_of_every_method(tiny_vit):
    from clipedit.data.prepare.typo_train import typographic_training_set
    from clipedit.data.prepare.word_split import WordSplitWorld, word_split
    from clipedit.eval.pick import heldout_data
    from clipedit.methods.any_word import vocabulary_of
    from clipedit.settings.resolve import resolve_config

    split = word_split(CLASSNAMES, ["ipod", "mug"], seed=0)
    assert split == word_split(CLASSNAMES, ["mug", "ipod"], seed=0)  # by word, not by list order
    assert not set(split.heldout) & set(split.trainable)
    assert set(split.heldout) | set(split.trainable) == set(CLASSNAMES)
    assert {"ipod", "mug"} <= set(split.trainable) and 1 <= len(split.heldout) < len(CLASSNAMES) - 2
    assert any(word_split(CLASSNAMES, ["ipod"], seed=s).heldout != split.heldout for s in range(1, 6))
    bundle = dataclasses.replace(with_world(tiny_vit), world=WordSplitWorld(MiniWorld(), split))
    attacks, _ = bundle.world.attack_set(40, 3, "other", split="validation")
    assert {a.text for a in attacks} <= set(split.trainable)  # what methods train and validate on
    train = typographic_training_set(bundle, 40, 0)
    assert set(train.words) <= set(split.trainable)
    vocabulary = vocabulary_of(bundle, resolve_config(bundle, {"method": "edit-any-word"}))
    words = {w.lower() for w in vocabulary.exemplar_words + vocabulary.heldout_words}
    assert not words & set(split.heldout)  # '*' renders none of them, nor evaluates on them as its own
    test = heldout_data(with_world(tiny_vit), ["ipod"], 30, split="test", other_words=split.heldout)
    assert {a.text for a in test.sets.other[0]} <= set(split.heldout)  # unseen words: held-out words only
    with pytest.raises(ClipeditError, match="two or more class words"):
        word_split(["ipod", "mug", "apple"], ["ipod", "mug"])


def test_the_rewrite_against_any_word_is_a_word_agnostic_method_of_the_table(tiny_vit):
    spec = METHODS["edit-any-word"]
    assert spec.word_agnostic and spec.any_word and "edit-any-word" in compare_methods()
    defense = defend(with_world(tiny_vit), "ipod", {"method": "edit-any-word", "vocab_words": 3, "renders": 2,
                                                   "n_reference": 8})
    assert defense.method == "edit-any-word" and defense.words == ["*"] and defense.edit_set is not None
    spent = defense.details["budget"]
    assert spent["images_seen"] == 2 * spent["words"] and spent["reference_images"] == 8  # renders x words
    assert spent["words"] == len(defense.vocabulary.exemplar_words) >= 3  # the class names are always among them
    assert spent["offline_settings"] == 0  # tiny-vit's '*' defaults were never tuned


@pytest.mark.slow  # about 20 s: three trained methods on the mini CLIP
def test_compare_gives_paint_at_least_the_training_images_of_its_peers():
    from clipedit.models import load_model

    settings = CompareSettings(methods=("paint", "defense-prefix", "finetune-global"), words=("ipod",), seeds=(0,),
                               n_test=6, n_signs=0, n_train=12, n_val=6,
                               hparams={"defense-prefix": {"steps": 3, "lrs": [0.02]}, "finetune-global": {"steps": 2},
                                        "paint": {"lrs": [1e-3], "checkpoints": 1, "alphas": [0.0, 1.0]}})
    record = compare(load_model("mini", device="cpu"), settings)
    paint = record["details"]["paint"]["0"]["budget"]
    renders = record["details"]["finetune-global"]["0:ipod"]["budget"]["train_images"]
    assert paint["peer_images"] == {"defense-prefix": 3 * 12, "finetune-global": 2 * renders}  # as they were given
    assert paint["meets_peers"] and paint["per_lr"]["images_seen"] >= max(paint["peer_images"].values())
    spent = record["budget"]
    assert spent["paint"]["images_seen"] >= spent["finetune-global"]["images_seen"]
    assert spent["paint"]["images_seen"] >= spent["defense-prefix"]["images_seen"]
    assert spent["finetune-global"]["images_seen"] == 2 * renders and spent["defense-prefix"]["optimizer_steps"] == 3
