"""The paper's baselines: fine-tune one layer (local) or the whole image tower (global) on the exemplars.

Both minimise a distance between the model's output for the attacked exemplars and the *unedited*
model's output for their targets, the same pairs the rewrite uses (no labels needed).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import trange

from clipedit.core.api import EditRequest
from clipedit.core.hparams import COUNT, POSITIVE, HParams
from clipedit.core.nethook import FrozenBelow, training_only
from clipedit.core.sites import resolve_site
from clipedit.errors import ClipeditError, EditError
from clipedit.methods.spec import DefenseData, DefenseResult, MethodContext, budget, fixed_selection
from clipedit.models.bundle import ModelBundle
from clipedit.settings.config import DefenseConfig
from clipedit.settings.defaults import default_layer

log = logging.getLogger(__name__)


@dataclass
class FinetuneHParams(HParams):
    """Fine-tuning baseline settings.

    Attributes:
        steps: Adam steps on the exemplar batch.
        lr: learning rate.
        loss: ``cosine`` (embeddings, CLIP) or ``kl`` (logits, classifiers).
    """

    steps: int = 200
    lr: float = 1e-4
    loss: Literal["cosine", "kl"] = "cosine"

    BOUNDS = {"steps": COUNT, "lr": POSITIVE}


def _distance(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "cosine":
        return (1 - F.cosine_similarity(out.float(), target.float(), dim=-1)).mean()
    if kind == "kl":
        return F.kl_div(F.log_softmax(out.float(), -1), F.log_softmax(target.float(), -1),
                        log_target=True, reduction="batchmean")
    raise EditError(f"unknown fine-tuning loss {kind!r}")


def finetune(model: nn.Module, params: Iterable[nn.Parameter], request: EditRequest,
             hparams: FinetuneHParams, forward: Callable | None = None, frozen_below: str | None = None) -> float:
    """Fine-tune ``params`` of ``model`` in place; returns the final loss.

    BatchNorm layers stay in eval mode (their statistics are not updated from one exemplar), and so does
    every other layer (no dropout): each step sees the same forward pass.

    Args:
        frozen_below: the layer that holds ``params`` (finetune-local): what runs below it is computed
            once on the exemplars and replayed at every step (:class:`clipedit.core.nethook.FrozenBelow`);
            the layer and those above it still run each step. The trained weights equal an uncached run's.
    """
    forward = forward or model
    params = list(params)
    if not params:
        raise EditError("nothing to fine-tune")
    dev = next(model.parameters()).device
    attacked, target = request.attacked.to(dev), request.target.to(dev)
    with torch.no_grad():
        goal = forward(target)
    opt = torch.optim.Adam(params, lr=hparams.lr)
    model.eval()
    loss = torch.tensor(float("nan"))
    step: Callable = lambda: forward(attacked)  # noqa: E731
    replay = FrozenBelow(model, frozen_below, step, trained=params) if frozen_below else contextlib.nullcontext(step)
    with training_only(model, params), replay as step:
        for _ in trange(hparams.steps, desc="fine-tuning", leave=False, disable=None):
            loss = _distance(step(), goal, hparams.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    log.info("fine-tuning: final loss %.4g", loss.item())
    return float(loss.item())


def run_finetune(local: bool) -> Callable:
    """The table's run of ``finetune-local`` (one site's weight) or ``finetune-global`` (the image tower)."""
    def run(bundle: ModelBundle, data: DefenseData, hparams: FinetuneHParams, context: MethodContext
            ) -> DefenseResult:
        method = "finetune-local" if local else "finetune-global"
        if local:
            if len(context.sites) != 1:
                raise ClipeditError(f"finetune-local trains one layer; got {len(context.sites)}: "
                                    f"{', '.join(context.sites)}")
            site = resolve_site(bundle.model, context.sites[0])
            if not isinstance(site.weight, torch.nn.Parameter):
                raise ClipeditError(f"finetune-local trains a whole weight; {site.layer} is part of one (pass a "
                                    "module's layer, e.g. an mlp.c_proj)")
            params = [site.weight]
        else:
            params = list(bundle.image_module.parameters())
        request = data.merged()
        finetune(bundle.model, params, request, hparams, forward=bundle.encode_images,
                 frozen_below=site.layer if local else None)
        for name, p in bundle.model.named_parameters():
            if not torch.isfinite(p).all():
                raise EditError(f"fine-tuning produced NaN or inf in {name}")
        n = int(request.attacked.shape[0])
        details = {"selection": fixed_selection("the paper's baseline settings"),
                   "budget": budget(hparams.steps * n, hparams.steps, 1, train_images=n)}
        return DefenseResult(method, context.sites[0] if local else bundle.image_prefix.rstrip(".") or "model",
                             details=details)
    return run


def finetune_images(hparams: FinetuneHParams, config: DefenseConfig, n_train: int) -> int:
    """Training images one ``finetune-global`` run sees: one word's exemplars, every one in every step."""
    return hparams.steps * (config.renders or 1)


def finetune_local_applies(bundle: ModelBundle) -> None:
    """Raises ClipeditError when the model's default layer is part of a weight (finetune-local trains whole ones)."""
    site = resolve_site(bundle.model, default_layer(bundle))
    if not isinstance(site.weight, torch.nn.Parameter):
        raise ClipeditError(f"its default layer ({site.layer}) is part of a weight; finetune-local trains whole "
                            "weights")
