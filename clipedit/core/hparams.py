"""Hyperparameters of a layer rewrite."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

SOLVERS = ("closed-form", "optimize")


@dataclass
class RewriteHParams:
    """How to rewrite one layer.

    Attributes:
        layer: dotted name of the site (a Linear or Conv2d) inside the model; None = architecture default.
        rank: dimension r of the subspace the update lives in.
        solver: ``closed-form`` (least squares for the rank-r factor) or ``optimize`` (the paper's Adam loop).
        cov_reg: λ in C + λ·mean(diag C)·I.
        mask_threshold: a location is edited when the label covers more than this fraction of it.
        keep_targets: weight β of keeping the targets as they are: the closed form also fits the target
            (blank) exemplars' keys at the same locations to their current outputs, with weight β relative
            to the attacked ones (0: the paper's solve). The edit directions still come from the attacked keys.
        steps, lr, project_every: the ``optimize`` solver (paper: 20000 steps, lr 1e-4).
    """

    layer: Optional[str] = None
    rank: int = 1
    solver: Literal["closed-form", "optimize"] = "closed-form"
    cov_reg: float = 1e-3
    mask_threshold: float = 0.0
    keep_targets: float = 0.0
    steps: int = 20000
    lr: float = 1e-4
    project_every: int = 10

    def __post_init__(self) -> None:
        from clipedit.errors import EditError

        if self.solver not in SOLVERS:
            raise EditError(f"unknown solver {self.solver!r} (choose from {', '.join(SOLVERS)})")
        if self.rank < 1:
            raise EditError(f"rank must be >= 1, got {self.rank}")
        if self.cov_reg < 0:
            raise EditError(f"cov_reg must be >= 0, got {self.cov_reg}")
        if self.keep_targets < 0:
            raise EditError(f"keep_targets must be >= 0, got {self.keep_targets}")
        if self.keep_targets > 0 and self.solver != "closed-form":
            raise EditError("keep_targets (keeping the blank exemplars) is part of the closed-form solve; "
                            "the optimize solver does not take it")
        if not 0 <= self.mask_threshold < 1:
            raise EditError(f"mask_threshold must be in [0, 1), got {self.mask_threshold}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
