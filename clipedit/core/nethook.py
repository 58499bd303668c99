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


class FrozenBelow(contextlib.AbstractContextManager):
    """Run the part of a forward pass below ``layer`` once and replay it: training one layer on a fixed
    batch changes nothing that runs before that layer, so it need not run at every step.

    Within the block, ``self()`` runs ``run()`` (a forward pass on a fixed input, e.g. ``lambda: model(x)``).
    The first call runs it whole, in the caller's grad mode, and keeps what ``forward`` returned for every
    module whose calls all finish before ``layer`` starts (not ``layer``, its ancestors or what follows it); the
    outermost of those (``frozen``) then return their kept outputs instead of running (copies of those
    that the pass changes in place, as the second call finds): only the glue between them (a residual
    sum, a reshape), ``layer`` and what follows it compute. Outside ``self()`` the modules run as usual.

    The replay is for the same input, parameters below ``layer`` unchanged and the same control flow
    (the model in eval mode: no dropout draws, no batch-norm updates); a replay whose modules are called
    a different number of times than the first pass raises ``SiteError``, as does a ``layer`` that does
    not run or a module below it that holds one of the ``trained`` parameters.
    """

    def __init__(self, model: nn.Module, layer: str, run: Callable[[], object],
                 trained: Iterable[nn.Parameter] = ()) -> None:
        self.model, self.layer, self.run = model, layer, run
        self.site = get_module(model, layer)
        self.trained = {id(p) for p in trained}
        self.frozen: list[str] = []
        self.calls: dict[str, int] = {}
        self.kept: dict[str, list] = {}
        self._recorded = False
        self._active = False
        self._count: dict[str, int] = {}
        # the first replay hands out copies and notes which the pass changes in place (an in-place ReLU);
        # later replays hand out the kept outputs of the others themselves (no copy)
        self._returned: Optional[list] = []
        self._shared: set[str] = set()
        self._versions: dict[str, list[int]] = {}
        self._patched: list[tuple[nn.Module, Optional[Callable]]] = []

    def _record(self):
        """The first pass: run whole, note which calls finish before ``layer`` starts and keep what their
        ``forward`` returned (before any forward hook, which runs again on the replayed output)."""
        calls: dict[str, int] = {}
        before: dict[str, list] = {}
        started = [False]

        def recording(name: str, forward: Callable) -> Callable:
            def record(*args, **kwargs):
                if name == self.layer:
                    started[0] = True
                out = forward(*args, **kwargs)
                calls[name] = calls.get(name, 0) + 1
                if not started[0]:
                    before.setdefault(name, []).append(_tree_clone(out))
                return out
            return record

        modules = dict(self.model.named_modules())
        saved = {n: m.__dict__.get("forward") for n, m in modules.items()}
        originals = {n: m.forward for n, m in modules.items()}
        try:
            for n, m in modules.items():
                m.forward = recording(n, originals[n])
            out = self.run()
        finally:
            for n, m in modules.items():
                if saved[n] is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = saved[n]
        layer = self.layer
        if not started[0]:
            raise SiteError(f"{layer} does not run in the forward pass; nothing to replay below it")
        frozen = {n for n, outs in before.items() if len(outs) == calls[n] and n != layer and n != ""
                  and not layer.startswith(n + ".") and not n.startswith(layer + ".")}
        self.frozen = sorted(n for n in frozen if not any(n.startswith(p + ".") for p in frozen))
        for n in self.frozen:
            if any(id(p) in self.trained for p in modules[n].parameters()):
                raise SiteError(f"{n} runs before {layer} yet holds a trained parameter; it cannot be replayed")
        self.calls = {n: calls[n] for n in self.frozen}
        self.kept = {n: before[n] for n in self.frozen}
        for name in self.frozen:
            module = modules[name]
            self._patched.append((module, saved[name]))
            module.forward = self._replaying(name, originals[name])
        self._recorded = True
        return out

    def __enter__(self) -> FrozenBelow:
        return self

    def _replaying(self, name: str, forward: Callable) -> Callable:
        def replay(*args, **kwargs):
            if not self._active:
                return forward(*args, **kwargs)
            i = self._count[name]
            self._count[name] = i + 1
            if i >= len(self.kept[name]):
                raise SiteError(f"{name} ran more often than in the first pass; the forward pass is not the same")
            if name in self._shared:
                return self.kept[name][i]
            out = _tree_clone(self.kept[name][i])
            if self._returned is not None:
                self._returned.append((name, out))
            return out
        return replay

    def __call__(self):
        """One forward pass (the first whole, later ones with everything below ``layer`` replayed);
        returns ``run()``'s result."""
        if not self._recorded:
            return self._record()
        self._count = {n: 0 for n in self.frozen}
        self._active = True
        try:
            out = self.run()
        finally:
            self._active = False
        short = [n for n in self.frozen if self._count[n] != self.calls[n]]
        if short:
            raise SiteError(f"{short[0]} ran {self._count[short[0]]} times, {self.calls[short[0]]} in the first "
                            "pass; the forward pass is not the same")
        if self._returned is not None:  # the first replay: which copies did the rest of the pass change in place?
            changed = {n for n, kept in self._returned if any(t._version for t in _tensors(kept))}
            self._shared = set(self.frozen) - changed  # the others are handed out as kept from now on
            self._versions = {n: [t._version for o in self.kept[n] for t in _tensors(o)] for n in self._shared}
            self._returned = None
        elif any([t._version for o in self.kept[n] for t in _tensors(o)] != v for n, v in self._versions.items()):
            raise SiteError("a replayed output was changed in place; the forward pass is not the same")
        return out

    def __exit__(self, exc_type, exc, tb):
        for module, before in reversed(self._patched):
            if before is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = before
        self._patched = []
        return False


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _tree_clone(value):
    """A copy of every tensor in ``value`` (tensors, tuples, lists, dicts), detached."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_tree_clone(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_tree_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_clone(v) for k, v in value.items()}
    return value
