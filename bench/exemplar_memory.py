"""Peak memory of collecting N and 4N exemplars for the closed-form edit: batched accumulation of
KᵀMK and KᵀMR (exemplars rendered batch by batch) against all exemplars at once (the former path).

    python -m bench.exemplar_memory [--quick]

Writes bench/results/exemplar_memory.json.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from bench.measure import device, main_for, peak_memory, ratio_line, save, seconds
from clipedit import load_model
from clipedit.core import EditRequest, resolve_site
from clipedit.core.exemplar_sums import EXEMPLAR_BATCH, accumulate_exemplar_sums
from clipedit.core.keys_values import collect_exemplars
from clipedit.data.worlds import PhotoWorld
from clipedit.defenses.defaults import default_layer
from clipedit.defenses.edit_requests import request_from_attacks
from clipedit.models.bundle import ModelBundle

MEMORY_FLAT = 1.25  # batched peak(4N) / peak(N) at most this


def exemplar_requests(bundle: ModelBundle, n: int) -> Iterator[EditRequest]:
    """``n`` renders of "ipod", rendered and preprocessed ``EXEMPLAR_BATCH`` at a time."""
    world = bundle.world or PhotoWorld()
    rng = np.random.default_rng(0)
    for start in range(0, n, EXEMPLAR_BATCH):
        attacks = world.exemplars("ipod", min(EXEMPLAR_BATCH, n - start), rng)
        yield request_from_attacks(bundle.preprocess, attacks, use_text_mask=True)


def batched(bundle: ModelBundle, layer: str, n: int):
    site = resolve_site(bundle.model, layer)
    return accumulate_exemplar_sums(bundle.model, site, exemplar_requests(bundle, n), bundle.encode_images)


def all_at_once(bundle: ModelBundle, layer: str, n: int):
    parts = list(exemplar_requests(bundle, n))
    req = EditRequest(*(torch.cat([getattr(p, f) for p in parts]) for f in ("attacked", "target", "mask")))
    return collect_exemplars(bundle.model, resolve_site(bundle.model, layer), req.attacked, req.target, req.mask,
                             bundle.encode_images)


def measure(spec: str, n: int) -> dict[str, Any]:
    torch.manual_seed(0)
    bundle = load_model(spec, device=device())
    layer = default_layer(bundle)
    batched(bundle, layer, EXEMPLAR_BATCH)  # warm-up
    out: dict[str, Any] = {"model": spec, "layer": layer, "N": n}
    for name, collect in (("batched", batched), ("all_at_once", all_at_once)):
        for label, count in (("N", n), ("4N", 4 * n)):
            peak, _ = peak_memory(lambda c=collect, k=count: c(bundle, layer, k))
            out[f"{name}_peak_mib_{label}"] = peak.host_mib
            out[f"{name}_peak_device_mib_{label}"] = peak.device_mib
        out[f"{name}_seconds_4N"] = seconds(lambda c=collect: c(bundle, layer, 4 * n))[0]
        out[f"{name}_ratio_4n_over_n"] = out[f"{name}_peak_mib_4N"] / max(out[f"{name}_peak_mib_N"], 1.0)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    # N of at least two batches: one batch is the all-at-once case, and the allocator's steady state starts later
    rows = [measure("ViT-B-32:none", 2 * EXEMPLAR_BATCH if quick else 4 * EXEMPLAR_BATCH)]
    if not quick:
        rows.append(measure("mini", 128))
    result = {"rows": rows, "target_peak_ratio": MEMORY_FLAT, "exemplar_batch": EXEMPLAR_BATCH,
              "met": all(r["batched_ratio_4n_over_n"] <= MEMORY_FLAT for r in rows)}
    print(f"exemplar collection, peak memory added (MiB), batches of {EXEMPLAR_BATCH}:")
    for r in rows:
        print(f"  {r['model']} {r['layer']}: batched +{r['batched_peak_mib_N']:.0f} at N={r['N']}, "
              f"+{r['batched_peak_mib_4N']:.0f} at 4N; all at once +{r['all_at_once_peak_mib_N']:.0f} at N, "
              f"+{r['all_at_once_peak_mib_4N']:.0f} at 4N; seconds at 4N: batched {r['batched_seconds_4N']:.1f}, "
              f"all at once {r['all_at_once_seconds_4N']:.1f}")
        print("  " + ratio_line("  batched peak, 4N / N", r["batched_ratio_4n_over_n"], MEMORY_FLAT,
                                higher_is_better=False))
        print("  " + ratio_line("  all-at-once peak, 4N / N", r["all_at_once_ratio_4n_over_n"]))
    save("exemplar_memory", result, quick)
    return result


if __name__ == "__main__":
    main_for(run, __doc__)
