"""Solvers for the rank-r factor Λ of the update ΔW = Λ Dᵀ."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import trange

from clipedit.core.hparams import RewriteHParams
from clipedit.core.keys_values import Exemplars
from clipedit.core.nethook import get_module
from clipedit.core.sites import Site
from clipedit.errors import EditError

log = logging.getLogger(__name__)


def solve_closed_form(site: Site, ex: Exemplars, D: torch.Tensor, keep_targets: float = 0.0) -> torch.Tensor:
    """Least squares for Λ: minimise Σ_i m_i ‖(W + Λ Dᵀ) k_i + b − v_i‖² with D fixed
    (+ β Σ_i m_i ‖Λ Dᵀ t_i‖² over the target keys t_i when ``keep_targets`` β > 0).

    Returns:
        Λ, (out, r) float64.
    """
    K = ex.keys.to(torch.float64)
    W = site.weight_matrix().detach().to(torch.float64)
    bias = site.bias
    b = bias.detach().to(torch.float64) if bias is not None else 0.0
    R = ex.values.to(torch.float64) - (K @ W.T + b)
    P = K @ D.to(K.device)
    sw = ex.weights.to(torch.float64).sqrt()[:, None]
    P, R = P * sw, R * sw
    if keep_targets > 0 and ex.target_keys is not None:
        T = ex.target_keys.to(torch.float64) @ D.to(K.device) * (sw * keep_targets ** 0.5)
        P, R = torch.cat([P, T]), torch.cat([R, torch.zeros(T.shape[0], R.shape[1], dtype=R.dtype, device=R.device)])
    lam_t = torch.linalg.lstsq(P.cpu(), R.cpu(), driver="gelsd").solution
    return lam_t.T.contiguous()


def solve_optimize(model: nn.Module, site: Site, ex: Exemplars, D: torch.Tensor,
                   hp: RewriteHParams) -> torch.Tensor:
    """The paper's solver: Adam on W with a masked loss on the block output, projecting ΔW onto span(D).

    The model is left unchanged. Returns Λ, (out, r) float64.
    """
    if site.block_name is None or ex.block_input is None:
        raise EditError(f"the optimize solver needs a site inside a known block; {site.layer} has none "
                        "(use the closed-form solver)")
    block = get_module(model, site.block_name)
    weight = site.module.weight
    if site.weight is not weight:
        raise EditError(f"the optimize solver edits a module's whole weight; {site.layer} is part of one "
                        "(use the closed-form solver)")
    w0 = weight.detach().clone()
    Df = D.to(weight.device, torch.float32)
    proj = Df @ torch.linalg.solve(Df.T @ Df, Df.T)
    mask = ex.location_mask.to(weight.device)
    target = site.locations(ex.block_target)

    def project_() -> None:
        delta = (weight - w0).reshape(w0.shape[0], -1) @ proj
        weight.copy_(w0 + delta.reshape(w0.shape))

    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weight.requires_grad_(True)
    opt = torch.optim.Adam([weight], lr=hp.lr)
    try:
        with torch.enable_grad():
            for step in trange(hp.steps, desc="rewrite (optimize)", leave=False, disable=None):
                out = site.locations(block(ex.block_input))
                loss = ((out - target).pow(2).sum(-1) * mask).sum() / mask.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if (step + 1) % hp.project_every == 0:
                    with torch.no_grad():
                        project_()
        with torch.no_grad():
            project_()
            delta = (weight - w0).reshape(w0.shape[0], -1).to(torch.float64)
        log.info("optimize: final masked loss %.4g", loss.item())
    finally:
        with torch.no_grad():
            weight.copy_(w0)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    D64 = D.to(delta.device, torch.float64)
    return delta @ D64 @ torch.linalg.inv(D64.T @ D64)
