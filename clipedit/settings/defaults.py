"""The default settings of a defense per method, family and model, read from the complete files under
``hparams/`` (after ROME's ``hparams/<METHOD>/<model>.json``; ``hparams/README.md`` says what each field
means and where its value comes from).

A model's defaults for a method are one file, never merged with another: ``<method>/models/<name>.json``,
else ``<method>/families/<architecture>.json``, else ``<method>/default.json``. Each file states every field
of its settings class (:data:`DEFAULT_FILES`), whose fields have no defaults of their own.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal, Optional

from torch import nn

from clipedit.core.hparams import COUNT, NONNEGATIVE, Bound, HParams
from clipedit.core.nethook import get_module
from clipedit.errors import SettingsError, SiteError
from clipedit.models.bundle import ModelBundle

#: Most exemplars rendered per word.
MAX_RENDERS = 100_000
#: ``/`` in a model or family name is written so in a file name.
SLASH = "--"


@dataclass(frozen=True)
class EditDefaults(HParams):
    """The rewrite's model-dependent defaults: every file under ``hparams/edit/`` states each field.

    Attributes:
        layer: the site, relative to the image module (``{-1}``: the last index of the container before
            it); None: the family has none. The single site of the fine-tuning baselines.
        sites: the default edit's sites (relative too), solved in order (None: ``layer`` alone).
        rank: rank of the update.
        keep_targets: weight of keeping the blank exemplars as they are in the solve.
        keep_reading: weight of keeping signs (class names written alone) as they are in the solve.
        mask: ``text`` (glyphs) or ``label`` (the whole note).
        class_token: where a ViT site is edited: ``off`` (the label's tokens), ``only`` (the class token), ``also``.
        renders: exemplars rendered per word.
        n_reference: reference images drawn from the model's world for the key statistics.
        caution: a measured weakness of the default site and rank, said when both are used.
    """

    layer: Optional[str]
    sites: Optional[tuple[str, ...]]
    rank: int
    keep_targets: float
    keep_reading: float
    mask: Literal["text", "label"]
    class_token: Literal["off", "only", "also"]
    renders: int
    n_reference: int
    caution: Optional[str]

    BOUNDS = {"rank": COUNT, "keep_targets": NONNEGATIVE, "keep_reading": NONNEGATIVE,
              "renders": Bound(1, MAX_RENDERS), "n_reference": COUNT}


@dataclass(frozen=True)
class AnyWordDefaults(HParams):
    """``defend --text '*'`` on top of the model's ``edit`` file (its ``sites`` replace the model's): every
    file under ``hparams/edit-any-word/`` states each field.

    Attributes:
        words: exemplar words drawn from the vocabulary.
        renders: exemplars rendered per word.
        rank: rank of the update.
        mask: ``text`` or ``label``.
        sites: the edit's sites, relative to the image module (None: the model's ``layer`` alone).
        keep_reading: weight of keeping signs as they are (replaces the ``edit`` file's).
        class_token: where a ViT site is edited (replaces the ``edit`` file's).
    """

    words: int
    renders: int
    rank: int
    mask: Literal["text", "label"]
    sites: Optional[tuple[str, ...]]
    keep_reading: float
    class_token: Literal["off", "only", "also"]

    BOUNDS = {"words": COUNT, "renders": Bound(1, MAX_RENDERS), "rank": COUNT}


#: The default files' folders under ``hparams/`` and the settings class each file states in full.
DEFAULT_FILES: dict[str, type[HParams]] = {"edit": EditDefaults, "edit-any-word": AnyWordDefaults}


@dataclass(frozen=True)
class ModelDefaults:
    """A model's defaults for the rewrite (its ``edit`` file, for ``"*"`` with the ``edit-any-word`` file on
    top), its names expanded to full names inside ``bundle.model``: what :func:`resolve_config` fills from.

    Attributes: as :class:`EditDefaults` (``layer``, ``sites`` full names), and ``vocab_words``: the
    exemplar words of ``"*"`` (its defaults only; else None).
    """

    layer: Optional[str]
    sites: Optional[tuple[str, ...]]
    rank: int
    keep_targets: float
    keep_reading: float
    mask: str
    class_token: str
    renders: int
    n_reference: int
    caution: Optional[str]
    vocab_words: Optional[int] = None


@lru_cache(maxsize=1)
def defaults_table() -> dict[str, dict]:
    """Every default file, read and checked once: folder -> ``{"default": settings, "families": {name:
    settings}, "models": {name: settings}}`` (settings: an instance of the folder's class in
    :data:`DEFAULT_FILES`)."""
    root = resources.files(__package__).joinpath("hparams")
    table = {}
    for folder, cls in DEFAULT_FILES.items():
        entry = {"default": _read(root.joinpath(folder, "default.json"), cls, folder)}
        for kind in ("families", "models"):
            where = root.joinpath(folder, kind)
            files = sorted(where.iterdir(), key=lambda p: p.name) if where.is_dir() else []
            entry[kind] = {p.name[:-len(".json")].replace(SLASH, "/"): _read(p, cls, f"{folder}/{kind}")
                           for p in files if p.name.endswith(".json")}
        table[folder] = entry
    return table


def _read(path, cls: type[HParams], where: str) -> HParams:
    """One default file as its settings class: every field stated, nothing else (one line otherwise)."""
    values = json.loads(path.read_text())
    missing = [f for f in cls.__dataclass_fields__ if f not in values]
    if missing:
        raise SettingsError(f"hparams/{where}/{path.name} leaves out {', '.join(missing)} (each file states "
                            f"every field of {cls.__name__})")
    return cls.from_dict(values)


def file_for(folder: str, bundle: ModelBundle) -> HParams:
    """``bundle``'s default file in ``folder``: its model's, else its family's, else the default."""
    entry = defaults_table()[folder]
    return entry["models"].get(bundle.name) or entry["families"].get(bundle.architecture) or entry["default"]


def defaults_for(bundle: ModelBundle, any_word: bool = False) -> ModelDefaults:
    """The rewrite's defaults for ``bundle`` (for ``"*"``, ``any_word``: its ``edit-any-word`` file on top,
    whose ``sites`` are none); only :func:`~clipedit.settings.resolve.resolve_config` reads them."""
    values = asdict(file_for("edit", bundle))
    if any_word:
        words = asdict(file_for("edit-any-word", bundle))
        values.update(vocab_words=words.pop("words"), **words)
    template, sites = values.pop("layer"), values.pop("sites")
    layer = bundle.image_prefix + expand_layer(bundle.image_module, template) if template else None
    if sites:
        sites = tuple(bundle.image_prefix + expand_layer(bundle.image_module, s) for s in sites)
    return ModelDefaults(layer=layer, sites=sites or None, **values)


def default_layer(bundle: ModelBundle) -> str:
    """The default single site of ``bundle`` (its ``edit`` file's ``layer``); raises SiteError when its family
    has none."""
    layer = defaults_for(bundle).layer
    if layer is None:
        raise no_default_layer(bundle)
    return layer


def no_default_layer(bundle: ModelBundle) -> SiteError:
    """The error for a model whose family has no default site: it names the family and those that have one."""
    known = ", ".join(k for k, v in defaults_table()["edit"]["families"].items() if v.layer is not None)
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
    model's entry, or for ``"*"`` the model's own '*' entry, else its architecture's), with the files it was
    counted from; 0: untuned."""
    table = offline_grid_table()
    if any_word:
        entry = table.get("any_word_models", {}).get(bundle.name) or table["any_word"].get(bundle.architecture)
    else:
        entry = table["models"].get(bundle.name)
    return dict(entry) if entry else {"settings": 0, "sources": [], "split": None}
