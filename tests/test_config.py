"""One configuration (resolve_config), one method table (settings from Python and from --hparams FILE.json),
and Python parity (defend(..., evaluate=…) gives the CLI's before/after figures)."""
from __future__ import annotations

import json

import pytest
from conftest import run_error, run_ok

import clipedit
from clipedit.core import RewriteHParams
from clipedit.errors import ClipeditError
from clipedit.eval.results import drop_predictions
from clipedit.methods.finetune import FinetuneHParams
from clipedit.methods.head_ablation import HeadAblationHParams
from clipedit.methods.paint import PaintHParams
from clipedit.methods.registry import METHODS
from clipedit.methods.spec import MethodSpec
from clipedit.settings import defaults
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import defaults_for
from clipedit.settings.resolve import resolve_config

VIT_C_PROJ = "visual.transformer.resblocks.0.mlp.c_proj"


@pytest.fixture(scope="module")
def mini_vit():
    return clipedit.load_model("mini-vit", device="cpu")


LATER_C_PROJ = "visual.transformer.resblocks.2.mlp.c_proj"


def test_one_rule_for_sites_and_defaults(mini_vit):
    d = defaults_for(mini_vit)
    assert d.sites == (LATER_C_PROJ,) and d.keep_targets == 3.0 and d.class_token == "only"  # reading rule's pick
    plain = resolve_config(mini_vit)
    assert plain.sites == d.sites and plain.hparams.keep_targets == 3.0 and plain.mask == "label"
    assert plain.hparams.layer is None  # the sites say where the rewrite acts, once
    ranked = resolve_config(mini_vit, {"rank": 4})  # a given rank keeps the default sites and keep_targets
    assert ranked.sites == d.sites and ranked.hparams.rank == 4 and ranked.hparams.keep_targets == 3.0
    one = resolve_config(mini_vit, {"layer": VIT_C_PROJ})
    assert one.sites == (VIT_C_PROJ,) and one.hparams.layer is None and one.hparams.keep_targets == 3.0
    two = resolve_config(mini_vit, {"layer": f"{d.sites[0]} + {VIT_C_PROJ}"})  # "+" joins sites into one edit
    assert two.sites == (d.sites[0], VIT_C_PROJ)
    explicit = resolve_config(mini_vit, DefenseConfig(hparams=RewriteHParams(layer=VIT_C_PROJ, rank=2)))
    assert explicit.sites == (VIT_C_PROJ,) and explicit.hparams.keep_targets == 0.0  # given in full: as given
    optimize = resolve_config(mini_vit, {"solver": "optimize", "steps": 3})
    assert optimize.sites == (d.layer,) and optimize.hparams.keep_targets == 0.0 and optimize.hparams.steps == 3
    tuned = resolve_config(mini_vit, {"method": "finetune-local", "steps": 2, "lr": None})
    assert tuned.sites == (d.layer,) and tuned.hparams == FinetuneHParams(steps=2)
    star = resolve_config(mini_vit, any_word=True)
    assert star.any_word and star.sites == (LATER_C_PROJ,) and star.mask == "text" and star.vocab_words == 256
    assert star.hparams.class_token == "only" and star.hparams.keep_reading == 1.0  # its own '*' file
    assert resolve_config(mini_vit, plain).to_dict() == plain.to_dict()  # resolving twice changes nothing
    with pytest.raises(ClipeditError, match="unknown defense setting"):
        resolve_config(mini_vit, {"rnak": 3})
    with pytest.raises(ClipeditError, match="solved in closed form"):
        resolve_config(mini_vit, {"solver": "optimize", "layer": f"{d.sites[0]}+{VIT_C_PROJ}"})


def test_defaults_are_read_once(mini_vit):
    defaults.defaults_table.cache_clear()
    for overrides in ({}, {"rank": 2}, {"method": "paint"}):
        resolve_config(mini_vit, overrides)
    resolve_config(mini_vit, any_word=True)
    assert defaults.defaults_table.cache_info().misses == 1


def test_every_method_takes_its_settings_from_python(tiny_rn):
    assert all(isinstance(spec, MethodSpec) for spec in METHODS.values())
    assert {"edit", "finetune-local", "finetune-global", "head-ablation-weights", "paint"} <= set(METHODS)
    for name, spec in METHODS.items():
        hp = spec.hparams_cls()
        assert spec.hparams_cls.from_dict(hp.to_dict()) == hp, name
    paint = resolve_config(tiny_rn, {"method": "paint", "hparams": {"alphas": [0.0, 0.5], "n_val": 4}})
    assert paint.hparams == PaintHParams(alphas=(0.0, 0.5), n_val=4)  # one settings object: the method's
    with pytest.raises(ClipeditError, match="unknown defense setting.*rank.*PaintHParams"):
        resolve_config(tiny_rn, {"method": "paint", "rank": 3})  # the rewrite's setting is not PAINT's
    given = HeadAblationHParams(patience=1)
    heads = resolve_config(tiny_rn, DefenseConfig(method="head-ablation-weights", hparams=given))
    assert heads.hparams.patience == 1
    edit = resolve_config(tiny_rn, {"hparams": {"rank": 3, "keep_targets": 0.5}, "rank": 2})  # options over the file
    assert edit.hparams.rank == 2 and edit.hparams.keep_targets == 0.5
    with pytest.raises(ClipeditError, match="unknown setting.*of PaintHParams: nope"):
        resolve_config(tiny_rn, {"method": "paint", "hparams": {"nope": 1}})
    with pytest.raises(ClipeditError, match="unknown method 'nope'"):
        resolve_config(tiny_rn, {"method": "nope"})


def test_cli_hparams_file_reaches_the_method_and_is_recorded(tmp_path, capsys):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"max_heads": 1, "patience": 0, "n_val": 4}))
    out = tmp_path / "run"
    run_ok(capsys, "defend", "--model", "mini", "--method", "head-ablation-weights", "--hparams", path,
           "--renders", "2",
           "--no-eval", "--out", out)
    record = json.loads((out / "results.json").read_text())
    assert record["hparams"]["max_heads"] == 1 and record["hparams"]["n_val"] == 4
    assert record["config"]["method"] == "head-ablation-weights"
    path.write_text("{not json")
    assert "cannot read --hparams file" in run_error(capsys, "defend", "--model", "mini", "--method", "paint",
                                                    "--hparams", path, "--no-eval", "--out", tmp_path / "x")
    path.write_text(json.dumps({"alpha": 0.5}))
    assert "unknown setting(s) of PaintHParams: alpha" in run_error(
        capsys, "defend", "--model", "mini", "--method", "paint", "--hparams", path, "--no-eval",
        "--out", tmp_path / "x")


@pytest.mark.slow
def test_python_defend_gives_the_cli_figures_and_records_the_config(tmp_path, capsys):
    out = tmp_path / "run"
    run_ok(capsys, "defend", "--model", "mini", "--text", "ipod", "--renders", "4", "--n-eval", "12", "--out", out)
    record = json.loads((out / "results.json").read_text())
    bundle = clipedit.load_model("mini", device="cpu")
    before = clipedit.evaluate(bundle, "ipod", clipedit.EvalOptions(n=12))
    defense = clipedit.defend(bundle, "ipod", {"renders": 4}, evaluate=clipedit.EvalOptions(n=12))
    assert drop_predictions(defense.figures["before"]) == record["before"] == drop_predictions(before)
    assert drop_predictions(defense.figures["after"]) == record["after"]
    assert defense.config == record["config"]
    assert record["config"]["sites"] == ["visual.layer3.0.conv3", "visual.layer4.0.conv3"]
    edit_set = clipedit.load_edits(out / "edit.safetensors")
    assert edit_set.meta["config"] == record["config"] and edit_set.meta["config"]["hparams"]["rank"] == 32


def test_a_comma_in_a_layer_is_refused_and_names_the_joined_spelling(mini_vit):
    with pytest.raises(ClipeditError, match=r"is written 'a\+b' \(',' lists alternatives\)"):
        resolve_config(mini_vit, {"layer": "a,b"})
