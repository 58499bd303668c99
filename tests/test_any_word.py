"""One edit against any written word (``defend --text '*'``): the vocabulary's split, multi-site edit
files, and the edit's effect on words it never saw (bundled mini CLIP, small sets)."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

from clipedit.core import RewriteHParams
from clipedit.core.edit_sets import EditSet, apply_edit_set, load_edits, revert_edit_set, save_edits
from clipedit.data.prepare.vocabulary import build_vocabulary, is_heldout, random_strings, read_word_list
from clipedit.defenses.typographic import DefenseConfig, defend
from clipedit.errors import ClipeditError, EditError
from clipedit.io import read_safetensors_metadata
from clipedit.models import save_state_dict

RN_SITES = ("visual.layer2.0.conv3", "visual.layer3.0.conv3")
WORDS = "apple ball car mug clock key star house tree fish umbrella ipod zebra lemon tiger piano".split()


@pytest.fixture
def word_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# a user's words\n" + "\n".join(f"{a}, {b}" for a, b in zip(WORDS[::2], WORDS[1::2])) + "\n")
    return path


def test_vocabulary_never_renders_a_held_out_word(word_file):
    classnames = ("ipod", "mug", "apple", "ball", "car")
    for kwargs in ({"n_words": 64}, {"n_words": 300, "seed": 3}, {"n_words": 8, "words_file": word_file}):
        vocab = build_vocabulary(classnames, **kwargs)
        assert vocab.heldout_words and vocab.exemplar_words
        assert not set(vocab.exemplar_words) & set(vocab.heldout_words)
        assert not any(is_heldout(w) for w in vocab.exemplar_words)
        assert all(is_heldout(w) for w in vocab.heldout_words)
        assert set(vocab.heldout_classnames) == {c for c in classnames if is_heldout(c)}
    # the split is a property of the word: held out in one vocabulary, never an exemplar in another
    small, large = build_vocabulary(classnames, n_words=64), build_vocabulary(classnames, n_words=600, seed=1)
    assert not set(small.heldout_words) & set(large.exemplar_words)
    words = build_vocabulary((), n_words=400).exemplar_words
    assert all(w.isascii() and w.isalpha() and 3 <= len(w) <= 12 for w in words)
    assert any(w in words for w in random_strings(200))  # random letter strings are among them


def test_word_list_file(word_file, tmp_path):
    assert read_word_list(word_file) == WORDS
    vocab = build_vocabulary((), n_words=100, words_file=word_file)
    assert sorted(vocab.exemplar_words + vocab.heldout_words) == sorted(WORDS) and vocab.source == str(word_file)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ClipeditError, match="holds no words"):
        build_vocabulary((), words_file=tmp_path / "empty.txt")
    with pytest.raises(ClipeditError, match="not found"):
        build_vocabulary((), words_file=tmp_path / "missing.txt")


@pytest.mark.slow
def test_multisite_edit_file_applies_and_reverts_bit_exactly(tiny_rn, word_file, image_folder, tmp_path):
    original = copy.deepcopy(tiny_rn.model.state_dict())
    config = DefenseConfig(hparams=RewriteHParams(rank=4), vocab=word_file, vocab_words=6, renders=2,
                           reference=image_folder / "cat", sites=RN_SITES)
    defense = defend(tiny_rn, "*", config)
    assert defense.edit is None and defense.edit_set.layers == list(RN_SITES)
    assert all(e.rank == 4 for e in defense.edit_set.edits)
    edited = copy.deepcopy(tiny_rn.model.state_dict())
    assert all(not torch.equal(original[f"{s}.weight"], edited[f"{s}.weight"]) for s in RN_SITES)
    # the second site was solved with the first applied: its original weight is the unedited one
    assert torch.equal(defense.edit_set.edits[1].orig_weight, original[f"{RN_SITES[1]}.weight"])

    path = save_edits(tmp_path / "star.safetensors", defense.edit_set)
    loaded = load_edits(path)
    assert loaded.layers == list(RN_SITES) and loaded.meta["words"] == ["*"]
    revert_edit_set(tiny_rn.model, loaded)
    assert all(torch.equal(v, tiny_rn.model.state_dict()[k]) for k, v in original.items())
    apply_edit_set(tiny_rn.model, loaded)
    assert all(torch.equal(v, tiny_rn.model.state_dict()[k]) for k, v in edited.items())

    # a refused site leaves the model as it was: the later site, already reverted, is applied again
    first = tiny_rn.model.get_submodule(RN_SITES[0]).weight
    with torch.no_grad():
        first[0, 0, 0, 0] += 1.0
    with pytest.raises(EditError, match="does not hold"):
        revert_edit_set(tiny_rn.model, loaded)
    assert torch.equal(tiny_rn.model.state_dict()[f"{RN_SITES[1]}.weight"], edited[f"{RN_SITES[1]}.weight"])
    with pytest.raises(EditError, match="at least one"):
        save_edits(tmp_path / "empty.safetensors", EditSet([]))

    # a tampered site is refused when the file is read
    tensors = load_file(str(path))
    tensors["1.lambda"] = tensors["1.lambda"] * 1.01
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=read_safetensors_metadata(path))
    with pytest.raises(EditError, match="corrupt or was altered"):
        load_edits(tmp_path / "bad.safetensors")


@pytest.mark.slow
def test_cli_any_word_multisite_revert_is_bit_exact(tiny_rn, word_file, image_folder, tmp_path, capsys, monkeypatch):
    base = save_state_dict(tmp_path / "base.safetensors", tiny_rn.model.state_dict())
    from clipedit.settings import defaults

    table = copy.deepcopy(defaults.defaults_table())
    table["edit-any-word"]["families"]["ModifiedResNet"] = defaults.AnyWordDefaults(
        words=6, renders=2, rank=4, mask="text", sites=[s.removeprefix("visual.") for s in RN_SITES], keep_reading=0.0,
        class_token="off")
    monkeypatch.setattr(defaults, "defaults_table", lambda: table)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["defend", "--model", "tiny-rn", "--checkpoint", base, "--text", "*", "--vocab",
                                 word_file, "--rank", "3", "--reference", image_folder / "cat", "--no-eval",
                                 "--out", out], capsys)
    assert code == 0, err
    edit_set = load_edits(out / "edit.safetensors")
    assert edit_set.layers == list(RN_SITES) and [e.rank for e in edit_set.edits] == [3, 3]
    code, _, err = run_cli(["revert", out / "edit.safetensors", "--model", "tiny-rn", "--checkpoint",
                            out / "model.safetensors", "--out", tmp_path / "restored.safetensors"], capsys)
    assert code == 0, err
    before, restored = load_file(str(base)), load_file(str(tmp_path / "restored.safetensors"))
    assert all(np.array_equal(before[k].numpy(), restored[k].numpy()) for k in before)
    code, _, err = run_cli(["defend", "--model", "tiny-rn", "--checkpoint", base, "--text", "ipod", "--vocab",
                            word_file, "--no-eval", "--out", tmp_path / "x"], capsys)
    assert code != 0 and "--vocab goes with --text '*'" in err


@pytest.mark.slow
def test_any_word_edit_lifts_words_it_never_saw():
    """'*' on the mini CLIP: notes writing held-out class names (never exemplars), in held-out styles."""
    from clipedit import load_model
    from clipedit.eval.metrics import evaluate_attacks
    from clipedit.eval.predictor import make_predictor
    from clipedit.mini.world import attack_set

    base = load_model("mini", device="cpu")
    vocab = build_vocabulary(base.classnames, n_words=48)
    assert vocab.heldout_classnames
    attacks, labels = attack_set(120, seed=777, words=list(vocab.heldout_classnames))
    predictor = make_predictor(base, base.classnames)
    before = evaluate_attacks(base, predictor, attacks, labels, progress=False)
    edited = dataclasses.replace(base, model=copy.deepcopy(base.model))
    defend(edited, "*", DefenseConfig(vocab_words=48, renders=4, n_reference=128))
    after = evaluate_attacks(edited, predictor.with_bundle(edited), attacks, labels, progress=False)
    lift = f"text-note accuracy {before['text_acc']:.3f} -> {after['text_acc']:.3f}"
    # mini's '*' default keeps reading (keep_reading 3, the reading rule's pick): it lifts less than it did at
    # keep_reading 0 (measured: 30.8% -> 42.5%)
    assert after["text_acc"] >= before["text_acc"] + 0.08, lift
    assert after["clean_acc"] >= before["clean_acc"] - 0.02, f"clean {before['clean_acc']} -> {after['clean_acc']}"
