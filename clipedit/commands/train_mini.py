"""``clipedit train-mini``: retrain the bundled mini CLIP on the generated world."""
from __future__ import annotations

import os
from pathlib import Path

import click

from clipedit.commands.options import check_out_dir, seed_option
from clipedit.commands.params import count
from clipedit.errors import ClipeditError
from clipedit.mini.training.train import CHECKPOINT_FILES, DEFAULT_OUT, MAX_POOL, TrainOptions, train
from clipedit.outputs import OutputSet, check_outputs

ARCHES = ("resnet", "vit", "vit-deep")


@click.command("train-mini")
@click.option("--arch", type=click.Choice(ARCHES), default="resnet", show_default=True,
              help="resnet: the bundled mini (assets/mini); vit: the mini ViT (assets/mini-vit, 4 blocks x 2 heads); "
                   "vit-deep: assets/mini-vit-deep (6 blocks x 4 heads); the ViTs are distilled from the bundled "
                   "mini, whose text tower they share.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              help="Folder for config.json and the weights [default: runs/mini, runs/mini-vit, runs/mini-vit-deep].")
@click.option("--steps", type=count(), default=TrainOptions.steps, show_default=True)
@click.option("--batch-size", type=count(2, 65_536), default=TrainOptions.batch_size, show_default=True)
@seed_option(TrainOptions.seed)
@click.option("--threads", type=count(1, os.cpu_count() or 1), default=TrainOptions.threads, show_default=True,
              help="CPU threads for torch (at most this machine's CPUs).")
@click.option("--pool-size", type=count(1, MAX_POOL), default=TrainOptions.pool_size, show_default=True,
              help="Number of pre-rendered training images.")
@click.option("--precision", type=click.Choice(["bf16", "fp32"]), default=TrainOptions.precision, show_default=True,
              help="Autocast precision of the training steps (weights stay float32).")
@click.option("--warmstart-steps", type=count(0), default=TrainOptions.warmstart_steps, show_default=True,
              help="Steps of the supervised warm start of the image tower (objects and written words; --arch "
                   "resnet only: the ViTs are distilled from the bundled mini).")
@click.pass_context
def train_cmd(ctx: click.Context, arch: str, out: Path, steps: int, batch_size: int, seed: int, threads: int,
              pool_size: int, precision: str, warmstart_steps: int) -> None:
    """Train the bundled mini CLIP on the generated world (CPU, about 22 minutes on 2 cores)."""
    if arch.startswith("vit"):  # the ViT's own defaults (DistillOptions) stand where an option was not given
        if ctx.get_parameter_source("warmstart_steps") is not click.core.ParameterSource.DEFAULT:
            raise ClipeditError(f"--warmstart-steps is the resnet mini's warm start; --arch {arch} is distilled "
                                "from the bundled mini and has none")
        from clipedit.mini.training.distill import ARCHES, DistillOptions, distill
        from clipedit.models.mini_vit import WEIGHTS_FILE

        if ctx.get_parameter_source("out") is click.core.ParameterSource.DEFAULT:
            out = Path("runs") / ARCHES[arch]["name"]
        check_outputs({"--out": OutputSet(check_out_dir(out), ("config.json", WEIGHTS_FILE))})
        given = {k: v for k, v in dict(arch=arch, steps=steps, batch_size=batch_size, seed=seed,
                                       threads=threads, pool_size=pool_size, precision=precision).items()
                 if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
        click.echo(f"held-out figures: {distill(DistillOptions(out=out, **given))['heldout']}")
        return
    check_outputs({"--out": OutputSet(check_out_dir(out), CHECKPOINT_FILES)})
    config = train(TrainOptions(out=out, steps=steps, batch_size=batch_size, seed=seed, threads=threads,
                                pool_size=pool_size, precision=precision,
                                warmstart_steps=warmstart_steps))
    click.echo(f"held-out figures: {config['heldout']}")
