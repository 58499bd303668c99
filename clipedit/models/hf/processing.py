"""A Hugging Face model's own inputs: its image processor as a torchvision pipeline (resize, crop, rescale,
normalise) and its tokenizer, padded to the text tower's length."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torchvision import transforms as T

from clipedit.errors import ModelLoadError
from clipedit.models.hf.checks import _first, _quietly
from clipedit.models.registry import UnavailableTokenizer

log = logging.getLogger(__name__)


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
