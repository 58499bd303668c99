"""Defense-Prefix as published: the class-prefix hook member, its file, the prompts, training, CLI and bad input."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_error, run_ok

from clipedit.core import EditSet, load_edits, save_edits
from clipedit.core.prompt_edits import (
    PLACEHOLDER,
    ClassPrefix,
    class_prefix,
    placeholder_token_id,
    prefixed,
    token_embedding_name,
)
from clipedit.data.prepare.typo_train import correct, typographic_training_set, validation_sets
from clipedit.errors import ClipeditError, EditError
from clipedit.eval.predictor import make_predictor
from clipedit.eval.zeroshot import zero_shot_weights
from clipedit.methods.defense_prefix import DefensePrefixHParams, check_text_tower, defense_prefix
from clipedit.models import load_model

FAST = {"steps": 150, "lrs": [0.02], "n_train": 96, "n_val": 48, "batch_size": 64}


@pytest.fixture(scope="module")
def mini():
    return load_model("mini", device="cpu")


def embed(bundle, text):
    tokens = bundle.tokenizer([text])
    name = token_embedding_name(bundle.model)
    with torch.no_grad():
        return bundle.model.get_submodule(name)(tokens)[0], tokens[0]


def test_the_hook_swaps_only_the_placeholder_rows_and_reverts_bit_exactly(mini):
    model = mini.model
    layer = token_embedding_name(model)
    assert layer == "token_embedding"
    token = placeholder_token_id(mini.tokenizer)
    vector = torch.full((1, model.token_embedding.embedding_dim), 0.5)
    member = ClassPrefix(layer, vector, token, meta={"method": "defense-prefix"})
    classes, templates = mini.classnames[:3], mini.templates[:2]
    before = zero_shot_weights(model, mini.tokenizer, classes, templates)
    plain, ids = embed(mini, f"a photo of a {PLACEHOLDER} mug.")
    member.apply(model)
    try:
        assert class_prefix(model) == PLACEHOLDER and prefixed("mug", model) == "* mug"
        hooked, _ = embed(mini, f"a photo of a {PLACEHOLDER} mug.")
        at = ids == token
        assert int(at.sum()) == 1
        assert torch.equal(hooked[~at], plain[~at]) and torch.equal(hooked[at][0], vector[0])
        assert not torch.allclose(zero_shot_weights(model, mini.tokenizer, classes, templates), before)
        assert not member.exportable and "changes the prompts" in member.export_error()
        with pytest.raises(EditError, match="already applied"):
            member.apply(model)
    finally:
        member.revert(model)
    assert class_prefix(model) is None
    assert torch.equal(zero_shot_weights(model, mini.tokenizer, classes, templates), before)
    with pytest.raises(EditError, match="not applied"):
        member.revert(model)


def test_predictor_rebuilds_its_head_when_a_prefix_goes_on_or_off(mini):
    predictor = make_predictor(mini, mini.classnames)
    images = torch.randn(4, 3, 64, 64)
    base = predictor(images)
    member = ClassPrefix("token_embedding", torch.randn(1, 128), placeholder_token_id(mini.tokenizer))
    member.apply(mini.model)
    try:
        assert not torch.allclose(predictor(images), base)  # what is scored is what is applied
        assert not torch.allclose(predictor.with_bundle(mini)(images), base)
    finally:
        member.revert(mini.model)
    assert torch.allclose(predictor(images), base)


def test_file_round_trip_and_load_model_with_edits(mini, tmp_path):
    member = ClassPrefix("token_embedding", torch.randn(1, 128), placeholder_token_id(mini.tokenizer),
                         meta={"lr": 0.02}, model=mini.model)
    path = save_edits(tmp_path / "prefix.safetensors", EditSet.of([member], {"method": "defense-prefix"}))
    loaded = load_edits(path)
    again = loaded.edits[0]
    assert isinstance(again, ClassPrefix) and again.digest() == member.digest()
    assert torch.equal(again.vector, member.vector) and again.meta["placeholder"] == PLACEHOLDER
    assert not loaded.exportable
    edited = load_model("mini", device="cpu", edits=[path])
    assert class_prefix(edited.model) == PLACEHOLDER
    images = torch.randn(3, 3, 64, 64)
    member.apply(mini.model)
    try:
        expected = make_predictor(mini, mini.classnames)(images)
    finally:
        member.revert(mini.model)
    assert torch.allclose(make_predictor(edited, edited.classnames)(images), expected)
    with pytest.raises(EditError, match="width"):
        ClassPrefix("token_embedding", torch.randn(1, 64), 5).apply(mini.model)
    with pytest.raises(EditError, match="NaN"):
        ClassPrefix("token_embedding", torch.full((1, 128), float("nan")), 5)


@pytest.mark.slow
def test_training_raises_typographic_accuracy_on_validation_and_leaves_the_weights(mini):
    weights = {k: v.clone() for k, v in mini.model.state_dict().items()}
    hp = DefensePrefixHParams.from_dict(FAST)
    train = typographic_training_set(mini, hp.n_train, 0)
    val = validation_sets(mini, hp.n_val, 0)
    predictor = make_predictor(mini, train.classnames)
    before = correct(predictor, val.typo, val.labels)
    result = defense_prefix(mini, hp, train=train, val=val)
    try:
        assert result.member.is_applied(mini.model)
        row = result.rows[0]
        assert row["n"] == hp.n_val and row["lr"] == 0.02
        assert row["patch_acc"] * hp.n_val > before + 3  # at least 4 more of 48 scenes read right (measured: 11 -> 32)
        assert row["clean_acc"] >= 0.9
        assert all(torch.equal(v, weights[k]) for k, v in mini.model.state_dict().items())
        assert "validation" in result.rule
    finally:
        result.member.revert(mini.model)


@pytest.mark.slow
def test_defend_cli_writes_a_prefix_edit_that_audit_puts_on(tmp_path, capsys):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(FAST))
    out = tmp_path / "run"
    run_ok(capsys, "defend", "--model", "mini", "--text", "ipod", "--method", "defense-prefix", "--hparams", str(hp),
           "--n-eval", "24", "--out", str(out))
    files = sorted(out.glob("*.safetensors"))
    assert files, list(out.iterdir())
    edit_set = load_edits(files[0])
    assert [m.kind for m in edit_set.edits] == ["class-prefix"]
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert metrics["after_text_acc"] > metrics["text_acc"]  # measured 9 -> 16 of 24 notes read right
    assert metrics["after_clean_acc"] >= metrics["clean_acc"] - 1 / 24
    audit_out = tmp_path / "audit.json"
    run_ok(capsys, "audit", "--model", "mini", "--edit", str(files[0]), "--n", "12", "--out", str(audit_out))
    audited = json.loads(audit_out.read_text())
    assert audited["edits"] == [str(files[0])] and audited["metrics"]["n"] == 12


@pytest.mark.slow
def test_models_without_a_text_tower_are_refused_in_one_line(tmp_path, capsys):
    classifier = load_model("timm/resnet18:none", device="cpu")
    with pytest.raises(ClipeditError, match="no text tower"):
        check_text_tower(classifier)
    with pytest.raises(ClipeditError, match="no text tower"):
        defense_prefix(classifier)
    line = run_error(capsys, "defend", "--model", "timm/resnet18:none", "--text", "hello", "--method",
                     "defense-prefix", "--no-eval", "--out", str(tmp_path / "run"))
    assert "no text tower" in line
    assert not (tmp_path / "run").exists()


def test_bad_hparams_are_one_line(tmp_path, capsys):
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"lrs": [-1.0], "steps": 2, "n_train": 8, "n_val": 8}))
    line = run_error(capsys, "defend", "--model", "mini", "--text", "ipod", "--method", "defense-prefix",
                     "--hparams", str(hp), "--no-eval", "--out", str(tmp_path / "run"))
    assert "lrs must be a non-empty list of finite numbers, each > 0" in line
    assert not (tmp_path / "run").exists()


def test_apply_refuses_to_export_a_prefix_edit_as_weights(mini, tmp_path, capsys):
    member = ClassPrefix("token_embedding", torch.randn(1, 128), placeholder_token_id(mini.tokenizer),
                         model=mini.model)
    path = save_edits(tmp_path / "prefix.safetensors", member)
    out = tmp_path / "applied.safetensors"
    line = run_error(capsys, "apply", "--model", "mini", str(path), "--out", str(out))
    assert "class-prefix" in line and "load_model(..., edits=[FILE])" in line
    assert not out.exists()


def test_the_schedule_is_the_published_one_at_the_default_split_and_scales_with_it():
    from clipedit.methods.defense_prefix import images_seen, schedule_steps

    hp = DefensePrefixHParams()
    assert schedule_steps(1000, hp) == 2480 and schedule_steps(300, hp) == 744 and schedule_steps(10, hp) == 25
    assert images_seen(1000, hp) == 1240 * 1000  # two batches a pass (512 + 488), 1240 passes
    assert images_seen(300, hp) == 744 * 300 and schedule_steps(300, DefensePrefixHParams(steps=7)) == 7
