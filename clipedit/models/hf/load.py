"""``load_model("hf:ORG/NAME")``: a ``CLIPModel`` / ``SiglipModel`` as a :class:`ModelBundle` (its own names,
its own processor and tokenizer), from the hub, a local folder or a state dict."""
from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch

from clipedit.errors import ClipeditError, ModelLoadError
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import PRETRAINED_EXPORT, load_weights_into
from clipedit.models.hf.checks import (
    _fetch,
    _first,
    _model_class_name,
    check_buildable,
    check_folder_files,
    from_pretrained_checked,
)
from clipedit.models.hf.export import export_pretrained
from clipedit.models.hf.processing import _image_processor, _tokenizer, preprocess_from_processor

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


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected image embeddings (transformers 5 returns them as ``pooler_output``)."""
    return _tensor(model.get_image_features(pixel_values=pixel_values))


def text_features(model, input_ids: torch.Tensor) -> torch.Tensor:
    """A CLIPModel/SiglipModel's projected text embeddings."""
    return _tensor(model.get_text_features(input_ids=input_ids))


def _tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output
