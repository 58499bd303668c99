"""The default files under clipedit/settings/hparams: each complete on its own (every field of its settings
class, nothing else), each value stated once, and the resolution giving what it gave before the files
existed (tests/data/resolved_settings.json: computed by the single defaults.json table and its merge of
default -> architecture -> model entry, for every bundled model and registered family)."""
from __future__ import annotations

import dataclasses
import json
import types
from importlib import resources
from pathlib import Path

import pytest

import clipedit
from clipedit.core import RewriteHParams
from clipedit.errors import ClipeditError
from clipedit.settings import defaults
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import DEFAULT_FILES, SLASH, defaults_for, defaults_table
from clipedit.settings.resolve import resolve_config

TODAY = json.loads((Path(__file__).parent / "data" / "resolved_settings.json").read_text())
ROOT = resources.files("clipedit.settings").joinpath("hparams")


def _files(folder: str) -> list:
    base = ROOT.joinpath(folder)
    return [base.joinpath("default.json")] + [p for kind in ("families", "models") if base.joinpath(kind).is_dir()
                                              for p in base.joinpath(kind).iterdir()]


@pytest.mark.parametrize("folder", list(DEFAULT_FILES))
def test_every_default_file_states_every_field_of_its_class_and_nothing_else(folder):
    cls = DEFAULT_FILES[folder]
    names = [f.name for f in dataclasses.fields(cls)]
    files = _files(folder)
    assert len(files) > 1
    for path in files:
        values = json.loads(path.read_text())
        assert list(values) == names, f"{folder}/{path.name}: {sorted(set(values) ^ set(names))}"
        cls.from_dict(values)  # every value of the right type and range
    assert {p.name for p in ROOT.joinpath(folder).iterdir()} <= {"default.json", "families", "models"}


def test_a_value_lives_in_one_place():
    """The files' classes have no defaults; the DefenseConfig fields they fill default to None (unset); the
    rewrite's model-dependent settings come from the file, its other settings from RewriteHParams alone."""
    for cls in DEFAULT_FILES.values():
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   for f in dataclasses.fields(cls)), cls.__name__
    config_fields = {f.name: f.default for f in dataclasses.fields(DefenseConfig)}
    for name in ("renders", "mask", "n_reference", "vocab_words", "sites", "hparams"):
        assert config_fields[name] is None, name
    edit = {f.name for f in dataclasses.fields(DEFAULT_FILES["edit"])}
    assert not edit & {"cov_reg", "solver", "steps", "lr", "mask_threshold", "project_every"}


def test_the_model_file_is_what_resolution_reads(tiny_vit, monkeypatch):
    table = {k: dict(v) for k, v in defaults_table().items()}
    table["edit"] = {**table["edit"], "families": {**table["edit"]["families"]}}
    vit = table["edit"]["families"]["VisionTransformer"]
    table["edit"]["families"]["VisionTransformer"] = dataclasses.replace(vit, rank=7, keep_reading=0.5, renders=3)
    monkeypatch.setattr(defaults, "defaults_table", lambda: table)
    config = resolve_config(tiny_vit)
    assert (config.hparams.rank, config.hparams.keep_reading, config.renders) == (7, 0.5, 3)
    assert resolve_config(tiny_vit, {"solver": "optimize"}).hparams.keep_reading == 0.0  # closed form only


def test_file_names_spell_slashes_and_every_model_entry_has_its_file():
    table = defaults_table()
    assert "timm/resnet18" in table["edit"]["models"] and "TimmModel/Eva" in table["edit"]["families"]
    assert all(SLASH not in name for kind in ("families", "models") for name in table["edit"][kind])
    assert {"mini", "mini-vit", "mini-vit-deep", "efficientnet-lite0"} <= set(table["edit"]["models"])


@pytest.mark.parametrize("entry", TODAY["entries"], ids=lambda e: f"{e['name']}@{e['architecture']}"
                         f"{'*' if e['any_word'] else ''}")
def test_every_family_and_model_entry_resolves_to_todays_defaults(entry, monkeypatch):
    monkeypatch.setattr(defaults, "expand_layer", lambda module, template: template)  # names as written
    bundle = types.SimpleNamespace(name=entry["name"], architecture=entry["architecture"], image_prefix="",
                                   image_module=None)
    got = dataclasses.asdict(defaults_for(bundle, entry["any_word"]))
    want = dict(entry["defaults"])
    assert want.pop("cov_reg") == RewriteHParams().cov_reg  # stated once, in RewriteHParams
    if not want.pop("retuned", False):  # the bundled minis' entries were retuned with reading in the rule
        assert got.pop("keep_reading") == RewriteHParams().keep_reading  # no file set it before
        assert got.pop("class_token") == RewriteHParams().class_token
    got["sites"] = list(got["sites"]) if got["sites"] else None
    assert got == want


def _today_overrides(overrides: dict) -> dict:
    """Today's ``finetune`` key (the baselines' settings beside the rewrite's) as the method's own settings."""
    overrides = dict(overrides)
    return {**overrides.pop("finetune", {}), **overrides}


def test_bundled_models_resolve_as_before():
    models = {}
    for case in TODAY["resolved"]:
        name = case["model"]
        if name not in models:
            models[name] = clipedit.load_model(name, device="cpu")
        config = resolve_config(models[name], _today_overrides(case["overrides"]), any_word=case["any_word"])
        record = config.to_dict()
        got = {k: record[k] for k in ("method", "sites", "renders", "mask", "n_reference", "vocab_words",
                                      "any_word", "seed")} | {"settings": record["hparams"]}
        want = json.loads(json.dumps(case["resolved"]))
        if "layer" in want["settings"] and not case.get("retuned"):  # the layer was kept in step with the sites
            assert want["settings"]["layer"] == (want["sites"][0] if len(want["sites"]) == 1 else None)
            want["settings"]["layer"] = None
        got = json.loads(json.dumps(got))
        for key in set(got["settings"]) - set(want["settings"]):  # a field added since: at its class default
            field = config.hparams.__dataclass_fields__[key]
            assert got["settings"].pop(key) == field.default, (name, key)
        assert got == want, (name, case["overrides"])


def test_a_resolved_config_is_not_resolved_again(tiny_vit, monkeypatch):
    config = resolve_config(tiny_vit, {"rank": 3})
    calls = []
    monkeypatch.setattr("clipedit.settings.resolve.defaults_for",
                        lambda *a, **k: calls.append(a) or defaults_for(*a, **k))
    assert resolve_config(tiny_vit, config) is config and not calls
    changed = resolve_config(tiny_vit, dataclasses.replace(config, renders=2))  # a changed copy: resolved again
    assert len(calls) == 1 and changed.renders == 2 and changed.hparams == config.hparams
    star = resolve_config(tiny_vit, config, any_word=True)  # asked for '*': not what it was resolved for
    assert star.any_word and len(calls) == 2


def test_an_incomplete_default_file_is_one_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rank": 1}))
    with pytest.raises(ClipeditError, match="leaves out layer, sites"):
        defaults._read(path, DEFAULT_FILES["edit"], "edit/models")


def test_the_cli_options_are_the_python_overrides(tiny_vit):
    """``defend``'s options become one mapping; the same keys from Python resolve to the same config."""
    from clipedit.commands.defense_options import SettingsOptions

    cli = SettingsOptions(layer="visual.transformer.resblocks.1.mlp.c_proj", rank="4", keep_reading=0.5, renders=3,
                          steps=7).overrides(any_word=False)
    python = {"layer": "visual.transformer.resblocks.1.mlp.c_proj", "rank": 4, "keep_reading": 0.5, "renders": 3}
    assert resolve_config(tiny_vit, cli).to_dict() == resolve_config(tiny_vit, python).to_dict()
    tuned = SettingsOptions(method="finetune-local", steps=7, lr=0.01, rank="4").overrides(any_word=False)
    assert resolve_config(tiny_vit, tuned).hparams == resolve_config(
        tiny_vit, {"method": "finetune-local", "steps": 7, "lr": 0.01}).hparams


def test_defend_does_not_resolve_a_resolved_config_again(tiny_rn, monkeypatch):
    config = resolve_config(tiny_rn, {"layer": "visual.layer3.0.conv3", "rank": 2, "renders": 2, "n_reference": 8})
    calls = []
    monkeypatch.setattr("clipedit.settings.resolve.defaults_for",
                        lambda *a, **k: calls.append(a) or defaults_for(*a, **k))
    defense = clipedit.defend(tiny_rn, "ipod", config)
    assert not calls and defense.config == config.to_dict()
    clipedit.defend(tiny_rn, "ipod", {"layer": "visual.layer3.0.conv3", "rank": 2, "renders": 2, "n_reference": 8})
    assert len(calls) == 1  # overrides from Python: resolved once, there


@pytest.mark.parametrize("model", ["mini", "mini-vit", "mini-vit-deep"])
def test_the_bundled_minis_defaults_are_the_reading_rules_picks_on_validation(model):
    """Each bundled mini's default edit (one word, and '*') is the setting that the sweep's rule (clean and
    blank-note loss within a scene, reading within 5 points, then the most defended-word accuracy) picked on
    the validation split in bench/results/surgical_sites.json: what is scored there is what defend applies."""
    record = json.loads((Path(__file__).parents[1] / "bench" / "results" / "surgical_sites.json").read_text())
    entry = record["models"][model]
    assert entry["split"] == "validation" and "reading" in entry["rule"]["text"]
    bundle = clipedit.load_model(model, device="cpu")
    for picked, any_word in ((entry["picked"], False), (entry["star"]["picked"], True)):
        config = resolve_config(bundle, {}, any_word=any_word)
        hp = config.hparams
        assert list(config.sites) == picked["sites"], (model, any_word)
        assert (hp.rank, hp.keep_targets, hp.keep_reading, hp.class_token, config.mask) == \
            (picked["rank"], picked["keep_targets"], picked["keep_reading"], picked.get("class_token", "off"),
             picked["mask"]), (model, any_word)
        assert config.renders == picked["renders"]
