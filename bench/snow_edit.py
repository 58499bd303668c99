"""Acceptance experiment: make EfficientNet-Lite0 treat snowy roads like roads from ONE exemplar.

The main exemplar is a real photo from the dev set with a cleared road (a fire truck on a bridge
deck); the paper's snow texture is pasted on the road and the rewrite maps the snowy road's features
to the clear road's (``to-original``). We report ImageNet-1k top-1 on the real snow photos (duplicates
and the exemplar left out) before and after the edit for a few layers and ranks, after the local and
global fine-tuning baselines on the same pair, and the change on a labelled clean set (scikit-image
photos with ImageNet labels, 48 views each, never used for the key statistics).

Layers and ranks are compared on the same photos they are scored on, so the best row is optimistic.
The exemplar sweep shows how much the outcome depends on which single exemplar is used: each of
five exemplars (the main one and four dev photos the unedited model calls "snowplow" once snow is
pasted on their lower part) is scored on the other photos.

    .venv/bin/python -m bench snow_edit            # ~11 min on 2 CPU cores
    .venv/bin/python -m bench snow_edit --quick    # one layer, one exemplar, short fine-tuning

Writes runs/bench/snow_edit.json (bench/results/ with --update-results) and prints the tables. The data
(``--data``, default ``shared/data/snow`` beside the checkout) is the paper's snow texture and dev photos
(MadryLab/EditingClassifiers); ``snow_texture.jpg`` and ``dev/{armytank,firetruck}/*.jpg``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from bench.measure import add_update_option, update_results  # noqa: E402
from clipedit.core import RewriteHParams, revert_edit  # noqa: E402
from clipedit.data.images import load_image  # noqa: E402
from clipedit.data.reference import photo_views, sample_photos  # noqa: E402
from clipedit.defenses.concept import (
    ConceptConfig,
    band_mask,
    concept_edit,
    concept_request,
    polygon_mask,
    texture_pair,
)
from clipedit.eval.results import format_table  # noqa: E402
from clipedit.io import save_image, write_json  # noqa: E402
from clipedit.methods.finetune import FinetuneHParams  # noqa: E402
from clipedit.models import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "snow"  # the default --data: shared/data/snow beside the checkout
CLASSES = {"armytank": 847, "firetruck": 555}  # ImageNet "tank" and "fire engine"
ROAD = [(0.02, 1.0), (0.02, 0.80), (0.19, 0.56), (0.33, 0.56), (0.66, 1.0)]  # the cleared road deck
# name -> (dev photo, mask): ("polygon", points) or ("band", top fraction).
EXEMPLARS = {
    "bridge-deck": ("firetruck/5432191690_89799b048e_c.jpg", ("polygon", ROAD)),
    "street-4342": ("firetruck/4342450360_8c59eefbbe_c.jpg", ("band", 0.6)),
    "street-4052": ("firetruck/405261017_993052e18e_c.jpg", ("band", 0.6)),
    "street-5393": ("firetruck/5393143744_18f63fd13a_c.jpg", ("band", 0.6)),
    "street-8649": ("firetruck/86492730_2844166bae_c.jpg", ("band", 0.6)),
}
MAIN = "bridge-deck"
# scikit-image photos with ImageNet labels (the clean set) and the rest (key statistics).
LABELED = {"coffee": {967, 968, 504}, "chelsea": {281, 282, 283, 284, 285}, "camera": {872, 759},
           "rocket": {657, 744, 812}, "stereo_motorcycle": {665, 670}, "clock": {409, 892}}
REFERENCE_PHOTOS = ("astronaut", "horse", "brick", "grass", "gravel", "coins", "moon", "page",
                    "immunohistochemistry", "retina", "hubble_deep_field", "cell", "text", "colorwheel")
REFERENCE_VIEWS = 40
TEXTURE_SCALE = 0.5  # snow grains at about the size they have in the dev photos
MASK_THRESHOLD = 0.5  # edit feature-map locations at least half on the road
COV_REG = 1e-2
# (layer, rank): stage-ends before a skip connection (blocks.4.2 = the default site, blocks.5.3) and the last stage.
GRID = [("blocks.6.0.conv_pwl", 1), ("blocks.6.0.conv_pwl", 4), ("blocks.5.3.conv_pwl", 1),
        ("blocks.5.3.conv_pwl", 4), ("blocks.4.2.conv_pwl", 1), ("blocks.4.2.conv_pwl", 4)]
# The paper's solver (Adam on the block output, projected onto the rank-1 subspace) at the two last sites.
OPTIMIZE = [("blocks.6.0.conv_pwl", 1), ("blocks.5.3.conv_pwl", 1)]
OPTIMIZE_STEPS, OPTIMIZE_LR = 4000, 1e-3
SWEEP_LAYERS = ("blocks.6.0.conv_pwl", "blocks.4.2.conv_pwl")
FINETUNE = [("finetune-local", 1e-3), ("finetune-local", 1e-4), ("finetune-global", 1e-4), ("finetune-global", 1e-5)]

log = logging.getLogger("snow_edit")


def snow_photos(data: Path) -> tuple[list[Image.Image], list[int], list[str]]:
    """The dev snow photos under ``data`` (byte-identical duplicates removed), their labels and names."""
    seen: set[str] = set()
    images, labels, names = [], [], []
    for folder, label in CLASSES.items():
        for path in sorted((data / "dev" / folder).glob("*.jpg")):
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest in seen:
                log.info("leaving out %s (duplicate)", path.name)
                continue
            seen.add(digest)
            images.append(load_image(path))
            labels.append(label)
            names.append(f"{folder}/{path.name}")
    return images, labels, names


def fixed_views(image: Image.Image) -> list[Image.Image]:
    """12 views: the photo, four corner crops and the centre crop (70%), each also mirrored."""
    w, h = image.size
    cw, ch = int(0.7 * w), int(0.7 * h)
    boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
             ((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2)]
    base = [image] + [image.crop(b) for b in boxes]
    return base + [ImageOps.mirror(v) for v in base]


def exemplar_pair(name: str, texture: Image.Image, data: Path):
    path, (kind, spec) = EXEMPLARS[name]
    photo = load_image(data / "dev" / path)
    mask = polygon_mask(photo.size, spec) if kind == "polygon" else band_mask(photo.size, spec)
    return texture_pair(photo, mask, texture, TEXTURE_SCALE)


@torch.no_grad()
def predict(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in batch.split(32)]).argmax(dim=1)


class Scorer:
    """Snow top-1 (without the exemplar), labelled clean top-1 and agreement with the unedited model."""

    def __init__(self, model, snow_x, snow_y, names, clean_x, clean_ok):
        self.model, self.snow_x, self.snow_y, self.names = model, snow_x, snow_y, names
        self.clean_x, self.clean_ok = clean_x, clean_ok  # clean_ok: (n, 1000) bool, the accepted labels
        self.snow_before = predict(model, snow_x)
        self.clean_before = predict(model, clean_x)

    def __call__(self, exemplar_path: str) -> dict:
        keep = torch.tensor([n != exemplar_path for n in self.names])
        snow, clean = predict(self.model, self.snow_x), predict(self.model, self.clean_x)
        hits, hits0 = (snow == self.snow_y) & keep, (self.snow_before == self.snow_y) & keep
        return {"snow_top1": hits.sum().item() / keep.sum().item(),
                "snow_top1_before": hits0.sum().item() / keep.sum().item(), "n_snow": int(keep.sum()),
                "snow_top1_by_class": {c: (hits[self.snow_y == i].sum() / keep[self.snow_y == i].sum()).item()
                                       for c, i in CLASSES.items()},
                "fixed": int((hits & ~hits0).sum()), "broken": int((hits0 & ~hits).sum()),
                "clean_top1": self._clean_top1(clean), "clean_top1_before": self._clean_top1(self.clean_before),
                "clean_agreement": (clean == self.clean_before).float().mean().item(),
                "snowplow_predictions": int(((snow == 803) & keep).sum())}

    def _clean_top1(self, pred: torch.Tensor) -> float:
        return self.clean_ok[torch.arange(len(pred)), pred].float().mean().item()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="one layer and exemplar, short fine-tuning")
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    ap.add_argument("--data", type=Path, default=DATA,
                    help="the snow data: snow_texture.jpg and dev/{armytank,firetruck}/*.jpg "
                         "(default: shared/data/snow beside the checkout)")
    add_update_option(ap)


def main(args: argparse.Namespace) -> None:
    out = update_results(args.update_results)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    data = args.data
    if not (data / "snow_texture.jpg").is_file() or not (data / "dev").is_dir():
        sys.exit(f"snow data not found at {data} (it needs snow_texture.jpg and dev/{{armytank,firetruck}}/): "
                 "pass --data DIR")

    t0 = time.time()
    bundle = load_model("efficientnet-lite0", device="cpu")
    model, pre = bundle.model, bundle.preprocess
    original_state = copy.deepcopy(model.state_dict())
    texture = load_image(data / "snow_texture.jpg")

    images, labels, names = snow_photos(data)
    labeled = dict(zip(LABELED, sample_photos(tuple(LABELED))))
    clean = [(n, v) for n, im in labeled.items() for v in fixed_views(im) + photo_views([im], 36, seed=1)]
    clean_ok = torch.zeros(len(clean), 1000, dtype=torch.bool)
    for i, (n, _) in enumerate(clean):
        clean_ok[i, list(LABELED[n])] = True
    score = Scorer(model, torch.stack([pre(im) for im in images]), torch.tensor(labels), names,
                   torch.stack([pre(v) for _, v in clean]), clean_ok)
    reference = photo_views(sample_photos(REFERENCE_PHOTOS), REFERENCE_VIEWS, seed=0)

    main_pair = exemplar_pair(MAIN, texture, data)
    save_image(out / "snow_edit_exemplar.jpg", main_pair.transformed.resize((400, 266)))
    main_request = concept_request(pre, [main_pair], direction="to-original")
    main_path = EXEMPLARS[MAIN][0]

    def edit(request, exemplar_path: str, layer: str, rank: int, solver: str = "closed-form") -> dict:
        """Score the rank-``rank`` edit of ``layer``, then undo it."""
        config = ConceptConfig(hparams=RewriteHParams(layer=layer, rank=rank, cov_reg=COV_REG, solver=solver,
                                                      mask_threshold=MASK_THRESHOLD, steps=OPTIMIZE_STEPS,
                                                      lr=OPTIMIZE_LR))
        result = concept_edit(bundle, request, config, reference=reference)
        exemplar_after = int(predict(model, request.attacked)[0])
        try:
            return {**score(exemplar_path), "exemplar_after": bundle.classnames[exemplar_after]}
        finally:
            revert_edit(model, result.edit)

    runs, grid_rows, sweep_rows = [], [], []
    before = score(main_path)
    runs.append({"method": "none", "exemplar": MAIN, **before})
    grid_rows.append(_row("unedited", "-", "-", before))

    for layer, rank in (GRID[:1] if args.quick else GRID):
        after = edit(main_request, main_path, layer, rank)
        runs.append({"method": "edit", "solver": "closed-form", "exemplar": MAIN, "layer": layer, "rank": rank,
                     **after})
        grid_rows.append(_row("edit", layer, rank, after))
        log.info("edit %s rank %d: %s", layer, rank, after)
    for layer, rank in ([] if args.quick else OPTIMIZE):
        after = edit(main_request, main_path, layer, rank, solver="optimize")
        runs.append({"method": "edit", "solver": "optimize", "steps": OPTIMIZE_STEPS, "lr": OPTIMIZE_LR,
                     "exemplar": MAIN, "layer": layer, "rank": rank, **after})
        grid_rows.append(_row(f"edit (optimize, {OPTIMIZE_STEPS} steps)", layer, rank, after))
        log.info("edit (optimize) %s rank %d: %s", layer, rank, after)

    for name in ([MAIN] if args.quick else EXEMPLARS):
        pair = exemplar_pair(name, texture, data)
        request = concept_request(pre, [pair], direction="to-original")
        with torch.no_grad():
            seen = predict(model, torch.cat([request.target, request.attacked]))
        for layer in (SWEEP_LAYERS[:1] if args.quick else SWEEP_LAYERS):
            after = edit(request, EXEMPLARS[name][0], layer, 1)
            after["exemplar_before"] = {"clear": bundle.classnames[int(seen[0])],
                                        "snowy": bundle.classnames[int(seen[1])]}
            runs.append({"method": "edit", "exemplar": name, "sweep": True, "layer": layer, "rank": 1, **after})
            sweep_rows.append([name, layer, after["exemplar_before"]["snowy"], after["exemplar_after"],
                               after["snow_top1_before"], after["snow_top1"], after["fixed"], after["broken"],
                               after["clean_top1_before"], after["clean_top1"]])
            log.info("sweep %s %s: %s", name, layer, after)

    steps = 30 if args.quick else args.steps
    ft_layer = GRID[0][0]
    for method, lr in (FINETUNE[::2] if args.quick else FINETUNE):
        config = ConceptConfig(method=method, finetune=FinetuneHParams(steps=steps, lr=lr, loss="kl"))
        concept_edit(bundle, main_request, config, layer=ft_layer)
        after = score(main_path)
        model.load_state_dict(original_state)
        layer = ft_layer if method == "finetune-local" else "all"
        runs.append({"method": method, "exemplar": MAIN, "layer": layer, "lr": lr, "steps": steps, **after})
        grid_rows.append(_row(f"{method} lr={lr:g}", layer, "-", after))
        log.info("%s lr %g: %s", method, lr, after)

    sweep = [r for r in runs if r.get("sweep")]
    record = {
        "experiment": "snow_edit", "model": bundle.name, "pretrained": bundle.pretrained,
        "main_exemplar": MAIN, "exemplars": {k: {"photo": p, "mask": list(m)} for k, (p, m) in EXEMPLARS.items()},
        "direction": "to-original", "texture": "snow/snow_texture.jpg", "texture_scale": TEXTURE_SCALE,
        "mask_threshold": MASK_THRESHOLD, "cov_reg": COV_REG,
        "snow_photos": names, "n_snow_photos": len(names),
        "clean_set": {"photos": {k: sorted(v) for k, v in LABELED.items()}, "views_per_photo": 48, "n": len(clean),
                      "metric": "top-1 against the accepted ImageNet labels; agreement = same top-1 as unedited"},
        "reference": {"photos": list(REFERENCE_PHOTOS), "views_per_photo": REFERENCE_VIEWS},
        "sweep_mean_snow_change": (float(np.mean([r["snow_top1"] - r["snow_top1_before"] for r in sweep]))
                                   if sweep else None),
        "runs": runs, "seconds": round(time.time() - t0, 1),
    }
    write_json(out / "snow_edit.json", record)
    print(format_table(grid_rows, header=["method", "layer", "rank", "snow top-1", "tank", "fire engine",
                                          "clean top-1", "clean agree", "snowplow"]))
    print()
    print(format_table(sweep_rows, header=["exemplar", "layer (rank 1)", "snowy exemplar", "after edit",
                                           "snow before", "snow after", "fixed", "broken",
                                           "clean before", "clean after"]))
    print(f"wrote {out / 'snow_edit.json'} ({record['seconds']} s)")


def _row(method, layer, rank, m) -> list:
    return [method, layer, rank, m["snow_top1"], m["snow_top1_by_class"]["armytank"],
            m["snow_top1_by_class"]["firetruck"], m["clean_top1"], m["clean_agreement"], m["snowplow_predictions"]]


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
