"""Throughput of the key-statistics pass against a plain ``encode_image`` loop over the same images,
and its peak memory at N and 4N reference images (it streams: flat).

    python -m bench stats_speed [--quick]

Both loops preprocess the same PIL images in batches of 64. The statistics stop the forward pass at
the site, so they may be faster than the full pass. Writes (with --update-results) bench/results/stats_speed.json.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from bench.measure import device, paired_seconds, peak_memory, quick_arguments, ratio_line, save
from clipedit import load_model
from clipedit.core import key_statistics
from clipedit.data.images import to_batches
from clipedit.data.worlds import PhotoWorld
from clipedit.models.bundle import ModelBundle
from clipedit.settings.defaults import default_layer

BATCH = 64
TARGET = 0.9
MEMORY_FLAT = 1.25  # peak(4N) / peak(N) at most this


def encode_loop(bundle: ModelBundle, images: Sequence[Image.Image]) -> int:
    """The plain baseline: preprocess and ``encode_image`` every batch; returns the images seen."""
    seen = 0
    with torch.no_grad():
        for batch in to_batches(images, bundle.preprocess, BATCH):
            bundle.encode_images(batch)
            seen += len(batch)
    return seen


def statistics_pass(bundle: ModelBundle, layer: str, images: Sequence[Image.Image]):
    return key_statistics(bundle.model, layer, lambda: to_batches(images, bundle.preprocess, BATCH),
                          forward=bundle.encode_images)


def measure(spec: str, n: int, layer: str | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_model(spec, device=device())
    layer = layer or default_layer(bundle)
    world = bundle.world or PhotoWorld()
    pool = list(world.reference_images(4 * n))
    images = [pool[i % len(pool)] for i in range(4 * n)]  # some worlds give a fixed number
    statistics_pass(bundle, layer, images[:BATCH])  # warm-up
    stats = statistics_pass(bundle, layer, images[:n])
    t_plain, t_stats = paired_seconds(lambda: encode_loop(bundle, images[:n]),
                                      lambda: statistics_pass(bundle, layer, images[:n]), repeat=2)
    peak_n, _ = peak_memory(lambda: statistics_pass(bundle, layer, images[:n]))
    peak_4n, _ = peak_memory(lambda: statistics_pass(bundle, layer, images))
    return {"model": spec, "layer": layer, "key_dim": stats.C.shape[0], "n_images": n,
            "statistics_images_per_s": n / t_stats, "encode_image_images_per_s": n / t_plain,
            "ratio": t_plain / t_stats, "peak_mib": {"N": peak_n.host_mib, "4N": peak_4n.host_mib},
            "peak_device_mib": {"N": peak_n.device_mib, "4N": peak_4n.device_mib},
            "peak_ratio_4n_over_n": peak_4n.host_mib / max(peak_n.host_mib, 1.0)}


def run(quick: bool = False) -> dict[str, Any]:
    configs = [("mini", 2 * BATCH if quick else 8 * BATCH, None)]
    # N = two batches: the peak is steady from the second batch on (docs/speed.md)
    configs.append(("ViT-B-32:none", 2 * BATCH, None))
    if not quick:
        configs.append(("ViT-B-32:none", 2 * BATCH, "visual.transformer.resblocks.6.mlp.c_proj"))
    rows = [measure(spec, n, layer) for spec, n, layer in configs]
    result = {"rows": rows, "target_ratio": TARGET, "target_peak_ratio": MEMORY_FLAT,
              "met": all(r["ratio"] >= TARGET and r["peak_ratio_4n_over_n"] <= MEMORY_FLAT for r in rows)}
    print("key statistics vs encode_image (same images, batches of 64):")
    for r in rows:
        print(f"  {r['model']} {r['layer']} (d={r['key_dim']}), N={r['n_images']}: "
              f"{r['statistics_images_per_s']:.1f} vs {r['encode_image_images_per_s']:.1f} images/s; "
              f"peak +{r['peak_mib']['N']:.0f} MiB at N, +{r['peak_mib']['4N']:.0f} MiB at 4N")
        print("  " + ratio_line("  throughput, statistics / encode_image", r["ratio"], TARGET))
        print("  " + ratio_line("  peak memory, 4N / N", r["peak_ratio_4n_over_n"], MEMORY_FLAT,
                                higher_is_better=False))
    save("stats_speed", result, quick)
    return result


add_arguments = quick_arguments


def main(args) -> None:
    run(args.quick)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
