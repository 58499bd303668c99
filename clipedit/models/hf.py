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
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision import transforms as T

from clipedit.errors import ModelLoadError
from clipedit.io import atomic_file_set, ensure_writable_dir, remove_stale_temporaries, temporary_name, write_failure
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import PRETRAINED_EXPORT, load_weights_into
from clipedit.models.registry import UnavailableTokenizer, hub_reachable

log = logging.getLogger(__name__)

#: config ``model_type`` -> the transformers class clipedit loads it with.
SUPPORTED_MODELS = {"clip": "CLIPModel", "siglip": "SiglipModel"}
HF_EXPORT = PRETRAINED_EXPORT  # ModelBundle.extra key: fn(bundle, folder) -> the save_pretrained weights
INSTALL_HINT = "pip install 'clipedit[hf]'"


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
    config = _fetch(lambda: transformers.AutoConfig.from_pretrained(source), source, label, "config")
    model_class = getattr(transformers, _model_class_name(config, label))
    if init or (ckpt is not None and ckpt.is_file()):
        model = model_class(config)
        pretrained = "none"
        if ckpt is not None and ckpt.is_file():
            load_weights_into(model, ckpt)
            pretrained = str(ckpt)
    else:
        model = _fetch(lambda: model_class.from_pretrained(source, dtype=torch.float32), source, label, "weights")
        pretrained = source
    model = model.to(device).eval()
    processor = _image_processor(transformers, source, config)
    tokenizer = _tokenizer(transformers, source, config, label)
    bundle = ModelBundle(model=model, preprocess=preprocess_from_processor(processor),
                         tokenizer=tokenizer, name=f"hf:{ident or Path(source).name}", pretrained=pretrained,
                         kind="clip", image_tower="vision_model", image_encoder=image_features,
                         text_encoder=text_features)
    bundle.extra[HF_EXPORT] = functools.partial(export_pretrained, processor=processor,
                                                tokenizer=getattr(tokenizer, "tokenizer", None))
    return bundle


def _fetch(fn: Callable[[], Any], source: str, label: str, what: str) -> Any:
    """``fn()`` with hub failures as one line (offline mode switched on first when the hub is unreachable)."""
    local = Path(source).is_dir()
    offline = False if local else not hub_reachable()
    try:
        return fn()
    except (OSError, ValueError) as e:
        if local:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = f" (a folder without weights loads at random init as hf:{source}:none)" if what == "weights" else ""
            raise ModelLoadError(f"cannot load the {what} of {label} from {source}: {first}{hint}") from None
        reason = "no network and not in the local cache" if offline else f"{type(e).__name__}; offline?"
        raise ModelLoadError(f"could not fetch {label} ({reason}) - save_pretrained it elsewhere and pass "
                             "--model hf --checkpoint FOLDER") from None


def _model_class_name(config, label: str) -> str:
    name = SUPPORTED_MODELS.get(getattr(config, "model_type", ""))
    if name is None:
        found = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
        raise ModelLoadError(f"{label} is a {found} (model_type {config.model_type!r}); clipedit supports "
                             f"{', '.join(SUPPORTED_MODELS.values())}")
    return name


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected image embeddings (transformers 5 returns them as ``pooler_output``)."""
    return _tensor(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected text embeddings."""
    return _tensor(model.get_text_features(input_ids=input_ids))


def _tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- preprocessing ------------------------------------------------------------------------------------
def _image_processor(transformers, source: str, config):
    """The model's image processor; for a folder without one (a bare config), the family's standard."""
    try:
        return transformers.AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):
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
            steps.append(T.Resize(size["shortest_edge"], interpolation=interp))
        elif "height" in size and "width" in size:
            steps.append(T.Resize((size["height"], size["width"]), interpolation=interp))
        else:
            raise ModelLoadError(f"image processor size {size} is not supported (shortest_edge or height/width)")
    crop = _as_dict(getattr(processor, "crop_size", None))
    if getattr(processor, "do_center_crop", False) and crop:
        steps.append(T.CenterCrop((crop["height"], crop["width"])))
    steps.append(T.PILToTensor())
    factor = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
    steps.append(T.Lambda(lambda x, f=factor: x.float() * f))
    if getattr(processor, "do_normalize", True):
        steps.append(T.Normalize(list(processor.image_mean), list(processor.image_std)))
    return T.Compose(steps)


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
        tok = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
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


def is_hf_bundle(bundle: ModelBundle) -> bool:
    """Whether ``bundle`` came from :func:`load_hf`."""
    return HF_EXPORT in bundle.extra


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
