"""``clipedit stats``: the key statistics of a layer over a reference folder, computed once and cached for
``defend --reference``. Under ``torchrun`` every rank reads and runs its share of the images and the
sums are all-reduced (nccl on GPUs, gloo on CPUs):

    torchrun --nproc_per_node 8 -m clipedit stats --model ViT-L-14:openai --reference /data/imagenet/train
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.options import ModelOptions, batch_size_option, check_out_file, model_options
from clipedit.commands.params import JOIN, LAYERS
from clipedit.errors import ClipeditError


@click.command("stats")
@model_options()
@click.option("--reference", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of reference images (searched recursively).")
@click.option("--layer", type=LAYERS, default=None,
              help="Dotted name of the site, or several joined by '+' [default: the model's default site(s), "
                   "as defend uses them].")
@batch_size_option()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write C and the key count to this .safetensors file (rank 0).")
def stats_cmd(model: ModelOptions, reference: Path, layer: Optional[str], batch_size: int,
              out: Optional[Path]) -> None:
    """Key statistics C = E[k kᵀ] of each LAYER over the images in REFERENCE (cached; sharded under torchrun)."""
    import torch

    from clipedit.core import key_statistics
    from clipedit.core.distributed import IndexedBatches, agree, init_from_environment, is_main_process, rank_and_world
    from clipedit.data.folders import files_key, image_paths
    from clipedit.data.images import LazyImages
    from clipedit.io import save_state_dict
    from clipedit.outputs import check_outputs
    from clipedit.settings.resolve import resolve_config

    if out is not None:
        check_out_file(out)
    check_outputs({"--out": out}, inputs={"--checkpoint": model.checkpoint, "--reference": reference})
    paths = image_paths(reference, "reference folder")  # before the model loads
    init_from_environment(agree_on=click.get_current_context().params)
    if out is not None and layer is not None and JOIN in layer:
        raise ClipeditError("--out writes one site's statistics: give one --layer")
    bundle = model.load()
    layers = list(resolve_config(bundle, {"layer": layer}).sites)  # the model's default sites when none is given
    if out is not None and len(layers) > 1:
        raise ClipeditError(f"--out writes one site's statistics; this model's default is {len(layers)} sites: "
                               "give one --layer")
    # the same cache key as `defend --reference` (clipedit.defenses.typographic.reference_statistics)
    data_key = files_key(paths) + repr(bundle.preprocess)
    agree(data_key, "reference images (the folder holds other files, or other bytes, on some rank)", "read different")
    batches = lambda: IndexedBatches(LazyImages(paths), bundle.preprocess, batch_size)  # noqa: E731
    for site in layers:
        with _cache_write_failures() as failures:
            stats = key_statistics(bundle.model, site, batches, data_key=data_key, forward=bundle.encode_images)
        if not is_main_process():
            continue
        if out is not None:
            save_state_dict(out, {"C": stats.C.contiguous(), "n_keys": torch.tensor(stats.n_keys)})
        cached = (f"not cached ({failures[0]})" if failures else f"cached for defend --reference {reference}")
        click.echo(f"key statistics of {site}: {stats.n_keys} keys from {len(paths)} images "
                   f"on {rank_and_world()[1]} rank(s); {cached}")


@contextlib.contextmanager
def _cache_write_failures() -> Iterator[list[str]]:
    """The cache's warnings of entries it could not write while the block ran (caching is best effort:
    the command then says the statistics were not cached, instead of claiming they were)."""
    failures: list[str] = []

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "could not write" in record.getMessage():
                failures.append(record.getMessage())

    logger, handler = logging.getLogger("clipedit.core.cache"), Seen(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)
