"""Sums that shard exactly, over ``torch.distributed`` (launch with ``torchrun``; gloo on CPU, nccl on GPUs).

Key statistics and audit counts are sums over images: each rank takes its shard and the partial
sums are all-reduced. Without an initialised process group every helper is the identity, so the
same code runs in one process.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from clipedit.errors import ClipeditError

T = TypeVar("T")


_ALONE = threading.local()


@contextlib.contextmanager
def rank_alone() -> Iterator[None]:
    """Inside, this rank works alone: :func:`is_distributed` is False, so sums are not sharded and nothing
    waits on the other ranks. For work dealt out whole to one rank (compare's units), whose key statistics
    are of weights only this rank holds (e.g. a second site's, after the first site's edit)."""
    before = getattr(_ALONE, "on", False)
    _ALONE.on = True
    try:
        yield
    finally:
        _ALONE.on = before


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank (and not inside :func:`rank_alone`)."""
    return (not getattr(_ALONE, "on", False) and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank_and_world() -> tuple[int, int]:
    """(this rank, number of ranks); (0, 1) outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def init_from_environment(agree_on: Any = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment).

    Uses nccl when CUDA is available, gloo otherwise. Returns whether a group is (now) initialised.
    With ``agree_on`` (e.g. the command's arguments), every rank first checks that all ranks passed
    the same value (:func:`agree`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if agree_on is not None:
        agree(agree_on)
    return True


def digest_of(value: Any) -> bytes:
    """SHA-256 of ``value`` as canonical JSON (paths and other objects by their ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()


def agree(value: Any, what: str = "arguments", differ: str = "were started with different") -> None:
    """Stop every rank with one line unless all ranks hold the same ``value`` (compared by digest, so
    that ranks started with different arguments, or reading different data, never mix their shares);
    nothing outside a group. ``value`` may be bytes (a digest already taken)."""
    if not is_distributed():
        return
    digest = torch.tensor(list(value if isinstance(value, bytes) else digest_of(value)), dtype=torch.int64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    low, high = digest.to(device), digest.clone().to(device)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        rank, world = rank_and_world()
        dist.destroy_process_group()  # every rank knows by now; leave the group so that exiting does not abort
        raise ClipeditError(f"the {world} torchrun ranks {differ} {what} (this is rank {rank}); "
                            "start every rank with the same command on the same data")


def agree_on_model(model: torch.nn.Module) -> None:
    """Stop every rank with one line unless all ranks hold the same weights (a random-init model, or another
    file behind the same --checkpoint path, would mix two models' figures); nothing outside a group."""
    if is_distributed():
        from clipedit.core.edits import model_identity

        agree(bytes.fromhex(model_identity(model)), "model weights (another file behind --checkpoint, or a "
              "random initialisation, on some rank)", "hold different")


def shard_bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of ``n`` items (sizes differ by at most one)."""
    rank, world = rank_and_world()
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's contiguous slice of ``items`` (all of them outside a process group)."""
    start, stop = shard_bounds(len(items))
    return items[start:stop]


def shard_iterable(items: Iterable[T]) -> Iterable[T]:
    """Every world-size-th item starting at this rank: a sequence is indexed, an iterator is skipped through."""
    rank, world = rank_and_world()
    if world == 1:
        return items
    if isinstance(items, Sequence):
        return (items[i] for i in range(rank, len(items), world))
    return itertools.islice(items, rank, None, world)


class IndexedBatches(Sequence[torch.Tensor]):
    """Stacked ``transform(item)`` batches built only when indexed, so that a rank taking every
    world-size-th batch (:func:`shard_iterable`) never reads or decodes the other ranks' items."""

    def __init__(self, items: Sequence[Any], transform: Callable[[Any], torch.Tensor], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.items, self.transform, self.batch_size = items, transform, batch_size

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        start = (i % len(self)) * self.batch_size
        stop = min(start + self.batch_size, len(self.items))
        return torch.stack([self.transform(self.items[j]) for j in range(start, stop)])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device; itself outside a group).

    nccl reduces on this rank's GPU, gloo on the CPU; float64 sums of integers are exact.
    """
    if not is_distributed():
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffer = tensor.detach().to(device).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank_and_world()[0] == 0


def all_gather_objects(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` outside a group."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
