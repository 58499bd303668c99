"""Hyperparameters of a layer rewrite."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional

SOLVERS = ("closed-form", "optimize")
# Above this weight the kept blank outputs swamp the attacked ones and the solved update is zero to
# float precision (an edit that changes nothing); refused rather than saved as a defense.
MAX_KEEP_TARGETS = 1e6


class HParams:
    """Dict round trip of a settings dataclass (every method's hyperparameters; ``--hparams FILE.json``)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """An instance from ``values`` (e.g. parsed JSON): unknown keys refused in one line, nested
        settings given as dicts, tuples as lists."""
        from clipedit.errors import ClipeditError

        if not isinstance(values, dict):
            raise ClipeditError(f"{cls.__name__} takes an object of settings, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ClipeditError(f"unknown setting(s) of {cls.__name__}: {', '.join(unknown)} "
                                f"(known: {', '.join(fields)})")
        kwargs = {}
        for name, value in values.items():
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                value = type(default).from_dict(value) if isinstance(default, HParams) else type(default)(**value)
            elif isinstance(value, list) and isinstance(default, tuple):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise ClipeditError(f"bad settings for {cls.__name__}: {e}") from None


@dataclass
class RewriteHParams(HParams):
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
        keep_reading: weight β of keeping reading as it is: the closed form also fits the keys of signs (class
            names written alone, no object, in exemplar styles; given to the solve as ``KeepRequest``) at their
            labels to the site's current outputs there, the signs' total mask weight scaled to β times the
            exemplars' (0: no signs; the solve is then today's, bit for bit). Directions as for keep_targets.
        steps, lr, project_every: the ``optimize`` solver (paper: 20000 steps, lr 1e-4).
    """

    layer: Optional[str] = None
    rank: int = 1
    solver: Literal["closed-form", "optimize"] = "closed-form"
    cov_reg: float = 1e-3
    mask_threshold: float = 0.0
    keep_targets: float = 0.0
    keep_reading: float = 0.0
    steps: int = 20000
    lr: float = 1e-4
    project_every: int = 10

    def __post_init__(self) -> None:
        from clipedit.errors import EditError

        if self.solver not in SOLVERS:
            raise EditError(f"unknown solver {self.solver!r} (choose from {', '.join(SOLVERS)})")
        for name in ("cov_reg", "mask_threshold", "keep_targets", "keep_reading", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise EditError(f"{name} must be a finite number, got {value!r}")
        for name in ("rank", "steps", "project_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise EditError(f"{name} must be a whole number, got {value!r}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip()):
            raise EditError(f"layer must be a dotted layer name, got {self.layer!r}")
        if self.keep_targets > MAX_KEEP_TARGETS:
            raise EditError(f"keep_targets {self.keep_targets:g} is above {MAX_KEEP_TARGETS:g}: the kept blank outputs "
                            "would outweigh the edit until it changes nothing")
        if self.keep_reading > MAX_KEEP_TARGETS:
            raise EditError(f"keep_reading {self.keep_reading:g} is above {MAX_KEEP_TARGETS:g}: the kept signs would "
                            "outweigh the edit until it changes nothing")
        if self.rank < 1:
            raise EditError(f"rank must be >= 1, got {self.rank}")
        if self.cov_reg < 0:
            raise EditError(f"cov_reg must be >= 0, got {self.cov_reg}")
        if self.keep_targets < 0:
            raise EditError(f"keep_targets must be >= 0, got {self.keep_targets}")
        if self.keep_targets > 0 and self.solver != "closed-form":
            raise EditError("keep_targets (keeping the blank exemplars) is part of the closed-form solve; "
                            "the optimize solver does not take it")
        if self.keep_reading < 0:
            raise EditError(f"keep_reading must be >= 0, got {self.keep_reading}")
        if self.keep_reading > 0 and self.solver != "closed-form":
            raise EditError("keep_reading (keeping the signs' outputs) is part of the closed-form solve; "
                            "the optimize solver does not take it")
        if not 0 <= self.mask_threshold < 1:
            raise EditError(f"mask_threshold must be in [0, 1), got {self.mask_threshold}")
