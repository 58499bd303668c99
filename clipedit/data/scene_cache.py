"""Rendered scenes cached on disk: a world's scene sets and signs are drawn once per arguments and shared by
every method, seed and run that asks for the same ones (compare, sweep, the training-based peers).

Entries live in the key statistics' cache (:func:`clipedit.core.cache.cached_record`, kind ``scenes``
under ``$CLIPEDIT_CACHE``), keyed by a digest of what made them: the caller's arguments (counts, seed,
words, the style sampler), the source of the renderer (the attack generator's package and the world's
modules) and the versions of Pillow and NumPy; the arguments are recorded beside the entry and checked
on reading, as are the tensors' digest. ``CLIPEDIT_SCENE_CACHE=0`` turns the cache off (every call renders).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipedit.attacks import Attack, LabelStyle
from clipedit.core.cache import cache_key, cached_record

KIND = "scenes"
_IMAGES = ("clean", "attacked", "blank")
_MASKS = ("mask", "text_mask")


class _NotStored(Exception):
    """Renders that the cache cannot hold (pictures of several sizes, none at all)."""


def scene_cache_enabled() -> bool:
    """False when ``$CLIPEDIT_SCENE_CACHE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("CLIPEDIT_SCENE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.cache
def renderer_digest(modules: tuple[str, ...]) -> str:
    """A digest of the attack generator's source, ``modules``' source files and Pillow's and NumPy's versions."""
    import PIL

    import clipedit.attacks as attacks

    files = sorted(Path(attacks.__file__).parent.glob("*.py"))
    files += [Path(sys.modules[m].__file__) for m in modules]
    h = hashlib.sha256(f"pillow {PIL.__version__}; numpy {np.__version__};".encode())
    for f in files:
        h.update(f"{f.name}:".encode() + f.read_bytes())
    return h.hexdigest()[:24]


def _args(what: str, args: dict[str, Any], modules: tuple[str, ...]) -> dict[str, Any]:
    return {"what": what, **args, "renderer": renderer_digest(modules)}


def cached_attacks(what: str, args: dict[str, Any], render: Callable[[], tuple[list[Attack], list[int]]],
                   modules: tuple[str, ...] = ()) -> tuple[list[Attack], list[int]]:
    """``render()``'s attacks and labels, rendered once per ``(what, args)`` and then read from disk.

    Args:
        what: names the set (e.g. ``mini-world.attack_set``).
        args: everything else that decides the renders (JSON-serialisable; reprs for objects).
        modules: the world's modules whose source decides the renders (the attack generator's always does).
    """
    if not scene_cache_enabled():
        return render()
    key_args = _args(what, args, modules)
    made: list = []

    def compute():
        attacks, labels = render()
        made.append((attacks, labels))
        try:
            return _pack_attacks(attacks, labels)
        except ValueError as e:  # pictures of several sizes or an empty set: not stored
            raise _NotStored from e

    try:
        tensors, info = cached_record(KIND, cache_key(**key_args), compute, args=key_args)
    except _NotStored:
        return made[0]
    if made:  # rendered just now: the renders themselves, not a round trip
        return made[0]
    return _unpack_attacks(tensors, info)


def cached_images(what: str, args: dict[str, Any], render: Callable[[], tuple[list[Image.Image], list[int]]],
                  modules: tuple[str, ...] = ()) -> tuple[list[Image.Image], list[int]]:
    """:func:`cached_attacks` for plain labelled images (e.g. signs)."""
    if not scene_cache_enabled():
        return render()
    key_args = _args(what, args, modules)
    made: list = []

    def compute():
        images, labels = render()
        made.append((images, labels))
        try:
            return {"images": _stack(images), "labels": torch.tensor(labels, dtype=torch.int64)}, None
        except ValueError as e:
            raise _NotStored from e

    try:
        tensors, _ = cached_record(KIND, cache_key(**key_args), compute, args=key_args)
    except _NotStored:
        return made[0]
    if made:
        return made[0]
    return [Image.fromarray(a) for a in tensors["images"].numpy()], tensors["labels"].tolist()


def _stack(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]))


def _pack_attacks(attacks: list[Attack], labels: list[int]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {name: _stack([getattr(a, name) for a in attacks]) for name in _IMAGES}
    for name in _MASKS:
        tensors[name] = torch.from_numpy(np.stack([np.asarray(getattr(a, name)) for a in attacks]))
    has_note = [a.note_mask is not None for a in attacks]
    shape = tensors["mask"].shape[1:]
    tensors["note_mask"] = torch.from_numpy(np.stack([
        np.asarray(a.note_mask) if a.note_mask is not None else np.zeros(shape, dtype=bool) for a in attacks]))
    tensors["has_note_mask"] = torch.tensor(has_note)
    tensors["labels"] = torch.tensor(labels, dtype=torch.int64)
    items = [{"box": list(a.box), "text": a.text, "style": dataclasses.asdict(a.style), "seed": a.seed,
              "font_px": a.font_px, "rotation": a.rotation, "perspective": a.perspective} for a in attacks]
    return tensors, {"items": items}


def _style(fields: dict[str, Any]) -> LabelStyle:
    fields = dict(fields)
    for name in ("text_color", "note_color"):
        fields[name] = tuple(fields[name])
    if isinstance(fields.get("position"), list):
        fields["position"] = tuple(fields["position"])
    return LabelStyle(**fields)


def _unpack_attacks(tensors: dict[str, torch.Tensor], info: dict) -> tuple[list[Attack], list[int]]:
    images = {name: tensors[name].numpy() for name in _IMAGES}
    masks = {name: tensors[name].numpy() for name in _MASKS + ("note_mask",)}
    has_note = tensors["has_note_mask"].tolist()
    attacks = []
    for i, item in enumerate(info["items"]):
        attacks.append(Attack(
            clean=Image.fromarray(images["clean"][i]), attacked=Image.fromarray(images["attacked"][i]),
            blank=Image.fromarray(images["blank"][i]), mask=masks["mask"][i].copy(),
            text_mask=masks["text_mask"][i].copy(), box=tuple(item["box"]), text=item["text"],
            style=_style(item["style"]), seed=item["seed"],
            note_mask=masks["note_mask"][i].copy() if has_note[i] else None, font_px=item["font_px"],
            rotation=item["rotation"], perspective=item["perspective"]))
    return attacks, tensors["labels"].tolist()
