"""Model registry: CLIP models from open_clip, the bundled mini CLIP, and ImageNet classifiers."""
from clipedit.io import save_state_dict
from clipedit.models.bundle import ModelBundle
from clipedit.models.checkpoint import load_state_dict_file
from clipedit.models.registry import list_models, load_model, parse_spec, register_loader, resolve_device

__all__ = ["ModelBundle", "load_model", "list_models", "parse_spec", "register_loader",
           "resolve_device", "load_state_dict_file", "save_state_dict"]
