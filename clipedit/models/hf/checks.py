"""A Hugging Face folder or hub id gets the checks a checkpoint file gets: regular files of bounded size, a
supported ``model_type``, a config that describes a buildable model, weights that fit it exactly and are
finite; each failure one :class:`~clipedit.errors.ModelLoadError` line, transformers' own report kept quiet."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipedit.errors import ClipeditError, ModelLoadError
from clipedit.models.checkpoint import check_finite_state
from clipedit.models.registry import hub_reachable

#: config ``model_type`` -> the transformers class clipedit loads it with.
SUPPORTED_MODELS = {"clip": "CLIPModel", "siglip": "SiglipModel"}


#: The files of a save_pretrained folder that loading reads: each must be a regular file of at most
#: MAX_FOLDER_FILE bytes (weights: any size), so that a FIFO or /dev/zero there is refused, not read forever.
FOLDER_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
                "special_tokens_map.json", "vocab.json", "merges.txt", "spiece.model", "model.safetensors.index.json")


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


MAX_FOLDER_FILE = 256 * 2 ** 20


#: The most parameters a config may describe (the largest CLIP towers published have about 18e9).
MAX_PARAMETERS = 5 * 10 ** 10


def _first(e: BaseException) -> str:
    """An exception as one line: a too-deep nesting said as such, else its message's first line."""
    if isinstance(e, RecursionError):
        return "its JSON is nested too deeply"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "error for field 'x':" + why
    return f"{type(e).__name__}: {text}"


def _fetch(fn: Callable[[], Any], source: str, label: str, what: str) -> Any:
    """``fn()`` with every failure as one line (offline mode switched on first when the hub is unreachable):
    a local folder's or a hub file's content that cannot be read, or a hub id that cannot be fetched."""
    local = Path(source).is_dir()
    offline = False if local else not hub_reachable()
    try:
        return _quietly(fn)
    except ClipeditError:
        raise
    except Exception as e:
        if local or not isinstance(e, (OSError, ValueError)) or isinstance(e, RecursionError):
            hint = f" (a folder without weights loads at random init as hf:{source}:none)" if (
                what == "weights" and local and not any((Path(source) / w).exists() for w in WEIGHT_FILES)) else ""
            raise ModelLoadError(f"cannot load the {what} of {label} from {source}: {_first(e)}{hint}") from None
        reason = "no network and not in the local cache" if offline else f"{type(e).__name__}; offline?"
        raise ModelLoadError(f"could not fetch {label} ({reason}) - save_pretrained it elsewhere and pass "
                             "--model hf --checkpoint FOLDER") from None


def _quietly(fn: Callable[[], Any]) -> Any:
    """``fn()`` with transformers' own logging (its load report) held to errors: clipedit reports instead."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        return fn()
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def check_folder_files(folder: Path, label: str) -> None:
    """Refuse a save_pretrained folder whose files loading reads are not regular files (a FIFO, a device, a
    folder) or, for its JSON and vocabulary files, larger than :data:`MAX_FOLDER_FILE`."""
    import stat

    for name in (*FOLDER_FILES, *WEIGHT_FILES):
        path = folder / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if path.is_symlink():
                raise ModelLoadError(f"{label}: {path} is a broken symbolic link") from None
            continue
        except OSError as e:
            raise ModelLoadError(f"{label}: cannot read {path}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{label}: {path} is not a regular file")
        if name in FOLDER_FILES and st.st_size > MAX_FOLDER_FILE:
            raise ModelLoadError(f"{label}: {path} is {st.st_size} bytes, more than a {name} can be "
                                 f"({MAX_FOLDER_FILE} bytes)")


def _model_class_name(config, label: str) -> str:
    model_type = getattr(config, "model_type", "")
    name = SUPPORTED_MODELS.get(model_type)
    if name is None:  # say what the config is (its model_type), not what its `architectures` claims
        raise ModelLoadError(f"{label} is not a CLIP or SigLIP model: its config is a {type(config).__name__} "
                             f"of model_type {model_type!r}; clipedit supports model_type "
                             f"{', '.join(f'{t!r} ({c})' for t, c in SUPPORTED_MODELS.items())}")
    return name


#: Sizes of a CLIP / SigLIP config (top level, ``text_config``, ``vision_config``) that must be integers >= 1.
CONFIG_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "vocab_size", "image_size", "patch_size", "num_channels", "projection_dim")


def check_buildable(model_class, config, label: str) -> None:
    """Refuse a config that does not describe a model of ``model_class`` (wrongly typed or negative sizes,
    settings its constructor rejects) or describes one of more than :data:`MAX_PARAMETERS` parameters:
    the model is built on the meta device (no memory) to find out."""
    for prefix, part in (("", config), ("text_config.", getattr(config, "text_config", None)),
                         ("vision_config.", getattr(config, "vision_config", None))):
        for key in CONFIG_SIZES:
            value = getattr(part, key, None) if part is not None else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelLoadError(f"the config of {label} gives {prefix}{key} = {value!r}; it must be an "
                                     "integer >= 1")
        for key, value in (vars(part).items() if part is not None and hasattr(part, "__dict__") else ()):
            if isinstance(value, float) and not math.isfinite(value):
                raise ModelLoadError(f"the config of {label} gives {prefix}{key} = {value}; it must be finite")
    try:
        with torch.device("meta"):
            probe = _quietly(lambda: model_class(config))
        n_params = sum(p.numel() for p in probe.parameters())
    except Exception as e:
        raise ModelLoadError(f"the config of {label} does not describe a {model_class.__name__} clipedit can "
                             f"build ({_first(e)})") from None
    if n_params > MAX_PARAMETERS:
        raise ModelLoadError(f"the config of {label} describes a model of {n_params:.3g} parameters, more than "
                             f"clipedit loads ({MAX_PARAMETERS:.0e}); its sizes are wrong")


def from_pretrained_checked(model_class, source: str, label: str):
    """``model_class.from_pretrained(source)`` in float32, refused unless the weights fit the config exactly
    (no key missing, unexpected or of another shape: a missing one would be silently random-initialised)
    and are finite."""
    model, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                              ignore_mismatched_sizes=True)
    problems = []
    for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
        keys = sorted(keys or [])
        if keys:
            problems.append(f"{len(keys)} {what} key(s), first: {', '.join(keys[:3])}")
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        first = mismatched[0]
        shown = f"{first[0]} {tuple(first[1])} vs the config's {tuple(first[2])}" if isinstance(first, tuple) and \
            len(first) == 3 else str(first)
        problems.append(f"{len(mismatched)} key(s) of another shape, first: {shown}")
    problems += [str(m).strip().splitlines()[0] for m in info.get("error_msgs") or [] if str(m).strip()][:1]
    if problems:
        raise ModelLoadError(f"the weights in {source} do not fit the model its config describes "
                             f"({'; '.join(problems)}); they belong to another model or were altered")
    check_finite_state(model.state_dict(), source)
    check_weight_dtypes(model, Path(source), label)
    return model


def check_weight_dtypes(model, folder: Path, label: str) -> None:
    """Refuse a folder's ``.safetensors`` weights that store a floating-point parameter as integers or booleans
    (transformers would cast them silently): the stored dtypes are read from the files' headers."""
    if not folder.is_dir():
        return
    from safetensors import safe_open

    expected = {k: v.dtype for k, v in model.state_dict().items()}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except Exception as e:
            raise ModelLoadError(f"cannot read {path}: {_first(e)}") from None
        for key, dtype in stored.items():
            if key in expected and expected[key].is_floating_point and not dtype.startswith(("F", "BF")):
                raise ModelLoadError(f"{label}: {path.name} stores {key} as {dtype}, not as floating-point "
                                     "numbers; the weights were altered")
