"""How the edit's time and memory grow with the key dimension: the mini CLIP and random-init open_clip
RN50, ViT-B/32 and ViT-L/14 (shapes decide the cost, not the weights), each at its default site.

    python -m bench edit_scaling [--quick]      # quick: the mini and ViT-B/32 only

For each: the closed-form edit (time, peak memory) and the optimizer's time per step on the same
exemplars, extrapolated to the paper's 20000 steps. Writes (with --update-results) bench/results/edit_scaling.json.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

from bench.measure import device, peak_memory, quick_arguments, ratio_line, save, seconds
from clipedit import load_model
from clipedit.core import RewriteHParams, compute_rewrite, key_statistics, resolve_site
from clipedit.core.keys_values import collect_exemplars
from clipedit.core.nethook import Trace
from clipedit.core.solvers import solve_optimize
from clipedit.core.subspace import edit_directions, regularise
from clipedit.data.images import to_batches
from clipedit.data.prepare.exemplars import request_from_attacks
from clipedit.data.worlds import PhotoWorld
from clipedit.defenses.typographic import text_exemplars
from clipedit.settings.defaults import default_layer, defaults_for

log = logging.getLogger(__name__)

PAPER_STEPS = RewriteHParams().steps
OPTIMIZER_STEPS = 3  # timed, then extrapolated to PAPER_STEPS
KEYS_PER_DIM = 2  # reference keys per key dimension for a well-conditioned C


def _locations(bundle, layer: str, image) -> int:
    """Keys per image at the site."""
    site = resolve_site(bundle.model, layer)
    with torch.no_grad(), Trace(bundle.model, layer, retain_input=True, stop=True) as tr:
        bundle.encode_images(bundle.preprocess(image)[None])
    return site.keys(tr.input).shape[1]


def measure(spec: str, renders: int) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_model(spec, device=device())
    layer = default_layer(bundle)
    d = defaults_for(bundle)
    site = resolve_site(bundle.model, layer)
    world = bundle.world or PhotoWorld()
    reference = list(world.reference_images(d.n_reference))
    n_ref = max(16, math.ceil(KEYS_PER_DIM * site.key_dim / _locations(bundle, layer, reference[0])))
    reference = [reference[i % len(reference)] for i in range(n_ref)]
    batches = lambda: to_batches(reference, bundle.preprocess, 32)  # noqa: E731
    t_stats, stats = seconds(lambda: key_statistics(bundle.model, layer, batches,
                                                    forward=bundle.encode_images))
    log.info("%s: key statistics of %s (d=%d) from %d images, %.1f s", spec, layer, site.key_dim, n_ref, t_stats)
    exemplars = text_exemplars(bundle, "ipod", renders)
    request = request_from_attacks(bundle.preprocess, exemplars, use_text_mask=True)
    hp = RewriteHParams(layer=layer, rank=d.rank)

    def edit(hparams: RewriteHParams):
        return compute_rewrite(bundle.model, request, hparams, stats, forward=bundle.encode_images)

    edit(hp)  # warm-up
    t_cf, _ = seconds(lambda: edit(hp), repeat=2)
    peak, _ = peak_memory(lambda: edit(hp))
    log.info("%s: closed form %.2f s; timing the optimizer", spec, t_cf)
    # the optimizer's steps alone, on exemplars collected once (its collection costs what the closed form's does)
    ex = collect_exemplars(bundle.model, site, request.attacked, request.target, request.mask, bundle.encode_images)
    D = edit_directions(ex.keys, regularise(stats.C, stats.n_keys, hp.cov_reg), hp.rank, ex.weights)
    opt = dataclasses.replace(hp, solver="optimize", steps=OPTIMIZER_STEPS)
    per_step = seconds(lambda: solve_optimize(bundle.model, site, ex, D, opt))[0] / OPTIMIZER_STEPS
    return {"model": spec, "layer": layer, "key_dim": site.key_dim, "out_dim": site.weight_matrix().shape[0],
            "rank": d.rank, "renders": renders, "n_reference_images": n_ref, "key_statistics_seconds": t_stats,
            "closed_form_seconds": t_cf, "closed_form_peak_mib": peak.host_mib,
            "closed_form_peak_device_mib": peak.device_mib,
            "optimizer_seconds_per_step": per_step, "optimizer_paper_seconds": per_step * PAPER_STEPS,
            "ratio": per_step * PAPER_STEPS / t_cf}


def run(quick: bool = False) -> dict[str, Any]:
    specs = ["mini", "ViT-B-32:none"] if quick else ["mini", "RN50:none", "ViT-B-32:none", "ViT-L-14:none"]
    renders = 16 if quick else 32
    rows = [measure(spec, renders) for spec in specs]
    result = {"rows": rows, "paper_steps": PAPER_STEPS}
    print(f"edit cost vs key dimension ({renders} renders of 'ipod', default site and rank):")
    print(f"  {'model':<15} {'site':<38} {'d':>5} {'closed form s':>13} {'peak MiB':>9} {'opt s/step':>10}")
    for r in rows:
        print(f"  {r['model']:<15} {r['layer']:<38} {r['key_dim']:>5} {r['closed_form_seconds']:13.2f} "
              f"{r['closed_form_peak_mib']:9.0f} {r['optimizer_seconds_per_step']:10.3f}")
        print("  " + ratio_line(f"  {r['model']}: optimizer ({PAPER_STEPS} steps) / closed form", r["ratio"], 1000))
    save("edit_scaling", result, quick)
    return result


add_arguments = quick_arguments


def main(args) -> None:
    run(args.quick)


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
