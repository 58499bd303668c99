"""The rewrite core: rank-r edits of one layer of any torch model, independent of CLIP.

It imports nothing from the rest of clipedit but ``errors`` and ``io``: sites and hooks
(``sites``, ``nethook``), keys and values (``keys_values``), the subspace (``subspace``),
solvers (``solvers``), key statistics and their cache (``statistics``, ``cache``) and edit
files (``edits``), behind ROME-style calls (``api``).
"""
from clipedit.core.api import EditRequest, KeyStatistics, apply_rewrite, compute_rewrite, key_statistics
from clipedit.core.edits import LayerEdit, apply_edit, load_edit, revert_edit, save_edit
from clipedit.core.hparams import RewriteHParams
from clipedit.core.sites import BLOCK_SPECS, Site, resolve_site

__all__ = ["EditRequest", "KeyStatistics", "apply_rewrite", "compute_rewrite", "key_statistics",
           "LayerEdit", "apply_edit", "load_edit", "revert_edit", "save_edit", "RewriteHParams",
           "BLOCK_SPECS", "Site", "resolve_site"]
