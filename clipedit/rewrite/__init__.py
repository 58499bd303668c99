"""The rewrite core: rank-r edits of one layer, independent of CLIP."""
from .api import EditRequest, KeyStatistics, apply_rewrite, compute_rewrite, key_statistics
from .defaults import DEFAULT_SITES, default_layer
from .edit import LayerEdit, apply_edit, load_edit, revert_edit, save_edit
from .hparams import RewriteHParams
from .sites import BLOCK_SPECS, Site, resolve_site

__all__ = ["EditRequest", "KeyStatistics", "apply_rewrite", "compute_rewrite", "key_statistics",
           "DEFAULT_SITES", "default_layer", "LayerEdit", "apply_edit", "load_edit", "revert_edit",
           "save_edit", "RewriteHParams", "BLOCK_SPECS", "Site", "resolve_site"]
