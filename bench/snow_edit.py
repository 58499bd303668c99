"""Acceptance experiment: make EfficientNet-Lite0 treat snowy roads like roads from ONE exemplar.

The exemplar is a real photo from the dev set with a clear road (a fire truck on a cleared bridge
deck); the paper's snow texture is pasted on the road (a fixed polygon) and the rewrite maps the
snowy road's features to the clear road's (``to-original``). We report ImageNet-1k top-1 on the real
snow photos (duplicates and the exemplar left out) before and after the edit, for a few layers and
ranks, and for the local/global fine-tuning baselines on the same pair, plus the change on a clean
set (scikit-image photos, 12 views each, never used for the key statistics).

    .venv/bin/python bench/snow_edit.py            # ~5-10 min on 2 shared CPU cores
    .venv/bin/python bench/snow_edit.py --quick    # one layer, one rank, short fine-tuning (~3 min)

Writes bench/results/snow_edit.json and prints a table.
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

import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from clipedit.concept import (ConceptConfig, concept_edit, concept_request, polygon_mask,  # noqa: E402
                              texture_pair)
from clipedit.datasets import load_image  # noqa: E402
from clipedit.io import save_image, write_json  # noqa: E402
from clipedit.models import load_model  # noqa: E402
from clipedit.results import format_table  # noqa: E402
from clipedit.rewrite import RewriteHParams, revert_edit  # noqa: E402
from clipedit.rewrite.finetune import FinetuneHParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "snow"
OUT = ROOT / "bench" / "results"
EXEMPLAR = DATA / "dev" / "firetruck" / "5432191690_89799b048e_c.jpg"
ROAD = [(0.02, 1.0), (0.02, 0.80), (0.19, 0.56), (0.33, 0.56), (0.66, 1.0)]  # the cleared road deck
CLASSES = {"armytank": 847, "firetruck": 555}  # ImageNet "tank" and "fire engine"
# scikit-image photos: statistics from the first list, the clean evaluation from the second.
REFERENCE_PHOTOS = ("astronaut", "rocket", "stereo_motorcycle", "camera", "brick", "grass", "coins", "page",
                    "immunohistochemistry", "hubble_deep_field", "cell", "text")
CLEAN_PHOTOS = ("coffee", "chelsea", "horse", "gravel", "moon", "retina", "colorwheel", "clock")
LABELED = {"coffee": {967, 968, 504}, "chelsea": {281, 282, 283, 284, 285}}  # espresso/cup/mug; cats
TEXTURE_SCALE = 0.5  # snow grains at about the size they have in the dev photos
MASK_THRESHOLD = 0.5  # edit feature-map locations at least half on the road
COV_REG = 1e-2
# (layer, rank): stage-ends before a skip connection (blocks.4.2, blocks.5.3) and the last stage.
GRID = [("blocks.6.0.conv_pwl", 1), ("blocks.6.0.conv_pwl", 4), ("blocks.5.3.conv_pwl", 1),
        ("blocks.5.3.conv_pwl", 4), ("blocks.4.2.conv_pwl", 1), ("blocks.4.2.conv_pwl", 4)]
FINETUNE = [("finetune-local", 1e-3), ("finetune-local", 1e-4), ("finetune-global", 1e-4), ("finetune-global", 1e-5)]

log = logging.getLogger("snow_edit")


def snow_photos() -> tuple[list[Image.Image], list[int], list[str]]:
    """The dev snow photos (byte-identical duplicates and the exemplar removed), labels, file names."""
    seen = {hashlib.md5(EXEMPLAR.read_bytes()).hexdigest()}
    images, labels, names = [], [], []
    for folder, label in CLASSES.items():
        for path in sorted((DATA / "dev" / folder).glob("*.jpg")):
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if digest in seen:
                log.info("leaving out %s (duplicate or exemplar)", path.name)
                continue
            seen.add(digest)
            images.append(load_image(path))
            labels.append(label)
            names.append(f"{folder}/{path.name}")
    return images, labels, names


def views(image: Image.Image) -> list[Image.Image]:
    """12 views: the photo, four corner crops and the centre crop (70%), each also mirrored."""
    w, h = image.size
    cw, ch = int(0.7 * w), int(0.7 * h)
    boxes = [(0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
             ((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2)]
    base = [image] + [image.crop(b) for b in boxes]
    return base + [ImageOps.mirror(v) for v in base]


@torch.no_grad()
def predict(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk) for chunk in batch.split(32)]).argmax(dim=1)


def measure(model, snow_x, snow_y, clean_x, clean_ref, clean_labeled) -> dict:
    """Snow top-1 (per class too), clean-set agreement with the unedited model, labelled clean top-1."""
    snow_pred = predict(model, snow_x)
    clean_pred = predict(model, clean_x)
    hits = snow_pred == snow_y
    out = {"snow_top1": hits.float().mean().item(),
           "snow_top1_by_class": {name: hits[snow_y == idx].float().mean().item() for name, idx in CLASSES.items()},
           "clean_agreement": (clean_pred == clean_ref).float().mean().item(),
           "clean_labeled_top1": sum(int(clean_pred[i]) in ok for i, ok in clean_labeled) / len(clean_labeled),
           "snowplow_predictions": int((snow_pred == 803).sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one layer and rank, short fine-tuning")
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    if not DATA.is_dir():
        sys.exit(f"snow data not found at {DATA}")

    t0 = time.time()
    bundle = load_model("efficientnet-lite0", device="cpu")
    model, pre = bundle.model, bundle.preprocess
    original_state = copy.deepcopy(model.state_dict())

    exemplar = load_image(EXEMPLAR)
    pair = texture_pair(exemplar, polygon_mask(exemplar.size, ROAD), load_image(DATA / "snow_texture.jpg"),
                        TEXTURE_SCALE)
    request = concept_request(pre, [pair], direction="to-original")
    save_image(OUT / "snow_edit_exemplar.jpg", pair.transformed.resize((400, 266)))

    images, labels, names = snow_photos()
    snow_x = torch.stack([pre(im) for im in images])
    snow_y = torch.tensor(labels)
    photos = _photos()
    reference = [v for n in REFERENCE_PHOTOS for v in views(photos[n])] + [exemplar]
    clean_views = [(n, v) for n in CLEAN_PHOTOS for v in views(photos[n])]
    clean_x = torch.stack([pre(v) for _, v in clean_views])
    clean_ref = predict(model, clean_x)
    clean_labeled = [(i, LABELED[n]) for i, (n, _) in enumerate(clean_views) if n in LABELED]
    exemplar_pred = {k: int(predict(model, request_x[None])[0])
                     for k, request_x in (("snowy", request.attacked[0]), ("clear", request.target[0]))}

    rows, runs = [], []
    before = measure(model, snow_x, snow_y, clean_x, clean_ref, clean_labeled)
    runs.append({"method": "none", **before})
    rows.append(_row("unedited", "-", "-", before))

    grid = GRID[:1] if args.quick else GRID
    for layer, rank in grid:
        result = concept_edit(bundle, request, ConceptConfig(hparams=RewriteHParams(
            layer=layer, rank=rank, cov_reg=COV_REG, mask_threshold=MASK_THRESHOLD)),
                              reference=reference)
        after = measure(model, snow_x, snow_y, clean_x, clean_ref, clean_labeled)
        revert_edit(model, result.edit)
        runs.append({"method": "edit", "layer": layer, "rank": rank, **after})
        rows.append(_row("edit", layer, rank, after))
        log.info("edit %s rank %d: %s", layer, rank, after)

    steps = 30 if args.quick else args.steps
    finetunes = FINETUNE[::2] if args.quick else FINETUNE
    ft_layer = grid[0][0]
    for method, lr in finetunes:
        config = ConceptConfig(method=method, finetune=FinetuneHParams(steps=steps, lr=lr, loss="kl"))
        concept_edit(bundle, request, config, layer=ft_layer)
        after = measure(model, snow_x, snow_y, clean_x, clean_ref, clean_labeled)
        model.load_state_dict(original_state)
        runs.append({"method": method, "layer": ft_layer if method == "finetune-local" else "all",
                     "lr": lr, "steps": steps, **after})
        rows.append(_row(f"{method} lr={lr:g}", ft_layer if method == "finetune-local" else "all", "-", after))
        log.info("%s lr %g: %s", method, lr, after)

    record = {
        "experiment": "snow_edit", "model": bundle.name, "pretrained": bundle.pretrained,
        "exemplar": str(EXEMPLAR.relative_to(DATA.parent)), "road_polygon": ROAD, "direction": "to-original",
        "texture_scale": TEXTURE_SCALE, "mask_threshold": MASK_THRESHOLD, "cov_reg": COV_REG,
        "texture": "snow/snow_texture.jpg", "exemplar_predictions": {k: bundle.classnames[v] for k, v in exemplar_pred.items()},
        "snow_photos": names, "n_snow": len(names),
        "clean_set": {"photos": list(CLEAN_PHOTOS), "views_per_photo": 12, "n": len(clean_views),
                      "labels": "the unedited model's top-1 (agreement); coffee/chelsea views also by true label",
                      "n_labeled": len(clean_labeled)},
        "reference_photos": list(REFERENCE_PHOTOS) + ["exemplar"],
        "runs": runs, "seconds": round(time.time() - t0, 1),
    }
    write_json(OUT / "snow_edit.json", record)
    print(format_table(rows, header=["method", "layer", "rank", "snow top-1", "tank", "fire engine",
                                     "clean agree", "clean labeled", "snowplow"]))
    print(f"wrote {OUT / 'snow_edit.json'} ({record['seconds']} s)")


def _photos() -> dict[str, Image.Image]:
    from skimage import data

    out = {}
    for name in REFERENCE_PHOTOS + CLEAN_PHOTOS:
        arr = getattr(data, name)()
        arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
        if arr.dtype == bool:
            arr = arr.astype("uint8") * 255
        out[name] = Image.fromarray(arr).convert("RGB")
    return out


def _row(method, layer, rank, m) -> list:
    return [method, layer, rank, m["snow_top1"], m["snow_top1_by_class"]["armytank"],
            m["snow_top1_by_class"]["firetruck"], m["clean_agreement"], m["clean_labeled_top1"],
            m["snowplow_predictions"]]


if __name__ == "__main__":
    main()
