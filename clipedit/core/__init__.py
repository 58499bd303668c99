"""The rewrite core: rank-r edits of one layer of any torch model, independent of CLIP.

It imports nothing from the rest of clipedit but ``errors`` and ``io``: sites and hooks
(``sites``, ``nethook``), keys and values (``keys_values``), the subspace (``subspace``),
the closed-form solve from exemplar sums (``exemplar_sums``, the one closed-form solver) and the
paper's optimiser (``solvers``), key statistics and their cache (``statistics``, ``cache``), weight
edits (``edits``) and the one edit type with its file format (``edit_sets``), behind ROME-style calls
(``api``).
"""
from clipedit.core import hook_edits, prompt_edits  # noqa: F401, E402  (they register their edit kinds)
from clipedit.core.api import EditRequest, KeepRequest, KeyStatistics, apply_rewrite, compute_rewrite, key_statistics
from clipedit.core.edit_sets import (
           EditSet,
           apply_edit_set,
           load_edit,
           load_edits,
           register_edit_kind,
           revert_edit_set,
           save_edits,
)
from clipedit.core.edits import LayerEdit, apply_edit, revert_edit
from clipedit.core.hparams import RewriteHParams
from clipedit.core.sites import BLOCK_SPECS, Site, resolve_site

__all__ = ["EditRequest", "KeepRequest", "KeyStatistics", "apply_rewrite", "compute_rewrite", "key_statistics",
           "EditSet", "apply_edit_set", "load_edit", "load_edits", "register_edit_kind", "revert_edit_set",
           "save_edits", "LayerEdit", "apply_edit", "revert_edit", "RewriteHParams",
           "BLOCK_SPECS", "Site", "resolve_site"]
