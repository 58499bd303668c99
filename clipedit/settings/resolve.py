"""The one place a defense's settings are filled: :func:`resolve_config` lays the caller's overrides on top of
the model's default file (read once, :func:`~clipedit.settings.defaults.defaults_table`). The CLI (its options
as one mapping), the Python API (``clipedit.defend(bundle, word, {...})``), the sweep and the bench all pass
their overrides here; a resolved config passes through again unchanged."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from clipedit.core import resolve_site
from clipedit.errors import ClipeditError, SettingsError
from clipedit.methods.registry import method_spec
from clipedit.methods.spec import MethodSpec
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import ModelDefaults, defaults_for, no_default_layer


def resolve_config(bundle: ModelBundle, overrides: DefenseConfig | Mapping[str, Any] | None = None,
                   any_word: bool = False) -> DefenseConfig:
    """The one place defaults are filled: ``overrides`` on top of the model's default file for ``bundle``.

    Args:
        overrides: a :class:`DefenseConfig` (its ``None`` fields are filled) or a mapping of flat keys:
            any field of DefenseConfig, ``layer`` (a name, ``"A+B"`` or a list: several are one edit over
            those sites, in order) and any field of the method's settings class (the rewrite's ``rank``,
            ``solver``, ``cov_reg``, ``keep_targets``, ``keep_reading``, ``mask_threshold``, ``steps``, ``lr``;
            a fine-tuning baseline's ``steps``, ``lr``, ``loss`` …): given ones override the defaults, the rest
            stay. ``hparams`` may be a dict of the method's settings (``--hparams FILE.json``), under the
            flat keys.
        any_word: ``"*"``: the ``edit-any-word`` defaults on top of the model's.

    Sites, one rule for every method and caller: the sites given (``sites``, or ``layer``) in order;
    none given: the model's default sites for a closed-form edit (several for some models, e.g.
    mini-vit), else its single default layer.

    A config this returned for ``bundle`` is returned as it is (``defend`` and the CLI share it; nothing is
    resolved twice).
    """
    if overrides is not None and not isinstance(overrides, (DefenseConfig, Mapping)):
        raise SettingsError(f"resolve_config: overrides must be a DefenseConfig or a dict, got "
                            f"{type(overrides).__name__}")
    if isinstance(overrides, DefenseConfig) and overrides.resolved_for == _key(bundle) and (
            overrides.any_word or not any_word):
        return overrides
    config, given = (overrides, {}) if isinstance(overrides, DefenseConfig) else _from_mapping(overrides or {})
    spec = method_spec(config.method)
    any_word = any_word or spec.any_word
    d = defaults_for(bundle, any_word=any_word)
    hp, sites = _settings(spec, config, given, d)
    for site in sites or ():  # a named layer that is not in the model: one line now, before any work
        resolve_site(bundle.model, site)
    closed_form = getattr(hp, "solver", "closed-form") == "closed-form"
    if sites is None:
        default_sites = d.sites if spec.model_defaults and closed_form else None
        if default_sites is None and d.layer is None:
            raise no_default_layer(bundle)
        sites = default_sites or (d.layer,)
    if len(sites) != len(set(sites)):
        raise ClipeditError(f"a layer is listed twice among the sites: {', '.join(sites)}")
    if len(sites) > 1 and not closed_form:
        raise ClipeditError(f"a multi-site edit ({', '.join(sites)}) is solved in closed form; pass one --layer "
                            "for --solver optimize")
    caution = d.caution if spec.model_defaults and not any_word and hp.rank == d.rank and sites in (
        d.sites, (d.layer,)) else None
    resolved = dataclasses.replace(config, hparams=hp, sites=sites, renders=config.renders or d.renders,
                                   mask=config.mask or d.mask, n_reference=config.n_reference or d.n_reference,
                                   vocab_words=config.vocab_words or d.vocab_words, any_word=any_word,
                                   caution=caution)
    resolved.resolved_for = _key(bundle)
    return resolved


def _key(bundle: ModelBundle) -> tuple[str, str]:
    return bundle.name, bundle.architecture


def _settings(spec: MethodSpec, config: DefenseConfig, given: dict[str, Any], d: ModelDefaults
              ) -> tuple[Any, tuple[str, ...] | None]:
    """(the method's settings, the sites given or None): ``config.hparams`` (an instance as given in full, or
    a dict of its fields under the flat keys ``given``) over the defaults (the model's file for the rewrite,
    else the settings class's own), its ``layer`` moved to the sites."""
    cls, hp = spec.hparams_cls, config.hparams
    known = [f.name for f in dataclasses.fields(cls)]
    if isinstance(hp, Mapping):
        unknown = sorted(set(hp) - set(known))
        if unknown:
            raise SettingsError(f"unknown setting(s) of {cls.__name__}: {', '.join(unknown)} (known: "
                                f"{', '.join(known)})")
        given, hp = {**hp, **given}, None
    elif hp is not None and not isinstance(hp, cls):
        raise ClipeditError(f"settings of {config.method} must be a {cls.__name__} or a dict, got "
                            f"{type(hp).__name__}")
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SettingsError(f"unknown defense setting(s): {', '.join(unknown)} (a DefenseConfig field, layer or "
                            f"a setting of {config.method}'s {cls.__name__}: {', '.join(known)})")
    layer = given.pop("layer", None)  # a settings file's layer: the sites unless they are given
    if hp is not None:
        if getattr(hp, "layer", None) is not None:  # given in full: its layer is one of the sites given
            layer = hp.layer
            if config.sites and any(s not in config.sites for s in _layers(layer)):  # never dropped without a word
                raise SettingsError(f"the settings' layer {layer!r} is not among the sites "
                                    f"{', '.join(config.sites)}: give the layer(s) once (sites, or hparams.layer)")
        hp = dataclasses.replace(hp, **given) if given else hp
    elif spec.model_defaults:
        closed_form = given.get("solver", "closed-form") == "closed-form"
        model = {"rank": d.rank, "keep_targets": d.keep_targets if closed_form else 0.0,
                 "keep_reading": d.keep_reading if closed_form else 0.0,
                 "class_token": d.class_token if closed_form else "off"}
        hp = cls.from_dict({**model, **given})
    else:
        hp = cls.from_dict(given) if given else cls()
    sites = tuple(config.sites) if config.sites else _layers(layer) if layer is not None else None
    if "layer" in known and hp.layer is not None:
        hp = dataclasses.replace(hp, layer=None)  # the sites say where it acts
    return hp, sites


def _from_mapping(values: Mapping[str, Any]) -> tuple[DefenseConfig, dict[str, Any]]:
    """(the DefenseConfig of the flat keys, the method's settings given) — see :func:`resolve_config`."""
    values = {k: v for k, v in values.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(DefenseConfig) if f.init}
    config = DefenseConfig(**{k: v for k, v in values.items() if k in fields and k != "layer"})
    given = {k: v for k, v in values.items() if k not in fields}
    if "layer" in given:
        if "sites" not in values:
            config = dataclasses.replace(config, sites=_layers(given["layer"]))
        del given["layer"]
    return config, given


def _layers(layer: Any) -> tuple[str, ...]:
    """``"A+B"`` (one joint edit over A then B) or a list of names -> the sites, in order; anything else is one
    line (``,`` lists alternatives, as the sweep's candidates do: not one edit)."""
    if isinstance(layer, str):
        if "," in layer:
            raise SettingsError(f"layer {layer!r}: one joint edit over several sites is written "
                                f"{'+'.join(s.strip() for s in layer.split(','))!r} (',' lists alternatives)")
        layer = [s.strip() for s in layer.split("+")]
    if not isinstance(layer, (list, tuple)) or not layer or any(not isinstance(s, str) or not s for s in layer):
        shown = "+".join(map(str, layer)) if isinstance(layer, (list, tuple)) else repr(layer)
        raise SettingsError(f"--layer takes dotted layer names joined by '+'; got {shown!r}")
    return tuple(layer)
