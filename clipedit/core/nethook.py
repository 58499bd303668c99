"""Forward hooks over named modules, after ROME's ``util/nethook.py``.

``Trace`` records (and may replace) the input and output of one module; ``TraceDict`` does the same
for several. Both are context managers: hooks are always removed on exit, also on error.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Optional

import torch
from torch import nn

from clipedit.errors import SiteError


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` (dotted path), or raise ``SiteError`` naming the modules that
    exist where the path stops matching."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    parts = name.split(".")
    cut = next(i for i in range(len(parts), -1, -1) if ".".join(parts[:i]) in modules)
    parent = ".".join(parts[:cut])
    where = f"{parent!r} has" if parent else f"{type(model).__name__}'s top level has"
    raise SiteError(f"no module named {name!r} in {type(model).__name__}; {where}: "
                    f"{_children_text(modules[parent])}")


def _children_text(module: nn.Module, limit: int = 24) -> str:
    """A module's children by name, runs of numbered ones as ``0-11``: ``conv1, layer1, resblocks.0-11``."""
    names = [n for n, _ in module.named_children()]
    numbered = [int(n) for n in names if n.isdigit()]
    words = [n for n in names if not n.isdigit()]
    if numbered:
        words.append(f"{min(numbered)}-{max(numbered)}" if len(numbered) > 1 else str(numbered[0]))
    return ", ".join(words[:limit]) + (", …" if len(words) > limit else "") if words else "no submodules"


@contextlib.contextmanager
def training_only(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Within the block only ``params`` of ``model`` require gradients (and grad mode is on); every
    parameter's flag is restored after, whatever happens (the fine-tuning baselines, the optimize solver)."""
    saved = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)


class StopForward(Exception):
    """Raised by a ``Trace`` with ``stop=True`` to end the forward pass after the module runs."""


class Trace(contextlib.AbstractContextManager):
    """Record the input and output of one module during forward passes.

    Args:
        module: the module, or ``model`` plus ``layer`` to look it up by name.
        layer: dotted name of the module inside ``module``.
        retain_input: keep ``self.input`` (the first positional argument), and every argument in
            ``self.inputs`` (positional) and ``self.kwargs`` (by keyword), e.g. an attention's value.
        retain_output: keep ``self.output``.
        detach: detach recorded tensors from the graph.
        clone: clone recorded tensors (so later in-place ops cannot change them).
        edit_output: ``fn(output, layer) -> output`` applied to the module's output.
        stop: raise ``StopForward`` after the module, to skip the rest of the model.
    """

    def __init__(
        self,
        module: nn.Module,
        layer: Optional[str] = None,
        retain_input: bool = False,
        retain_output: bool = True,
        detach: bool = True,
        clone: bool = False,
        edit_output: Optional[Callable] = None,
        stop: bool = False,
    ) -> None:
        self.layer = layer
        target = get_module(module, layer) if layer is not None else module
        self.input: Optional[torch.Tensor] = None
        self.inputs: tuple = ()
        self.kwargs: dict = {}
        self.output: Optional[torch.Tensor] = None

        def keep(t, kept: Optional[dict] = None):
            if not isinstance(t, torch.Tensor):
                return t
            if kept is not None and id(t) in kept:  # one copy of a tensor passed twice (q = k = v)
                return kept[id(t)]
            out = t.detach() if detach else t
            out = out.clone() if clone else out
            if kept is not None:
                kept[id(t)] = out
            return out

        def hook(mod, inputs, kwargs, output):
            if retain_input:
                kept: dict = {}
                self.inputs = tuple(keep(t, kept) for t in inputs)
                self.kwargs = {k: keep(t, kept) for k, t in kwargs.items()}
                self.input = self.inputs[0] if self.inputs else None
            if edit_output is not None:
                output = edit_output(output, layer)
            if retain_output:
                self.output = keep(output)
            if stop:
                raise StopForward()
            return output

        self._handle = target.register_forward_hook(hook, with_kwargs=True)
        self.stop = stop

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return self.stop and exc_type is StopForward

    def close(self) -> None:
        self._handle.remove()


class TraceDict(OrderedDict, contextlib.AbstractContextManager):
    """A ``Trace`` for each of several layers, keyed by name; ``stop`` ends after the last one."""

    def __init__(
        self,
        module: nn.Module,
        layers: Iterable[str],
        retain_input: bool = False,
        retain_output: bool = True,
        detach: bool = True,
        clone: bool = False,
        edit_output: Optional[Callable] = None,
        stop: bool = False,
    ) -> None:
        super().__init__()
        layers = list(dict.fromkeys(layers))
        self.stop = stop
        last = _last_to_finish(module, layers)
        try:
            for layer in layers:
                self[layer] = Trace(
                    module, layer, retain_input=retain_input, retain_output=retain_output,
                    detach=detach, clone=clone, edit_output=edit_output,
                    stop=stop and layer == last,
                )
        except Exception:
            self.close()
            raise

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return self.stop and exc_type is StopForward

    def close(self) -> None:
        for trace in self.values():
            trace.close()


def _last_to_finish(model: nn.Module, layers: list[str]) -> Optional[str]:
    """The traced module whose forward ends last: the latest-registered one, or an ancestor of it."""
    wanted = set(layers)
    order = [n for n, _ in model.named_modules() if n in wanted]
    if not order:
        return None
    last = order[-1]
    for name in order:  # ancestors finish after their children
        if name == "" or last.startswith(name + "."):
            return name
    return last
