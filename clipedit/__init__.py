"""clipedit: defend CLIP against typographic attacks by rewriting one layer, and audit models for it.

    import clipedit
    bundle = clipedit.load_model("mini")
    defense = clipedit.defend(bundle, "ipod")
    clipedit.save_edit("ipod-edit.safetensors", defense.edit)
"""
import importlib
import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Public name -> submodule. Imported on first use, so `import clipedit` stays light and the
# `attacks` package can import `clipedit.errors` without a cycle.
_EXPORTS = {
    "Defense": "defend", "DefenseConfig": "defend", "defend": "defend", "text_exemplars": "defend",
    "ClipeditError": "errors", "EditError": "errors", "ModelLoadError": "errors", "SiteError": "errors",
    "ModelBundle": "models", "list_models": "models", "load_model": "models",
    "make_predictor": "predict",
    "EditRequest": "rewrite", "LayerEdit": "rewrite", "RewriteHParams": "rewrite", "apply_edit": "rewrite",
    "apply_rewrite": "rewrite", "compute_rewrite": "rewrite", "key_statistics": "rewrite",
    "load_edit": "rewrite", "revert_edit": "rewrite", "save_edit": "rewrite",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clipedit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
