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

Modules: ``load`` (the loader), ``checks`` (a folder or hub id checked), ``processing`` (image processor and
tokenizer), ``export`` (writing folders).
"""
from clipedit.models.hf.export import export_pretrained, write_config_folder
from clipedit.models.hf.load import load_hf
from clipedit.models.hf.processing import HFTextTokenizer, preprocess_from_processor

__all__ = ["HFTextTokenizer", "export_pretrained", "load_hf", "preprocess_from_processor", "write_config_folder"]
