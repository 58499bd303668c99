"""Writing Hugging Face folders: a defended model as a ``save_pretrained`` folder ``from_pretrained`` loads,
and a config folder (tiny by default) that builds a model at random init."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from clipedit.errors import ModelLoadError
from clipedit.io import atomic_file_set, ensure_writable_dir, remove_stale_temporaries, temporary_name, write_failure
from clipedit.models.bundle import ModelBundle
from clipedit.models.hf.checks import SUPPORTED_MODELS


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
