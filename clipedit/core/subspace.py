"""The rank-r subspace of C⁻¹-whitened key directions (Bau et al. 2020)."""
from __future__ import annotations

import logging
import warnings

import torch

from clipedit.errors import EditError

log = logging.getLogger(__name__)

UNDERSAMPLED_REG = 1e-1  # λ used when there are fewer reference keys than key dimensions


def regularise(C: torch.Tensor, n_keys: int, reg: float) -> torch.Tensor:
    """C + λ·mean(diag C)·I; λ is raised (with a warning) when C comes from fewer keys than dimensions."""
    d = C.shape[0]
    if n_keys < d:
        warnings.warn(f"only {n_keys} reference keys for a {d}-dim site: C is singular; "
                      f"regularising with λ={max(reg, UNDERSAMPLED_REG):g}", RuntimeWarning, stacklevel=2)
        reg = max(reg, UNDERSAMPLED_REG)
    scale = C.diagonal().mean().clamp_min(1e-12)
    return C + reg * scale * torch.eye(d, dtype=C.dtype, device=C.device)


def clamp_rank(rank: int, n_keys: int, key_dim: int) -> int:
    """``min(rank, n_keys, key_dim)``, with a warning naming the limit that applied when it is below ``rank``."""
    r = min(rank, n_keys, key_dim)
    if r < rank:
        limit = f"the key dimension is {key_dim}" if key_dim <= n_keys else f"only {n_keys} exemplar keys"
        log.warning("rank %d clamped to %d (%s)", rank, r, limit)
    return r


def edit_directions(keys: torch.Tensor, C: torch.Tensor, rank: int,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """D = L⁻ᵀ U_r: the top-r right singular vectors of the whitened keys Z = K L⁻ᵀ (C = L Lᵀ), in key space.

    Args:
        keys: (n, d) exemplar keys.
        C: (d, d) regularised second moment.
        rank: r; clamped to the number of keys.
        weights: (n,) optional row weights.

    Returns:
        (d, r) float64 directions; ΔW = Λ Dᵀ then responds only to keys along them.
    """
    K = keys.to(torch.float64)
    if weights is not None:
        K = K * weights.to(torch.float64).sqrt()[:, None]
    try:
        L = torch.linalg.cholesky(C.to(torch.float64))
    except RuntimeError:
        raise EditError("the key statistics are not positive definite; raise cov_reg") from None
    Z = torch.linalg.solve_triangular(L, K.T, upper=False).T  # rows z_i = L⁻¹ k_i
    n, d = Z.shape
    r = clamp_rank(rank, n, d)
    _, _, Vh = torch.linalg.svd(Z, full_matrices=False)
    return torch.linalg.solve_triangular(L.T, Vh[:r].T, upper=True)
