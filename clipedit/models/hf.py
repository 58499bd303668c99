"""Hugging Face ``transformers`` CLIP families (the ``hf`` extra: ``pip install 'clipedit[hf]'``).

    load_model("hf:openai/clip-vit-base-patch32")     # weights from the hub (or its local cache)
    load_model("hf:google/siglip-base-patch16-224")   # SigLIP
    load_model("hf:ORG/NAME:none")                    # the id's (or a folder's) config, random init
    load_model("hf", checkpoint="folder/")            # a local save_pretrained folder
    load_model("hf:ORG/NAME", checkpoint="w.safetensors")  # the id's config, weights from a state dict

The bundle's model is the ``CLIPModel`` / ``SiglipModel`` itself, so that its state dict, its edit
files and its export are in transformers' own names (image tower ``vision_model``; sites such as
``vision_model.encoder.layers.{i}.mlp.fc2`` and ``…self_attn.v_proj``). Preprocessing is the model's
own image processor, as a torchvision pipeline built from its settings (resize, crop, rescale,
normalise); text goes through its own tokenizer, padded to the text tower's length. Saving the weights
as ``model.safetensors`` (``save_model_weights``) writes a folder that ``from_pretrained`` loads.

A folder or hub id gets the checks a checkpoint file gets: its files must be regular files of bounded size;
its config must be of a supported ``model_type`` and describe a model that can be built (sizes, types,
nesting); its weights must fit that model exactly (no key missing, unexpected or of another shape) and be
finite. Each failure is one :class:`~clipedit.errors.ModelLoadError` line, with transformers' own load
report kept quiet.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision import transforms as T

from clipedit.errors import ClipeditError, ModelLoadError
from clipedit.io import atomic_file_set, ensure_writable_dir, remove_stale_temporaries, temporary_name, write_failure
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import PRETRAINED_EXPORT, check_finite_state, load_weights_into
from clipedit.models.registry import UnavailableTokenizer, hub_reachable

log = logging.getLogger(__name__)

#: config ``model_type`` -> the transformers class clipedit loads it with.
SUPPORTED_MODELS = {"clip": "CLIPModel", "siglip": "SiglipModel"}
INSTALL_HINT = "pip install 'clipedit[hf]'"
#: The files of a save_pretrained folder that loading reads: each must be a regular file of at most
#: MAX_FOLDER_FILE bytes (weights: any size), so that a FIFO or /dev/zero there is refused, not read forever.
FOLDER_FILES = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json",
                "special_tokens_map.json", "vocab.json", "merges.txt", "spiece.model", "model.safetensors.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_FOLDER_FILE = 256 * 2 ** 20
#: The most parameters a config may describe (the largest CLIP towers published have about 18e9).
MAX_PARAMETERS = 5 * 10 ** 10


def load_hf(tag: str, checkpoint: Optional[str | os.PathLike], device: torch.device) -> ModelBundle:
    """Load ``hf:ID[:none]`` (``tag`` is ``ID[:none]``; ID an ORG/NAME or a local folder) into a ModelBundle.

    Raises:
        ModelLoadError: transformers missing, nothing to load, an id that cannot be fetched (offline), an
            unsupported model class, or weights that do not fit.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ModelLoadError(f"--model hf:… needs transformers: {INSTALL_HINT}")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    ident, _, init = tag.rpartition(":") if tag.lower().endswith(":none") else (tag, "", "")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    source = str(ckpt) if ckpt is not None and ckpt.is_dir() else ident
    if not source:
        raise ModelLoadError("--model hf needs a model id (hf:ORG/NAME) or a save_pretrained folder (--checkpoint)")
    label = f"hf:{ident}" if ident else f"hf ({source})"
    if Path(source).is_dir():
        check_folder_files(Path(source), label)
    config = _fetch(lambda: transformers.AutoConfig.from_pretrained(source), source, label, "config")
    model_class = getattr(transformers, _model_class_name(config, label))
    check_buildable(model_class, config, label)
    if init or (ckpt is not None and ckpt.is_file()):
        model = model_class(config)
        pretrained = "none"
        if ckpt is not None and ckpt.is_file():
            load_weights_into(model, ckpt)
            pretrained = str(ckpt)
    else:
        model = _fetch(lambda: from_pretrained_checked(model_class, source, label), source, label, "weights")
        pretrained = source
    model = model.to(device).eval()
    processor = _image_processor(transformers, source, config, label)
    tokenizer = _tokenizer(transformers, source, config, label)
    try:
        preprocess = preprocess_from_processor(processor)
    except ClipeditError as e:
        raise ModelLoadError(f"{label}: {e}") from None
    except Exception as e:
        raise ModelLoadError(f"the image processor of {label} has settings clipedit cannot use: {_first(e)}") from None
    bundle = ModelBundle(model=model, preprocess=preprocess,
                         tokenizer=tokenizer, name=f"hf:{ident or Path(source).name}", pretrained=pretrained,
                         kind="clip", image_tower="vision_model", image_encoder=image_features,
                         text_encoder=text_features)
    bundle.extra[PRETRAINED_EXPORT] = functools.partial(export_pretrained, processor=processor,
                                                tokenizer=getattr(tokenizer, "tokenizer", None))
    return bundle


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


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected image embeddings (transformers 5 returns them as ``pooler_output``)."""
    return _tensor(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected text embeddings."""
    return _tensor(model.get_text_features(input_ids=input_ids))


def _tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- preprocessing ------------------------------------------------------------------------------------
def _image_processor(transformers, source: str, config, label: str):
    """The model's image processor; for a folder without one (a bare config), the family's standard. One that
    is there but cannot be read is refused."""
    try:
        return _quietly(lambda: transformers.AutoImageProcessor.from_pretrained(source))
    except Exception as e:
        present = (Path(source) / "preprocessor_config.json").exists() if Path(source).is_dir() else True
        if present and not (isinstance(e, (OSError, ValueError)) and not Path(source).is_dir()):
            raise ModelLoadError(f"cannot read the image processor of {label} from {source}: {_first(e)}") from None
        size = config.vision_config.image_size
        log.warning("%s has no image processor; using the %s standard at %d px", source, config.model_type, size)
        if config.model_type == "siglip":
            return transformers.SiglipImageProcessor(size={"height": size, "width": size})
        return transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def preprocess_from_processor(processor) -> T.Compose:
    """A torchvision pipeline doing what a CLIP/SigLIP image processor does: RGB, resize (shortest edge, or
    to a fixed height x width), centre crop, rescale to [0, 1], normalise. Its ``Normalize`` is what
    mask preprocessing undoes."""
    steps: list = [T.Lambda(_rgb)]
    size = _as_dict(getattr(processor, "size", None))
    interp = _interpolation(getattr(processor, "resample", 3))
    if getattr(processor, "do_resize", True) and size:
        if "shortest_edge" in size:
            steps.append(T.Resize(_pixels(size, "shortest_edge"), interpolation=interp))
        elif "height" in size and "width" in size:
            steps.append(T.Resize((_pixels(size, "height"), _pixels(size, "width")), interpolation=interp))
        else:
            raise ModelLoadError(f"image processor size {size} is not supported (shortest_edge or height/width)")
    crop = _as_dict(getattr(processor, "crop_size", None))
    if getattr(processor, "do_center_crop", False) and crop:
        steps.append(T.CenterCrop((_pixels(crop, "height"), _pixels(crop, "width"))))
    steps.append(T.PILToTensor())
    factor = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
    if not (math.isfinite(factor) and factor > 0):
        raise ModelLoadError(f"image processor rescale_factor {factor} is not a finite number > 0")
    steps.append(T.Lambda(lambda x, f=factor: x.float() * f))
    if getattr(processor, "do_normalize", True):
        mean, std = _channels(processor.image_mean, "image_mean"), _channels(processor.image_std, "image_std")
        if any(v <= 0 for v in std):
            raise ModelLoadError(f"image processor image_std {std} must be > 0")
        steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def _pixels(size: dict, key: str) -> int:
    value = size[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"image processor {key} {value!r} is not a whole number of pixels >= 1")
    return value


def _channels(values, key: str) -> list[float]:
    """Three finite per-channel numbers (RGB) of an image processor (a single number is every channel's)."""
    values = [values] * 3 if isinstance(values, (int, float)) and not isinstance(values, bool) else values
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ModelLoadError(f"image processor {key} {values!r} is not a list of numbers") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ModelLoadError(f"image processor {key} {values!r} must be 3 finite numbers (one per RGB channel)")
    return out


def _rgb(image):
    return image.convert("RGB")


def _as_dict(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return {k: v for k, v in vars(value).items() if v is not None} if hasattr(value, "__dict__") else {}


def _interpolation(resample) -> T.InterpolationMode:
    value = getattr(resample, "value", resample)
    modes = {0: T.InterpolationMode.NEAREST, 2: T.InterpolationMode.BILINEAR, 3: T.InterpolationMode.BICUBIC,
             1: T.InterpolationMode.LANCZOS}
    return modes.get(value, T.InterpolationMode.BICUBIC) if isinstance(value, int) else T.InterpolationMode.BICUBIC


# -- text ---------------------------------------------------------------------------------------------
class HFTextTokenizer:
    """Texts -> (n, max_length) input ids, padded to the text tower's length as the model was trained
    (SigLIP: ``padding="max_length"``; CLIP's causal tower ignores what follows its end token)."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt")["input_ids"]


def _tokenizer(transformers, source: str, config, label: str) -> Callable:
    try:
        tok = _quietly(lambda: transformers.AutoTokenizer.from_pretrained(source))
    except Exception as e:
        return UnavailableTokenizer(f"{label} has no usable tokenizer in {source} ({type(e).__name__}); save "
                                    "one beside its config (tokenizer.save_pretrained)")
    return HFTextTokenizer(tok, config.text_config.max_position_embeddings)


# -- export -------------------------------------------------------------------------------------------
def export_pretrained(bundle: ModelBundle, folder: str | os.PathLike, processor=None, tokenizer=None) -> Path:
    """Write ``bundle``'s model (its current, e.g. edited, weights) with ``save_pretrained`` into ``folder``,
    with its image processor and tokenizer: a folder that ``transformers`` alone loads
    (``CLIPModel.from_pretrained(folder)``). Files are written beside and moved into place."""
    folder = Path(os.path.realpath(folder))  # each file is guarded as the set writes it
    ensure_writable_dir(folder)
    remove_stale_temporaries(folder, "hf-export")
    scratch = folder / temporary_name("hf-export")  # clipedit's own name: a killed export's is cleaned later
    try:
        scratch.mkdir()
        bundle.model.save_pretrained(scratch, safe_serialization=True)
        for part in (processor, tokenizer):
            if part is not None:
                part.save_pretrained(scratch)
        names = sorted(p.name for p in scratch.iterdir())
        with atomic_file_set([folder / n for n in names]) as tmps:  # the export's files as one set
            for name, tmp in zip(names, tmps):
                os.replace(scratch / name, tmp)
    except OSError as e:
        raise write_failure(folder, e) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder / "model.safetensors"


# -- config folders (tests, examples: real transformers architectures, random init, no download) -------
def write_config_folder(folder: str | os.PathLike, family: str = "clip", tiny: bool = True,
                        image_size: int = 64) -> Path:
    """Write a save_pretrained-style folder of a ``CLIPModel`` or ``SiglipModel`` without weights: its config
    (``tiny``: width 64, 2 vision layers, ``image_size`` px; else transformers' default config, ViT-B/32 CLIP
    or SigLIP B/16 at 224 px), its image processor and a CLIP BPE tokenizer made from open_clip's bundled
    vocabulary (SigLIP's own SentencePiece vocabulary would need a download). Load it with ``hf:FOLDER:none``."""
    import transformers
    from open_clip.tokenizer import SimpleTokenizer

    if family not in SUPPORTED_MODELS:
        raise ModelLoadError(f"unknown family {family!r} (known: {', '.join(SUPPORTED_MODELS)})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text: dict[str, Any] = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision: dict[str, Any] = {}
    if tiny:
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=16)
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=image_size, patch_size=8)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # token ids are checked against the default vocabulary first
    try:
        if family == "clip":
            config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                             **(dict(projection_dim=64) if tiny else {}))
        else:
            config = transformers.SiglipConfig(text_config=text, vision_config=vision)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    size = config.vision_config.image_size
    if family == "clip":
        processor = transformers.CLIPImageProcessor(size={"shortest_edge": size},
                                                    crop_size={"height": size, "width": size})
    else:
        processor = transformers.SiglipImageProcessor(size={"height": size, "width": size})
    config.save_pretrained(folder)
    processor.save_pretrained(folder)
    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    transformers.CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder
