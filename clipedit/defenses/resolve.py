"""The one place a defense's settings are filled: :func:`resolve_config` reads ``defaults.json`` (once,
:func:`~clipedit.defenses.defaults.defaults_table`) and lays the caller's overrides on top. The CLI, the
Python API, the sweep and the bench all pass their overrides here."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from clipedit.core import RewriteHParams, resolve_site
from clipedit.defenses.config import DefenseConfig
from clipedit.defenses.defaults import defaults_for, no_default_layer
from clipedit.defenses.methods import method_spec
from clipedit.errors import ClipeditError, SettingsError
from clipedit.models.bundle import ModelBundle

#: Flat override keys that set a field of the rewrite's :class:`RewriteHParams`.
REWRITE_KEYS = ("rank", "solver", "cov_reg", "keep_targets", "keep_reading", "spread", "class_token", "mask_threshold",
                "steps", "lr", "project_every")


def resolve_config(bundle: ModelBundle, overrides: DefenseConfig | Mapping[str, Any] | None = None,
                   any_word: bool = False) -> DefenseConfig:
    """The one place defaults are filled: ``overrides`` on top of ``defaults.json`` for ``bundle``.

    Args:
        overrides: a :class:`DefenseConfig` (its ``None`` fields are filled) or a mapping of flat keys:
            any field of DefenseConfig, ``layer`` (a name, ``"a,b"`` or a list: several are one edit
            over those sites, in order) and the rewrite's ``rank``, ``solver``, ``cov_reg``,
            ``keep_targets``, ``keep_reading``, ``mask_threshold``, ``steps``, ``lr`` (given ones override the model's
            defaults, the rest stay). ``hparams`` may be a dict (the method's settings).
        any_word: ``"*"``: the ``any_word`` defaults on top of the model's.

    Sites, one rule for every method and caller: the sites given (``sites``, or ``layer``) in order;
    none given: the model's default sites for a closed-form edit (several for some models, e.g.
    mini-vit), else its single default layer.
    """
    if overrides is not None and not isinstance(overrides, (DefenseConfig, Mapping)):
        raise SettingsError(f"resolve_config: overrides must be a DefenseConfig or a dict, got "
                            f"{type(overrides).__name__}")
    config, given = (overrides, {}) if isinstance(overrides, DefenseConfig) else _from_mapping(overrides or {})
    spec = method_spec(config.method)
    any_word = any_word or spec.any_word
    if spec.config_field == "hparams" and isinstance(config.method_hparams, Mapping):
        config, given = _rewrite_settings(config, given)  # the rewrite's settings as a dict: as the flags are
    d = defaults_for(bundle, any_word=any_word)
    if config.hparams is not None:
        hp = dataclasses.replace(config.hparams, **given)
    else:
        closed_form = given.get("solver", "closed-form") == "closed-form"
        hp = RewriteHParams(**{"rank": d.rank, "cov_reg": d.cov_reg,
                               "keep_targets": d.keep_targets if closed_form else 0.0, **given})
    if config.sites and hp.layer and hp.layer not in config.sites:  # never dropped without a word
        raise SettingsError(f"the rewrite's layer {hp.layer!r} is not among the sites {', '.join(config.sites)}: "
                            "give the layer(s) once (sites, or hparams.layer)")
    sites = tuple(config.sites) if config.sites else (hp.layer,) if hp.layer else None
    for site in sites or ():  # a named layer that is not in the model: one line now, before any work
        resolve_site(bundle.model, site)
    if sites is None:
        default_sites = d.sites if spec.config_field == "hparams" and hp.solver == "closed-form" else None
        if default_sites is None and d.layer is None:
            raise no_default_layer(bundle)
        sites = default_sites or (d.layer,)
    if len(sites) != len(set(sites)):
        raise ClipeditError(f"a layer is listed twice among the sites: {', '.join(sites)}")
    if len(sites) > 1 and hp.solver != "closed-form":
        raise ClipeditError(f"a multi-site edit ({', '.join(sites)}) is solved in closed form; pass one --layer "
                            "for --solver optimize")
    hp = dataclasses.replace(hp, layer=sites[0] if len(sites) == 1 else None)
    resolved = dataclasses.replace(config, hparams=hp, sites=sites, renders=config.renders or d.renders,
                                   mask=config.mask or d.mask, n_reference=config.n_reference or d.n_reference,
                                   vocab_words=config.vocab_words or d.vocab_words, any_word=any_word)
    if spec.config_field and config.method_hparams is getattr(config, spec.config_field):
        resolved = dataclasses.replace(resolved, method_hparams=None)  # resolved before: the field is the truth
    method_hparams = spec.resolve_hparams(resolved)
    synced = {spec.config_field: method_hparams} if spec.config_field else {}
    return dataclasses.replace(resolved, method_hparams=method_hparams, **synced)


def _from_mapping(values: Mapping[str, Any]) -> tuple[DefenseConfig, dict[str, Any]]:
    """(the DefenseConfig of the flat keys, the rewrite settings given) — see :func:`resolve_config`."""
    values = {k: v for k, v in values.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(DefenseConfig)}
    unknown = sorted(set(values) - fields - set(REWRITE_KEYS) - {"layer"})
    if unknown:
        raise ClipeditError(f"unknown defense setting(s): {', '.join(unknown)}")
    layer = values.pop("layer", None)
    if layer is not None:
        values.setdefault("sites", _layers(layer))
    given = {k: values.pop(k) for k in REWRITE_KEYS if k in values}
    if "hparams" in values and not isinstance(values["hparams"], RewriteHParams):
        values["method_hparams"] = values.pop("hparams")  # the method's settings as a dict (or wrong: said there)
    return DefenseConfig(**values), given


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


def _rewrite_settings(config: DefenseConfig, given: dict[str, Any]) -> tuple[DefenseConfig, dict[str, Any]]:
    """The rewrite's settings given as a dict (``--hparams`` of ``defend`` and ``compare``): its fields are
    overrides like the flags (which win), its ``layer`` the sites unless they are given."""
    values = dict(config.method_hparams)
    known = [f.name for f in dataclasses.fields(RewriteHParams)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"unknown setting(s) of RewriteHParams: {', '.join(unknown)} (known: {', '.join(known)})")
    layer = values.pop("layer", None)
    sites = config.sites or (_layers(layer) if layer is not None else None)
    return dataclasses.replace(config, method_hparams=None, sites=sites), {**values, **given}
