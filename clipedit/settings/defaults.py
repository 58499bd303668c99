"""Default defense settings per architecture and model, read from ``defaults.json`` (one table of data)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from torch import nn

from clipedit.core.nethook import get_module
from clipedit.errors import SiteError
from clipedit.models.bundle import ModelBundle


@dataclass(frozen=True)
class DefenseDefaults:
    """What a defense uses when the user does not say.

    Attributes:
        layer: dotted name of the site inside the whole model (None: the architecture has none).
        rank: rank of the update.
        renders: exemplars rendered per word.
        n_reference: reference images drawn from the model's world for the key statistics.
        cov_reg: regularisation λ of C.
        mask: ``text`` (glyphs) or ``label`` (the whole note).
        keep_targets: weight of keeping the blank exemplars as they are in the solve (``RewriteHParams``).
        sites: a multi-site edit's layers, solved in order (full names; None: ``layer`` alone). ``layer``
            stays the single site of the other methods (``finetune-local``).
        vocab_words: exemplar words of ``"*"`` (its defaults only; else None).
        caution: a measured weakness of the default site and rank, printed when both are used.
    """

    layer: str | None
    rank: int
    renders: int
    n_reference: int
    cov_reg: float
    mask: str
    keep_targets: float = 0.0
    sites: tuple[str, ...] | None = None
    vocab_words: int | None = None
    caution: str | None = None


@lru_cache(maxsize=1)
def defaults_table() -> dict:
    """The parsed ``defaults.json``."""
    return json.loads(resources.files(__package__).joinpath("defaults.json").read_text())


def defaults_for(bundle: ModelBundle, any_word: bool = False) -> DefenseDefaults:
    """The defaults for ``bundle``: table default, then its architecture's, then its own entry; for ``"*"``
    (``any_word``) the ``any_word`` entries (default, then architecture) on top, whose ``sites`` (or none)
    replace the model's."""
    table = defaults_table()
    arch = bundle.architecture
    entry = {**table["default"], **table["architectures"].get(arch, {}), **table["models"].get(bundle.name, {})}
    if any_word:
        words = table.get("any_word", {})
        entry = {**entry, "sites": None, **words.get("default", {}), **words.get("architectures", {}).get(arch, {})}
        entry["vocab_words"] = entry.pop("words", None)
    entry = {k: v for k, v in entry.items() if not k.startswith("_")}
    template = entry.pop("layer", None)
    layer = bundle.image_prefix + expand_layer(bundle.image_module, template) if template else None
    sites = entry.pop("sites", None)
    if sites:
        sites = tuple(bundle.image_prefix + expand_layer(bundle.image_module, s) for s in sites)
    return DefenseDefaults(layer=layer, sites=sites or None, **entry)


def default_layer(bundle: ModelBundle) -> str:
    """The default rewrite site of ``bundle``; raises SiteError when its architecture has none."""
    layer = defaults_for(bundle).layer
    if layer is None:
        raise no_default_layer(bundle)
    return layer


def no_default_layer(bundle: ModelBundle) -> SiteError:
    """The error for a model whose family has no default site: it names the family and those that have one."""
    known = ", ".join(k for k, v in defaults_table()["architectures"].items() if "layer" in v)
    return SiteError(f"no default layer for {bundle.architecture} (families with one: {known}); pass one with "
                     "--layer")


def expand_layer(image_module: nn.Module, template: str) -> str:
    """``layer3.{-1}.conv3`` -> ``layer3.5.conv3``: a negative ``{i}`` counts from the end of its container."""
    match = re.search(r"\{(-?\d+)\}", template)
    if match is None:
        return template
    index = int(match.group(1))
    if index < 0:
        container = template[:match.start()].rstrip(".")
        index += len(get_module(image_module, container))
    return template[:match.start()] + str(index) + template[match.end():]


@lru_cache(maxsize=1)
def offline_grid_table() -> dict:
    """The parsed ``defaults_grid.json``: the settings the offline grids behind the defaults scored."""
    return json.loads(resources.files(__package__).joinpath("defaults_grid.json").read_text())


def offline_settings(bundle: ModelBundle, any_word: bool = False) -> dict:
    """How many settings an offline validation grid tried before ``bundle``'s defaults were chosen (the
    model's entry, or for ``"*"`` its architecture's), with the files it was counted from; 0: untuned."""
    table = offline_grid_table()
    entry = table["any_word"].get(bundle.architecture) if any_word else table["models"].get(bundle.name)
    return dict(entry) if entry else {"settings": 0, "sources": [], "split": None}
