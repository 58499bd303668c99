"""Train the bundled mini ViT CLIP by distillation: ``clipedit train-mini --arch vit``.

A small open_clip ViT image tower with a convolutional stem (:mod:`clipedit.models.mini_vit`)
learns to map images where the bundled ResNet mini maps them: a cosine loss on the image
embeddings plus a KL loss on the zero-shot class distributions over the mini world's prompts. The
text tower is the ResNet mini's, shared and frozen, so only the image tower is trained and shipped.
Trained contrastively (or distilled without the stem) the ViT did not learn to read on 2 CPU cores.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from clipedit.core.hparams import check_fields
from clipedit.errors import SettingsError
from clipedit.eval.heldout import split_seed
from clipedit.io import ensure_writable_dir, save_state_dict, write_json
from clipedit.mini.training.figures import HELDOUT_N, HELDOUT_SEED, heldout_figures
from clipedit.mini.training.pool import PoolMix, build_pool
from clipedit.mini.training.train import (
    IMAGE_MEAN,
    IMAGE_STD,
    TRAINING_BOUNDS,
    image_batch,
    make_preprocess,
    param_groups,
)
from clipedit.mini.world import CLASSNAMES, IMAGE_SIZE, TEMPLATES
from clipedit.models.mini import mini_asset_dir
from clipedit.models.mini_vit import IMAGE_PREFIX, WEIGHTS_FILE, build_mini_vit, file_sha256

log = logging.getLogger(__name__)

# The ViT minis' image towers by ``train-mini --arch``: the bundled model each builds, and its open_clip
# vision config. mini-vit: 4 blocks of 2 heads (head width 64); mini-vit-deep: 6 blocks of 4 heads (head
# width 32), deep and many-headed enough for head-level defenses (Dyslexify) to have heads to choose from.
ARCHES: dict[str, dict] = {
    "vit": {"name": "mini-vit",
            "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 4, "width": 128, "patch_size": 8, "head_width": 64}},
    "vit-deep": {"name": "mini-vit-deep",
                 "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 6, "width": 128, "patch_size": 8,
                                "head_width": 32}},
}
VISION_CFG = ARCHES["vit"]["vision_cfg"]
DEFAULT_OUT = Path("runs") / "mini-vit"  # never the shipped checkpoint: copy a new one into assets/ by hand
# Three stride-2 3x3 convs in place of the 8x8 patchify conv: the same 8x8 grid of 128-wide tokens.
STEM = {"channels": [32, 64, 128], "kernel_size": 3, "stride": 2}


@dataclass
class DistillOptions:
    """Options of one distillation run (all seeded by ``seed``)."""

    out: Path = DEFAULT_OUT
    arch: str = "vit"
    steps: int = 1500
    batch_size: int = 128
    seed: int = 0
    threads: int = 1
    pool_size: int = 10000
    lr: float = 1e-3
    weight_decay: float = 0.05
    kl_weight: float = 1.0
    temperature: float = 1.0
    eval_every: int = 300
    shift: int = 4
    precision: Literal["bf16", "fp32"] = "bf16"
    pool_mix: PoolMix = PoolMix()

    def __post_init__(self) -> None:
        check_fields(self, TRAINING_BOUNDS, SettingsError)
        if self.arch not in ARCHES:
            raise SettingsError(f"DistillOptions: arch must be one of {', '.join(ARCHES)}, got {self.arch!r}")


def student_config(teacher_cfg: dict, arch: str = "vit") -> dict:
    """The ViT CLIP's open_clip config: the teacher's embedding width and text tower, ``arch``'s image tower."""
    return {"embed_dim": teacher_cfg["embed_dim"], "vision_cfg": dict(ARCHES[arch]["vision_cfg"]),
            "text_cfg": dict(teacher_cfg["text_cfg"])}


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, class_weights: torch.Tensor, scale: float,
                 kl_weight: float, temperature: float) -> torch.Tensor:
    """``1 - cos(student, teacher)`` plus ``kl_weight`` x KL(teacher || student) over the zero-shot classes.

    Args:
        student, teacher: image embeddings (batch, embed_dim), unnormalised.
        class_weights: normalised class embeddings (embed_dim, n_classes).
        scale: the CLIP logit scale (exp of ``logit_scale``).
    """
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    cosine = (1 - (s * t).sum(-1)).mean()
    log_p_student = F.log_softmax(scale * s @ class_weights / temperature, dim=-1)
    log_p_teacher = F.log_softmax(scale * t @ class_weights / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return cosine + kl_weight * kl * temperature ** 2


def distill(opts: DistillOptions) -> dict:
    """Distil the ViT image tower from the bundled ResNet mini; write ``config.json`` + the tower's weights."""
    from clipedit.eval.zeroshot import zero_shot_weights
    from clipedit.models.registry import load_model

    start = time.time()
    out = ensure_writable_dir(opts.out)
    torch.set_num_threads(opts.threads)
    teacher_bundle = load_model("mini", device="cpu")
    teacher = teacher_bundle.model.eval().requires_grad_(False)
    cfg = student_config(teacher_bundle.extra["config"]["model_cfg"], opts.arch)
    torch.manual_seed(opts.seed)
    model = build_mini_vit(cfg, STEM)
    shared = {k: v for k, v in teacher.state_dict().items() if not k.startswith(IMAGE_PREFIX)}
    model.load_state_dict(shared, strict=False)
    model.requires_grad_(False)
    visual = model.visual.requires_grad_(True).train()
    class_weights = zero_shot_weights(teacher, teacher_bundle.tokenizer, list(CLASSNAMES), list(TEMPLATES))
    scale = teacher.logit_scale.exp().item()

    pool = build_pool(opts.pool_size, opts.seed, opts.pool_mix)
    log.info("pool ready in %.1f min", (time.time() - start) / 60)
    rng = np.random.default_rng(opts.seed + 1)
    groups = [g for g in param_groups(visual, opts.weight_decay) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=opts.steps)
    preprocess = make_preprocess()
    autocast = opts.precision == "bf16"
    running = None
    bar = tqdm(range(opts.steps), desc="distilling mini ViT", mininterval=10, file=sys.stderr)
    for step in bar:
        images = image_batch(pool, rng.integers(len(pool), size=opts.batch_size), rng, opts.shift)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                target = teacher.encode_image(images)
            features = visual(images)
        loss = distill_loss(features, target, class_weights, scale, opts.kl_weight, opts.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if (step + 1) % 50 == 0:
            log.info("step %d/%d loss %.4f (%.1f min)", step + 1, opts.steps, running, (time.time() - start) / 60)
        if opts.eval_every and (step + 1) % opts.eval_every == 0 and step + 1 < opts.steps:
            # An interim checkpoint with a quick check on the validation split, replaced by the final one.
            figures = heldout_figures(model, preprocess, teacher_bundle.tokenizer, n=240,
                                      seed=split_seed("validation"))
            log.info("step %d quick validation check: %s", step + 1, figures)
            save_tower(model, make_config(opts, cfg, figures, step + 1, (time.time() - start) / 60), out)
    minutes = (time.time() - start) / 60
    model.eval()
    figures = heldout_figures(model, preprocess, teacher_bundle.tokenizer, n=HELDOUT_N, seed=HELDOUT_SEED)
    log.info("held-out figures: %s", figures)
    config = make_config(opts, cfg, figures, opts.steps, minutes)
    save_tower(model, config, out)
    return config


def make_config(opts: DistillOptions, model_cfg: dict, figures: dict, steps_done: int, minutes: float) -> dict:
    """The config.json contents: model config and stem, the shared text tower, classes, training run, figures."""
    teacher = mini_asset_dir() / "model.safetensors"
    return {
        "model_cfg": model_cfg,
        "stem": STEM,
        "text_tower": {"asset": "mini", "file": teacher.name, "sha256": file_sha256(teacher)},
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "classnames": list(CLASSNAMES),
        "templates": list(TEMPLATES),
        "training": {
            "method": "distillation from the bundled ResNet mini (cosine + KL over the class prompts)",
            "seed": opts.seed,
            "steps": steps_done,
            "batch_size": opts.batch_size,
            "pool_size": opts.pool_size,
            "lr": opts.lr,
            "weight_decay": opts.weight_decay,
            "kl_weight": opts.kl_weight,
            "temperature": opts.temperature,
            "precision": opts.precision,
            "pool_mix": asdict(opts.pool_mix),
            "command": command_line(opts),
            "minutes": round(minutes, 1),
            "threads": opts.threads,
        },
        "heldout": figures,
    }


def save_tower(model, config: dict, out: Path) -> None:
    """Write the image tower as fp16 ``visual.safetensors`` and ``config.json`` into ``out``, each atomically."""
    state = {k: v.to(torch.float16) if v.is_floating_point() else v  # BatchNorm's step counter stays an integer
             for k, v in model.state_dict().items() if k.startswith(IMAGE_PREFIX)}
    save_state_dict(out / WEIGHTS_FILE, state, metadata={"format": "pt"})
    write_json(out / "config.json", config)
    log.info("wrote %s", out)


def command_line(opts: DistillOptions) -> str:
    """The command that reproduces this run."""
    return (f"clipedit train-mini --arch {opts.arch} --out {opts.out} --steps {opts.steps} "
            f"--batch-size {opts.batch_size} --seed {opts.seed} --threads {opts.threads} "
            f"--pool-size {opts.pool_size} --precision {opts.precision}")
