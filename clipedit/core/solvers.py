"""The paper's optimiser for the rank-r factor Λ of ΔW = Λ Dᵀ (the closed form: ``exemplar_sums``)."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import trange

from clipedit.core.hparams import RewriteHParams
from clipedit.core.keys_values import Exemplars
from clipedit.core.nethook import get_module, training_only
from clipedit.core.sites import Site
from clipedit.errors import EditError

log = logging.getLogger(__name__)


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
    target = site.locations(site.site_layout(ex.block_target))

    def project_() -> None:
        delta = (weight - w0).reshape(w0.shape[0], -1) @ proj
        weight.copy_(w0 + delta.reshape(w0.shape))

    opt = torch.optim.Adam([weight], lr=hp.lr)
    try:
        with training_only(model, [weight]):
            for step in trange(hp.steps, desc="rewrite (optimize)", leave=False, disable=None):
                out = site.locations(site.site_layout(block(ex.block_input)))
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
    D64 = D.to(delta.device, torch.float64)
    return delta @ D64 @ torch.linalg.inv(D64.T @ D64)
