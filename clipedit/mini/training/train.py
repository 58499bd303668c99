"""Train the bundled mini CLIP on the generated world: ``python -m clipedit.mini.training.train``.

The model is open_clip's own ``CLIP`` (a small ModifiedResNet image tower, as in CLIP RN50) with a
small config. Its image tower is warm-started with object and word labels (:mod:`.warmstart`), then
the whole model is trained contrastively (open_clip's ``ClipLoss``) on CPU. The result, fp16
safetensors plus a config.json holding the held-out figures, goes to ``--out``.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from clipedit.core.hparams import COUNT, COUNT0, NONNEGATIVE, POSITIVE, SEED, Bound, check_fields
from clipedit.errors import SettingsError
from clipedit.io import atomic_output_set, atomic_path, ensure_writable_dir, write_json
from clipedit.mini.training.captions import CaptionMix
from clipedit.mini.training.figures import HELDOUT_N, HELDOUT_SEED, heldout_figures
from clipedit.mini.training.pool import Pool, PoolMix, build_pool
from clipedit.mini.training.warmstart import cosine_lr, warm_start
from clipedit.mini.world import CLASSNAMES, IMAGE_SIZE, TEMPLATES

log = logging.getLogger(__name__)

IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's statistics
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 32
DEFAULT_OUT = Path("runs") / "mini"  # never the shipped checkpoint: copy a new one into assets/ by hand
CHECKPOINT_FILES = ("model.safetensors", "config.json")

# A ResNet image tower: on 2 CPU cores a 4-layer ViT (width 128, patch 8) had not learned to read after
# 1500 steps, nor after 300 supervised steps with word labels; this ResNet reads after 300 such steps.
MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 32, "head_width": 32},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


#: Most pre-rendered training images (each about 12 KB held in memory; the default is 30000).
MAX_POOL = 200_000
#: The ranges of the training runs' options (their types: the annotations), for the mini and the ViTs alike.
TRAINING_BOUNDS: dict[str, Bound] = {
    "steps": COUNT, "batch_size": Bound(2, 65_536), "seed": SEED, "threads": Bound(1, os.cpu_count() or 1),
    "pool_size": Bound(1, MAX_POOL), "lr": POSITIVE, "weight_decay": NONNEGATIVE, "warmup": COUNT0,
    "warmstart_steps": COUNT0, "eval_every": COUNT, "shift": Bound(0, 32), "kl_weight": NONNEGATIVE,
    "temperature": POSITIVE}


@dataclass
class TrainOptions:
    """Options of one training run (all seeded by ``seed``); checked on construction (CLI and Python)."""

    out: Path = DEFAULT_OUT
    steps: int = 1500
    batch_size: int = 128
    seed: int = 0
    threads: int = 2
    pool_size: int = 30000
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    warmstart_steps: int = 600
    eval_every: int = 300
    shift: int = 4
    precision: Literal["bf16", "fp32"] = "bf16"
    caption_mix: CaptionMix = CaptionMix()
    pool_mix: PoolMix = PoolMix()

    def __post_init__(self) -> None:
        check_fields(self, TRAINING_BOUNDS, SettingsError)


def build_model(seed: int):
    """A freshly initialised mini CLIP (open_clip's ``CLIP`` class)."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(**MODEL_CFG)


def make_preprocess():
    """The evaluation transform that ``clipedit.models`` uses for the mini model."""
    import open_clip

    return open_clip.image_transform(IMAGE_SIZE, is_train=False, mean=IMAGE_MEAN, std=IMAGE_STD)


class CaptionTokens:
    """Tokenizer with a cache: the caption vocabulary of the world is small."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            for c, row in zip(new, self.tokenizer(new)):
                self.cache[c] = row
        return torch.stack([self.cache[c] for c in captions])


def image_batch(pool: Pool, index: np.ndarray, rng: np.random.Generator, shift: int) -> torch.Tensor:
    """Normalised images of ``index`` with a random shift (reflect-padded) and colour jitter."""
    imgs = torch.from_numpy(pool.images[index]).permute(0, 3, 1, 2).float().div_(255)
    n, _, h, w = imgs.shape
    if shift:
        padded = torch.nn.functional.pad(imgs, (shift,) * 4, mode="reflect")
        dx, dy = rng.integers(0, 2 * shift + 1, size=(2, n))
        imgs = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    mean = imgs.mean(dim=(1, 2, 3), keepdim=True)
    contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
    imgs = ((imgs - mean) * contrast + mean * gain).clamp_(0, 1)
    m = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (imgs - m) / s


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices only, as open_clip does (no decay on gains, biases, embeddings, logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name \
            or "embedding" in name or name.endswith(("class_embedding", "positional_embedding"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(opts: TrainOptions) -> dict:
    """Train, evaluate on the held-out set and write ``config.json`` + ``model.safetensors``."""
    from open_clip.loss import ClipLoss
    from open_clip.tokenizer import SimpleTokenizer

    start = time.time()
    out = ensure_writable_dir(opts.out)
    torch.set_num_threads(opts.threads)
    pool = build_pool(opts.pool_size, opts.seed, opts.pool_mix)
    log.info("pool ready in %.1f min", (time.time() - start) / 60)

    model = build_model(opts.seed)
    model.train()
    rng = np.random.default_rng(opts.seed + 1)
    if opts.warmstart_steps:
        warm_start(model.visual, MODEL_CFG["embed_dim"], pool, opts.warmstart_steps,
                   lambda p, i, r: image_batch(p, i, r, opts.shift), rng, opts.lr, opts.batch_size,
                   autocast=opts.precision == "bf16")
        log.info("image tower warm-started in %.1f min", (time.time() - start) / 60)
    tokens = CaptionTokens(SimpleTokenizer(context_length=CONTEXT_LENGTH))
    preprocess = make_preprocess()
    optimizer = torch.optim.AdamW(param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    running = None
    bar = tqdm(range(opts.steps), desc="training mini CLIP", mininterval=10, file=sys.stderr)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, opts.steps, opts.warmup, opts.lr)
        index = rng.integers(len(pool), size=opts.batch_size)
        images = image_batch(pool, index, rng, opts.shift)
        texts = tokens(pool.captions(index, rng, opts.caption_mix))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.precision == "bf16"):
            image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if (step + 1) % 100 == 0:
            log.info("step %d/%d loss %.3f scale %.1f", step + 1, opts.steps, running, logit_scale.item())
        if opts.eval_every and (step + 1) % opts.eval_every == 0 and step + 1 < opts.steps:
            # An interim checkpoint with a quick check, replaced by the final one.
            figures = heldout_figures(model, preprocess, tokens.tokenizer, n=240)
            log.info("step %d quick held-out check: %s", step + 1, figures)
            save_checkpoint(model, make_config(opts, figures, step + 1, (time.time() - start) / 60), out)
    train_minutes = (time.time() - start) / 60

    figures = heldout_figures(model, preprocess, tokens.tokenizer, n=HELDOUT_N, seed=HELDOUT_SEED)
    log.info("held-out figures: %s", figures)
    config = make_config(opts, figures, opts.steps, train_minutes)
    save_checkpoint(model, config, out)
    return config


def make_config(opts: TrainOptions, figures: dict, steps_done: int, minutes: float) -> dict:
    """The config.json contents: model config, classes, templates, training run and figures."""
    return {
        "model_cfg": MODEL_CFG,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "classnames": list(CLASSNAMES),
        "templates": list(TEMPLATES),
        "training": {
            "seed": opts.seed,
            "steps": steps_done,
            "batch_size": opts.batch_size,
            "pool_size": opts.pool_size,
            "lr": opts.lr,
            "precision": opts.precision,
            "warmstart_steps": opts.warmstart_steps,
            "caption_mix": asdict(opts.caption_mix),
            "pool_mix": asdict(opts.pool_mix),
            "command": command_line(opts),
            "minutes": round(minutes, 1),
            "threads": opts.threads,
        },
        "heldout": figures,
    }


def save_checkpoint(model, config: dict, out: Path) -> None:
    """Write fp16 ``model.safetensors`` and ``config.json`` into ``out``, together (both or neither)."""
    from safetensors.torch import save_file

    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}  # BatchNorm's step counter stays an integer
    with atomic_output_set(out, replaces=CHECKPOINT_FILES) as stage:
        with atomic_path(stage / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(stage / "config.json", config)
    log.info("wrote %s", out)


def command_line(opts: TrainOptions) -> str:
    """The command that reproduces this run."""
    out = opts.out
    try:
        out = Path(out).resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return (f"clipedit train-mini --out {out} --steps {opts.steps} --batch-size {opts.batch_size} "
            f"--seed {opts.seed} --threads {opts.threads} --pool-size {opts.pool_size} --precision {opts.precision} "
            f"--warmstart-steps {opts.warmstart_steps}")
