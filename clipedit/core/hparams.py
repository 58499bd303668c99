"""Hyperparameters of a layer rewrite, and the one schema check every settings class uses."""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Optional, Union

from clipedit.errors import EditError, SettingsError

SOLVERS = ("closed-form", "optimize")
# Above this weight the kept blank outputs swamp the attacked ones and the solved update is zero to
# float precision (an edit that changes nothing); refused rather than saved as a defense.
MAX_KEEP_TARGETS = 1e6
#: Most scenes, images, steps … a setting may ask for: far above any real run, far below what exhausts
#: memory or time before the first result (a typo of 1e10 is refused, not started).
MAX_COUNT = 1_000_000
#: Seeds are what NumPy's generators take.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Bound:
    """Declared range of a numeric setting (of each item, for a tuple of numbers)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        return not ((self.low is not None and (value <= self.low if self.low_open else value < self.low))
                    or (self.high is not None and (value >= self.high if self.high_open else value > self.high)))

    def __str__(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return " and ".join(parts)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


#: Common bounds: a count of at least one, of at least zero, a positive number, a fraction, a seed.
COUNT = Bound(1, MAX_COUNT)
COUNT0 = Bound(0, MAX_COUNT)
POSITIVE = Bound(0, low_open=True)
NONNEGATIVE = Bound(0)
FRACTION = Bound(0, 1)
SEED = Bound(0, MAX_SEED)


def check_fields(obj: Any, bounds: typing.Mapping[str, Bound], error: type[Exception]) -> None:
    """Check every field of the dataclass instance ``obj`` against its type annotation (whole numbers,
    finite numbers, strings, ``Literal`` choices, ``Optional``, tuples of these, paths, nested settings)
    and its declared ``bounds``; raise ``error`` naming the first field that is wrong, in one line.

    A tuple field takes a list or tuple (never a string, which would be read letter by letter) and is
    stored as a tuple; a path takes a str or ``os.PathLike``.
    """
    hints = _hints(type(obj))
    where = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            checked = _check(value, hints.get(f.name, Any), bounds.get(f.name))
        except _Wrong as wrong:
            raise error(f"{where}: {f.name} must be {wrong.wanted}, got {_shown(value)}") from None
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


class _Wrong(Exception):
    def __init__(self, wanted: str) -> None:
        super().__init__(wanted)
        self.wanted = wanted


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(value: Any, hint: Any, bound: Optional[Bound]) -> Any:
    """``value`` (a list made a tuple where the hint is a tuple) if it fits ``hint`` and ``bound``; else _Wrong."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        wanted = []
        for option in options:
            try:
                return _check(value, option, bound)
            except _Wrong as wrong:
                wanted.append(wrong.wanted)
        raise _Wrong(" or ".join(wanted) + (" or null" if type(None) in args else ""))
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Wrong("one of " + ", ".join(map(repr, args)))
    if origin is tuple or hint is tuple:
        item = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else Any
        wanted = f"a non-empty list of {_name(item)}" + (f", each {bound}" if bound is not None else "")
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not value:
            raise _Wrong(wanted)
        try:
            items = tuple(_check(v, item, bound) for v in value)
        except _Wrong:
            raise _Wrong(wanted) from None
        return items if items != tuple(value) or not isinstance(value, tuple) else value
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Wrong("an object (a dict)")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Wrong("true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise _Wrong(_with(bound, "a whole number"))
        if bound is not None and not bound.holds(value):
            raise _Wrong(_with(bound, "a whole number"))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise _Wrong(_with(bound, "a finite number"))
        if bound is not None and not bound.holds(value):
            raise _Wrong(_with(bound, "a finite number"))
        return value
    if hint is str:
        if isinstance(value, str) and value.strip():
            return value
        raise _Wrong("a non-empty string")
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            return value
        raise _Wrong("a path (str or Path)")
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if issubclass(hint, HParams) and isinstance(value, dict):  # nested settings given as a dict
            return hint.from_dict(value)
        raise _Wrong(f"a {hint.__name__}")
    return value  # a form the schema does not describe (a Sequence of images …): its users check it


def _with(bound: Optional[Bound], what: str) -> str:
    return f"{bound} ({what})" if bound is not None and str(bound) else what


def _name(hint: Any) -> str:
    return {int: "whole numbers", float: "finite numbers", str: "strings"}.get(hint, getattr(hint, "__name__", "items"))


class HParams:
    """Settings dataclass base: one schema per class (field types + declared :attr:`BOUNDS`), checked on
    every construction (Python and ``--hparams FILE.json`` alike), and the dict round trip.

    Subclasses declare ``BOUNDS = {"steps": COUNT, "lr": POSITIVE, ...}``; a subclass with its own
    ``__post_init__`` calls ``super().__post_init__()`` first.
    """

    #: field name -> declared range (numbers; a tuple's items).
    BOUNDS: ClassVar[dict[str, Bound]] = {}
    #: the error a wrong value raises (a :class:`clipedit.errors.ClipeditError`).
    ERROR: ClassVar[Optional[type]] = None

    def __post_init__(self) -> None:
        check_fields(self, self.BOUNDS, self.ERROR or SettingsError)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """An instance from ``values`` (e.g. parsed JSON): unknown keys refused in one line, nested
        settings given as dicts, tuples as lists; every value checked by the class's schema."""
        if not isinstance(values, dict):
            raise SettingsError(f"{cls.__name__} takes an object of settings, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SettingsError(f"unknown setting(s) of {cls.__name__}: {', '.join(unknown)} "
                                f"(known: {', '.join(fields)})")
        kwargs = {}
        for name, value in values.items():
            f = fields[name]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if isinstance(value, dict) and dataclasses.is_dataclass(default):
                value = type(default).from_dict(value) if isinstance(default, HParams) else type(default)(**value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise SettingsError(f"bad settings for {cls.__name__}: {e}") from None


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
        spread: a multi-site edit spreads one target over its sites (MEMIT's residual spreading): the target is
            the blank exemplar's residual stream after the LAST site's block; each site in turn takes an equal
            share of the gap that remains there (1/3, then 1/2, then all of it for three sites), instead of each
            site matching the blank at its own block. Sites must write the residual stream (a ViT block's
            ``mlp.c_proj``), in forward order; closed form only.
        class_token: a ViT site is edited at the label's tokens (``off``), at the class token alone (``only``:
            its keys on the attacked exemplars, its target the blank exemplar's, the signs' class token kept), or
            at both (``also``). Closed form only.
        steps, lr, project_every: the ``optimize`` solver (paper: 20000 steps, lr 1e-4).
    """

    layer: Optional[str] = None
    rank: int = 1
    solver: Literal["closed-form", "optimize"] = "closed-form"
    cov_reg: float = 1e-3
    mask_threshold: float = 0.0
    keep_targets: float = 0.0
    keep_reading: float = 0.0
    spread: bool = False
    class_token: Literal["off", "only", "also"] = "off"
    steps: int = 20000
    lr: float = 1e-4
    project_every: int = 10

    BOUNDS = {"rank": COUNT, "cov_reg": NONNEGATIVE, "mask_threshold": Bound(0, 1, high_open=True),
              "keep_targets": NONNEGATIVE, "keep_reading": NONNEGATIVE, "steps": COUNT, "lr": POSITIVE,
              "project_every": COUNT}
    ERROR = EditError

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, what in (("keep_targets", "the kept blank outputs"), ("keep_reading", "the kept signs")):
            if getattr(self, name) > MAX_KEEP_TARGETS:
                raise EditError(f"{name} {getattr(self, name):g} is above {MAX_KEEP_TARGETS:g}: {what} would "
                                "outweigh the edit until it changes nothing")
        if self.keep_targets > 0 and self.solver != "closed-form":
            raise EditError("keep_targets (keeping the blank exemplars) is part of the closed-form solve; "
                            "the optimize solver does not take it")
        if self.spread and self.solver != "closed-form":
            raise EditError("spread (one target spread over the sites) is part of the closed-form solve; "
                            "the optimize solver does not take it")
        if self.keep_reading > 0 and self.solver != "closed-form":
            raise EditError("keep_reading (keeping the signs' outputs) is part of the closed-form solve; "
                            "the optimize solver does not take it")
