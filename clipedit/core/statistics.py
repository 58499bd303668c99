"""Second moment C = E[k kᵀ] of a site's keys over reference images: streamed in float64, cached on disk."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from clipedit.core.cache import cache_key, cached_tensors, module_fingerprint
from clipedit.core.distributed import (
    agree_on_model,
    all_reduce_sum,
    is_distributed,
    is_main_process,
    shard_iterable,
)
from clipedit.core.nethook import Trace
from clipedit.core.sites import Site
from clipedit.errors import EditError

log = logging.getLogger(__name__)


@torch.no_grad()
def key_second_moment(model: nn.Module, site: Site, batches: Iterable[torch.Tensor],
                      forward: Optional[Callable] = None) -> tuple[torch.Tensor, int]:
    """Stream reference batches through ``forward`` and accumulate Σ k kᵀ at every location.

    Inside a ``torch.distributed`` process group each rank takes every world-size-th batch and the
    sums are all-reduced: every rank gets the single-process result (to float64 round-off).

    Returns:
        (C, n): the second moment (key_dim x key_dim, float64, on CPU) and the number of keys.
    """
    forward = forward or model
    agree_on_model(model)  # under torch.distributed: every rank's share is of the same weights
    d = site.key_dim
    total = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for batch in tqdm(shard_iterable(batches), desc="key statistics", leave=False, unit="batch", disable=None):
        with Trace(model, site.hook_name, retain_input=True, retain_output=False, stop=True) as tr:
            forward(batch.to(_device(model)))
        keys = site.keys(site.input_of(tr)).reshape(-1, d).to(torch.float64).cpu()
        total += keys.T @ keys
        count += keys.shape[0]
    total = all_reduce_sum(total)
    count = int(all_reduce_sum(torch.tensor([count], dtype=torch.float64)).item())
    if count == 0:
        raise EditError("no reference images for the key statistics")
    return total / count, count


def cached_second_moment(model: nn.Module, site: Site, batches: Callable[[], Iterable[torch.Tensor]],
                         data_key: Optional[str], forward: Optional[Callable] = None,
                         model_key: Optional[str] = None) -> tuple[torch.Tensor, int]:
    """``key_second_moment`` cached by (model weights, site, data); ``data_key=None`` disables the cache.

    Args:
        batches: a callable giving the reference batches (only called on a cache miss).
        data_key: identifies the reference data and its preprocessing.
        model_key: identifies the weights; default hashes every parameter of ``model``.

    Under ``torch.distributed`` every rank computes its shard (a cache hit on some ranks only would
    leave the others waiting in the all-reduce); rank 0 then stores the result.
    """
    def compute():
        c, n = key_second_moment(model, site, batches(), forward)
        return {"C": c, "n": torch.tensor(n)}

    if data_key is None:
        return _unpack(compute())
    args = {"model": model_key or module_fingerprint(model), "site": site.layer, "data": data_key}
    shapes = {"C": (site.key_dim, site.key_dim), "n": ()}
    if is_distributed():
        out = compute()
        if is_main_process():
            cached_tensors("stats", cache_key(**args), lambda: out, args=args, shapes=shapes)
    else:
        out = cached_tensors("stats", cache_key(**args), compute, args=args, shapes=shapes)
    return _unpack(out)


def _unpack(out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    return out["C"], int(out["n"])


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
