"""Load models by spec: ``NAME[:PRETRAINED]`` for open_clip, ``mini``, or a registered classifier.

    load_model("ViT-B-32:openai")            # open_clip's loader downloads the weights
    load_model("RN50:none")                  # random init
    load_model("ViT-B-32", checkpoint="x.pt")  # local weights
    load_model("mini")                        # the bundled mini CLIP (assets/mini)
    load_model("timm/resnet50:none")          # a registered prefix loader (ImageNet classifiers)
    load_model("hf:openai/clip-vit-base-patch32")  # Hugging Face transformers (the ``hf`` extra)
    load_model("hf", checkpoint="folder/")    # a local save_pretrained folder
"""
from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.core.edit_sets import apply_edit_set, load_edits
from clipedit.errors import ClipeditError, ModelLoadError, check_argument
from clipedit.io import note_source, require_file
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import SOURCE_DTYPES, SOURCE_METADATA, load_weights_into, original_metadata

log = logging.getLogger(__name__)

RANDOM_TAGS = {"none", "random", ""}

# clipedit's own loaders as data, "module:function", imported when first used: the loader modules do
# not import this registry (no cycle), and `import clipedit` does not import timm or the mini loaders.
BUILTIN_LOADERS: dict[str, str] = {
    "mini": "clipedit.models.mini:load_mini",
    "mini-vit": "clipedit.models.mini_vit:load_mini_vit",
    "mini-vit-deep": "clipedit.models.mini_vit:load_mini_vit_deep",
    "efficientnet-lite0": "clipedit.models.classifiers:load_efficientnet_lite0",
    "hf": "clipedit.models.hf:load_hf",  # hf:ORG/NAME[:none]: CLIPModel / SiglipModel through transformers
}
# The bundled minis: their own weights only (no tag but ``bundled``; other weights with --checkpoint).
BUNDLED_TAGS = {"", "bundled"}
BUNDLED_MODELS = ("mini", "mini-vit", "mini-vit-deep")
# Loaders that take a checkpoint folder (a save_pretrained folder) instead of a weights file.
FOLDER_CHECKPOINTS = {"hf"}
BUILTIN_PREFIX_LOADERS: dict[str, str] = {
    "timm/": "clipedit.models.classifiers:load_timm",
    "torchvision/": "clipedit.models.classifiers:load_torchvision",
}

# Further loaders by model name (``register_loader``): name -> fn(pretrained, checkpoint, device) -> ModelBundle.
LOADERS: dict[str, Callable[..., ModelBundle]] = {}


# Loaders by name prefix: "timm/" -> fn(rest_of_name, pretrained, checkpoint, device) -> ModelBundle.
PREFIX_LOADERS: dict[str, Callable[..., ModelBundle]] = {}


def register_loader(name: str):
    """Decorator: make ``load_model(name…)`` call the decorated loader."""

    def wrap(fn):
        LOADERS[name] = fn
        return fn

    return wrap


def _prefix_loader(name: str) -> Optional[tuple[str, Callable[..., ModelBundle]]]:
    for prefix, fn in PREFIX_LOADERS.items():
        if name.startswith(prefix):
            return name[len(prefix):], fn
    return None


def resolve_device(device: Optional[str] = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU. Only devices a model can run on here: ``cpu``,
    a CUDA GPU this machine has, ``mps`` where available (``meta`` holds no weights; ``xla`` … are not
    supported)."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r} (choose cpu, cuda, cuda:N or auto)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"{str(device)!r} is not a device clipedit runs on (choose cpu, cuda, cuda:N or auto)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r}: mps is not available on this machine")
    return dev


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME[:PRETRAINED]`` into (name, pretrained); pretrained is ``""`` when no tag is given.

    Each loader reads an empty tag as its default: random init for open_clip, timm and torchvision
    names (as open_clip does), the shipped weights for ``mini`` and ``efficientnet-lite0``.
    ``none`` means random init, except for the bundled minis (``mini``, ``mini-vit``, ``mini-vit-deep``),
    which have their bundled weights only: a tag other than ``bundled`` is refused there.
    """
    name, _, tag = spec.strip().partition(":")
    if not name:
        raise ModelLoadError(f"empty model name in {spec!r}")
    return name, tag


def list_models() -> list[str]:
    """All model names ``load_model`` knows: open_clip's, clipedit's own (``mini``, ``tiny-*`` …)."""
    _register_builtin_loaders()
    import open_clip

    return sorted(set(open_clip.list_models()) | set(LOADERS))


def own_models() -> list[str]:
    """clipedit's own model names (bundled minis, tiny configs, classifiers) and its name prefixes (``timm/``)."""
    _register_builtin_loaders()
    return sorted(LOADERS) + [f"{prefix}NAME" for prefix in sorted(PREFIX_LOADERS)]


def known_models_summary() -> str:
    """The known model names in one line: clipedit's own, the prefixes, a few of open_clip's, and where the rest are."""
    import open_clip

    clip_names = open_clip.list_models()
    shown = [n for n in ("RN50", "ViT-B-32", "ViT-B-16", "ViT-L-14") if n in clip_names]
    return (f"{', '.join(own_models())}, and open_clip's {len(clip_names)} architectures "
            f"({', '.join(shown)}, …) with a :PRETRAINED tag; `clipedit models` lists them all")


def load_model(spec: str, checkpoint: Optional[str | os.PathLike] = None,
               device: Optional[str] = None, edits: Sequence[str | os.PathLike] = ()) -> ModelBundle:
    """Load a model, its preprocessing and tokenizer.

    Args:
        spec: ``NAME[:PRETRAINED]``; ``PRETRAINED`` is an open_clip tag or ``none`` (random init).
        checkpoint: local weights (state dict, ``.pt``/``.bin``/``.safetensors``) to load instead.
        device: ``cpu``, ``cuda``, ``cuda:1`` …; default picks CUDA when present.
        edits: edit files applied in order (weight and hook members alike, each file checked whole
            first); the applied sets are kept in ``bundle.extra["edits"]``.

    Raises:
        ModelLoadError: unknown name or tag, unreadable checkpoint, or weights that cannot be fetched.
    """
    check_argument(spec, str, "spec", "load_model")
    check_argument(checkpoint, (str, os.PathLike, type(None)), "checkpoint", "load_model")
    check_argument(device, (str, torch.device, type(None)), "device", "load_model")
    check_argument(edits, (list, tuple), "edits", "load_model")  # a list of files (one path is a list of one)
    _register_builtin_loaders()
    name, tag = parse_spec(spec)
    if name in BUNDLED_MODELS and tag.lower() not in BUNDLED_TAGS:
        raise ModelLoadError(f"{name} has its bundled weights only; there is no {name}:{tag} (use {name}, or "
                             "--checkpoint FILE for other weights)")
    dev = resolve_device(device)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise ModelLoadError(f"checkpoint not found: {checkpoint}")
    if checkpoint is not None and not Path(checkpoint).is_dir():  # a FIFO or a device would block or never end
        require_file(checkpoint, "checkpoint", ModelLoadError)
    if checkpoint is not None and Path(checkpoint).is_dir() and name not in FOLDER_CHECKPOINTS:
        raise ModelLoadError(f"checkpoint {checkpoint} is a folder; a weights file is needed (a save_pretrained "
                             "folder goes with --model hf)")
    if checkpoint is not None:
        note_source(checkpoint)  # no writer of this process replaces it
    by_prefix = _prefix_loader(name)
    if name in LOADERS:
        bundle = LOADERS[name](tag, checkpoint, dev)
    elif by_prefix is not None:
        bundle = by_prefix[1](by_prefix[0], tag, checkpoint, dev)
    else:
        bundle = _load_open_clip(name, tag, checkpoint, dev)
    bundle.source = spec
    bundle.model.eval()
    log.info("loaded %s (%s) on %s", bundle.name, bundle.pretrained, dev)
    if edits:
        applied = bundle.extra.setdefault("edits", [])
        for path in edits:
            edit_set = load_edits(path)
            try:
                apply_edit_set(bundle.model, edit_set)
            except ClipeditError as e:
                raise type(e)(f"{path}: {e}") from None
            applied.append(edit_set)
    return bundle


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds.

    When it does not, the hub's offline mode is switched on for this process, so that weights already
    in the local cache still load and missing ones fail at once instead of after minutes of retries.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError as e:
        log.info("%s is unreachable (%s): switching the hub to offline mode", url.hostname, e)
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        return False


class _OpenClipRootLogs(logging.Filter):
    """Re-log open_clip's messages to the root logger ("No pretrained weights loaded …",
    "Failed to download …") at debug level under ``open_clip``, so that a CLI error stays one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and "open_clip" in Path(record.pathname).parts:
            logging.getLogger("open_clip").debug(record.getMessage())
            return False
        return True


def _load_open_clip(name: str, tag: str, checkpoint, device: torch.device) -> ModelBundle:
    root, quiet = logging.getLogger(), _OpenClipRootLogs()
    root.addFilter(quiet)
    try:
        return _create_open_clip(name, tag, checkpoint, device)
    finally:
        root.removeFilter(quiet)


def _create_open_clip(name: str, tag: str, checkpoint, device: torch.device) -> ModelBundle:
    import open_clip

    if name not in open_clip.list_models():
        hint = difflib.get_close_matches(name, list_models(), n=3)
        raise ModelLoadError(f"unknown model {name!r}" + (f" (did you mean {', '.join(hint)}?)" if hint else "")
                             + f"; known: {known_models_summary()}")
    if tag.lower() not in RANDOM_TAGS and checkpoint is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            known = ", ".join(tags) or "none published"
            raise ModelLoadError(f"unknown pretrained tag {tag!r} for {name} (known: {known})")
        offline = not hub_reachable()
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=device)
        except Exception as e:  # open_clip/hf raise RuntimeError, OSError, HTTP errors …
            reason = "no network and not in the local cache" if offline else f"{type(e).__name__}; offline?"
            raise ModelLoadError(
                f"could not fetch weights {name}:{tag} ({reason}) - "
                f"download them elsewhere and pass --checkpoint PATH") from None
        pretrained, dtypes = tag, None
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
        pretrained, dtypes = "none", None
        if checkpoint is not None:
            dtypes = load_weights_into(model, checkpoint)
            pretrained = str(checkpoint)
    tokenizer = _open_clip_tokenizer(name)
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name,
                       pretrained=pretrained, kind="clip",
                       extra={SOURCE_DTYPES: dtypes, SOURCE_METADATA: original_metadata(checkpoint)})


class UnavailableTokenizer:
    """Stands in for a tokenizer that cannot be had (a missing extra, a hub download offline): the image
    side (edits, statistics, ``defend --no-eval``) works; the first text call raises one ModelLoadError."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __call__(self, *args, **kwargs):
        raise ModelLoadError(self.reason)

    def __repr__(self) -> str:
        return f"UnavailableTokenizer({self.reason!r})"


def _open_clip_tokenizer(name: str) -> Callable:
    """open_clip's tokenizer for ``name``; an :class:`UnavailableTokenizer` when it needs ``transformers``
    (SigLIP, SigLIP 2, multilingual text towers) and that is not installed, or its files cannot be fetched."""
    import open_clip
    from open_clip.factory import get_model_config

    hf_name = (get_model_config(name) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if hf_name:
        if importlib.util.find_spec("transformers") is None:
            return UnavailableTokenizer(f"{name}'s tokenizer ({hf_name}) needs transformers: "
                                        "pip install 'clipedit[hf]'")
        hub_reachable()  # offline: fail at once instead of retrying
    try:
        return open_clip.get_tokenizer(name)
    except Exception as e:  # OSError / HTTP errors from the hub, ValueError from a bad config …
        return UnavailableTokenizer(f"{name}'s tokenizer {hf_name or ''} cannot be loaded "
                                    f"({type(e).__name__}; offline and not in the local cache?)")


def config_files() -> dict[str, Any]:
    """clipedit's own open_clip model configs (``clipedit/models/configs/NAME.json``), by name."""
    folder = resources.files(__package__).joinpath("configs")
    return {f.name.removesuffix(".json"): f for f in folder.iterdir() if f.name.endswith(".json")}


def _load_config_model(name: str, tag: str, checkpoint, device: torch.device) -> ModelBundle:
    """A CLIP built from one of clipedit's configs, without adding it to open_clip's global registry."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    if tag.lower() not in RANDOM_TAGS:
        raise ModelLoadError(f"{name} has no pretrained weights (use {name}:none or --checkpoint)")
    from clipedit.models.tiny_timm import register_tiny_trunks

    register_tiny_trunks()  # configs may name clipedit's tiny timm trunks
    cfg = json.loads(config_files()[name].read_text())
    model_class = open_clip.model.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.model.CLIP
    model = model_class(**cfg).to(device)
    pretrained, dtypes = "none", None
    if checkpoint is not None:
        dtypes = load_weights_into(model, checkpoint)
        pretrained = str(checkpoint)
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return ModelBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, pretrained=pretrained,
                       kind="clip",
                       extra={SOURCE_DTYPES: dtypes, SOURCE_METADATA: original_metadata(checkpoint)})


@functools.cache
def _register_builtin_loaders() -> None:
    """Fill the loader tables with clipedit's own loaders, once per process."""
    for name in config_files():
        LOADERS.setdefault(name, functools.partial(_load_config_model, name))
    for name, target in BUILTIN_LOADERS.items():
        LOADERS.setdefault(name, _imported_when_called(target))
    for prefix, target in BUILTIN_PREFIX_LOADERS.items():
        PREFIX_LOADERS.setdefault(prefix, _imported_when_called(target))


def _imported_when_called(target: str) -> Callable[..., ModelBundle]:
    """A loader given as ``module:function``, imported on its first call."""
    module, _, attr = target.partition(":")

    def load(*args, **kwargs) -> ModelBundle:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as e:  # an optional dependency of that path (e.g. the ImageNet extra)
            raise ModelLoadError(f"{target} cannot be imported ({e})") from None
        return fn(*args, **kwargs)

    return load
