"""Run by tests/test_distributed.py under ``torchrun``: key statistics and an audit, sharded over ranks.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR REFERENCE_DIR

Each rank saves what it got to OUT_DIR/rank{r}.pt and runs ``clipedit stats`` on REFERENCE_DIR (rank 0
writes OUT_DIR/stats.safetensors); ``workload()`` alone is the one-process run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import skimage.data
import torch
from PIL import Image

from clipedit.core import resolve_site
from clipedit.core.distributed import init_from_environment, rank_and_world
from clipedit.core.statistics import key_second_moment
from clipedit.eval.attack_sets import attacks_from_photos
from clipedit.eval.distributed import evaluate_attacks_sharded
from clipedit.eval.predictor import make_predictor
from clipedit.models import load_model

LAYER = "visual.transformer.resblocks.0.mlp.c_proj"
CLASSES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut", "horse": "horse"}


def reference_batches() -> list[torch.Tensor]:
    """Five batches (an odd number: the ranks get unequal shares)."""
    g = torch.Generator().manual_seed(11)
    return [torch.randn(3, 3, 64, 64, generator=g) for _ in range(5)]


def workload() -> dict:
    """C over the reference batches and the audit of notes on five photos, on a seeded tiny-vit."""
    torch.manual_seed(0)
    bundle = load_model("tiny-vit", device="cpu")
    C, n = key_second_moment(bundle.model, resolve_site(bundle.model, LAYER), reference_batches(),
                             bundle.encode_images)
    names = list(CLASSES)
    photos = [Image.fromarray(getattr(skimage.data, src)()).convert("RGB").resize((64, 64))
              for src in CLASSES.values()]
    attacks, labels = attacks_from_photos(photos, list(range(len(names))), names, names + ["ipod"],
                                          per_image=3, seed=4, progress=False)
    audit = evaluate_attacks_sharded(bundle, make_predictor(bundle, names), attacks[:-1], labels[:-1],
                                     batch_size=4, progress=False)
    return {"C": C, "n": n, "audit": audit, "world": rank_and_world()[1]}


if __name__ == "__main__":
    from clipedit import cli

    init_from_environment()
    out, reference = Path(sys.argv[1]), sys.argv[2]
    torch.save(workload(), out / f"rank{rank_and_world()[0]}.pt")
    torch.manual_seed(0)  # tiny-vit's weights, as in the one-process run
    cli.main(["stats", "--model", "tiny-vit", "--device", "cpu", "--reference", reference, "--batch-size", "2",
              "--out", str(out / "stats.safetensors")])
