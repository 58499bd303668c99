"""PAINT (Ilharco et al. 2022, mlfoundations/patching): fine-tune, then interpolate the weights.

θ₁ = the image tower fine-tuned on the exemplar pairs; θ = (1 − α)·θ₀ + α·θ₁ for each α of a grid,
scored on the validation split; α is chosen by the pick rule of :mod:`clipedit.defenses.selection`
(the largest defended-word gain whose clean and blank-note loss stay within the tolerance; α = 0,
the unedited model, is always admissible, so the pick never costs more than the tolerance).

Simplifications against the published method: θ₁ is trained with the fine-tuning baselines' label-free
objective (the attacked exemplar's embedding towards the unedited model's embedding of its blank
twin, :mod:`clipedit.defenses.finetune`) instead of cross-entropy on a labelled patching task, and α
is chosen on our validation split instead of on the supported and patching tasks' held-out sets.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from clipedit.core import EditRequest
from clipedit.core.hparams import HParams
from clipedit.defenses.finetune import FinetuneHParams, finetune
from clipedit.defenses.selection import PICK_TOLERANCE, HeldoutData, admissible, gains, heldout_data, pick, score
from clipedit.errors import EditError
from clipedit.models.bundle import ModelBundle

log = logging.getLogger(__name__)


@dataclass
class PaintHParams(HParams):
    """Settings of PAINT.

    Attributes:
        alphas: interpolation weights tried, ascending (ties go to the smaller α).
        finetune: how θ₁ is trained (default: the fine-tuning baselines' settings).
        tolerance: the pick rule's largest clean / blank-note loss.
        n_val: validation scenes per set used to choose α.
    """

    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    finetune: FinetuneHParams = field(default_factory=FinetuneHParams)
    tolerance: float = PICK_TOLERANCE
    n_val: int = 160


@dataclass
class PaintResult:
    """The chosen α and each α's validation figures."""

    alpha: float
    rows: list[dict[str, Any]]


def paint(bundle: ModelBundle, request: EditRequest, words: Sequence[str], hparams: Optional[PaintHParams] = None,
          data: Optional[HeldoutData] = None) -> PaintResult:
    """Fine-tune the image tower on the request, then set it to the interpolation α chosen on validation.

    Args:
        bundle: the model (its image tower is changed in place).
        request: the exemplar pairs.
        words: the defended word(s) (the validation split writes them).
        data: validation data (default: ``hparams.n_val`` scenes of the model's world).
    """
    hp = hparams or PaintHParams()
    if not hp.alphas or any(not 0.0 <= a <= 1.0 for a in hp.alphas):
        raise EditError(f"PAINT's alphas must lie in [0, 1], got {hp.alphas}")
    data = data or heldout_data(bundle, words, hp.n_val)
    tower = bundle.image_module
    theta0 = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    base = score(data)
    finetune(bundle.model, list(tower.parameters()), request, hp.finetune, forward=bundle.encode_images)
    theta1 = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    rows = []
    for alpha in tqdm(sorted(hp.alphas), desc="PAINT α", unit="α", leave=False, disable=None):
        interpolate_(tower, theta0, theta1, alpha)
        figures = base if alpha == 0.0 else score(data)
        row = {"alpha": alpha, **{k: figures.get(k) for k in ("text_acc", "other_text_acc", "clean_acc", "blank_acc")}}
        row.update(gains(row, base))
        row["admissible"] = admissible(row, base, hp.tolerance)
        rows.append(row)
        log.info("PAINT α=%.2f: defended %.3f clean %.3f blank %.3f", alpha, row["text_acc"], row["clean_acc"],
                 row["blank_acc"])
    best = pick(rows, base, hp.tolerance)
    alpha = rows[best]["alpha"] if best is not None else 0.0
    interpolate_(tower, theta0, theta1, alpha)
    for name, p in tower.named_parameters():
        if not torch.isfinite(p).all():
            raise EditError(f"PAINT produced NaN or inf in {name}")
    return PaintResult(alpha=alpha, rows=rows)


@torch.no_grad()
def interpolate_(module: torch.nn.Module, theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
                 alpha: float) -> None:
    """Load (1 − α)·θ₀ + α·θ₁ into ``module`` (floating-point entries; others taken from θ₀)."""
    state = {k: ((1 - alpha) * v + alpha * theta1[k]).to(v.dtype) if v.is_floating_point() else v
             for k, v in theta0.items()}
    module.load_state_dict(state)
