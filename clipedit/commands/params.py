"""Click parameter types that refuse what the library cannot take, in one line, before anything runs:
finite numbers (no NaN/inf), bounded counts, devices this machine has, layer lists, valid UTF-8 text,
input files that are regular files of bounded size."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional

import click

from clipedit.data.images import MAX_IMAGE_BYTES
from clipedit.inputs import MAX_JSON_BYTES, MAX_TEXT_BYTES

# Upper bounds of counts a run materialises (scenes rendered, images held): far above any real use,
# far below what exhausts memory before the first image is made.
MAX_SCENES = 1_000_000
MAX_FONT_PIXELS = 4096


class FiniteFloat(click.FloatRange):
    """A float in a range that is neither NaN nor infinite."""

    name = "float"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        """The range for --help; nothing when unbounded (click would print ``x<=None``)."""
        return "" if self.min is None and self.max is None else super()._describe_range()


def finite(min: Optional[float] = None, max: Optional[float] = None, min_open: bool = False,
           max_open: bool = False) -> FiniteFloat:
    """A :class:`FiniteFloat` in ``[min, max]`` (open ends as asked)."""
    return FiniteFloat(min=min, max=max, min_open=min_open, max_open=max_open)


def count(min: int = 1, max: int = MAX_SCENES) -> click.IntRange:
    """A whole number in ``[min, max]`` (the bound keeps a typo from allocating terabytes)."""
    return click.IntRange(min=min, max=max)


class Device(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (a GPU this machine has), or ``mps`` where available."""

    name = "device"
    _CUDA = re.compile(r"^cuda(:(\d+))?$")

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        import torch

        text = str(value).strip().lower()
        if text in ("auto", "cpu"):
            return text
        if text == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                self.fail("mps is not available on this machine (choose cpu, cuda or auto)", param, ctx)
            return text
        match = self._CUDA.match(text)
        if match is None:
            self.fail(f"{value!r} is not a device clipedit runs on (choose cpu, cuda, cuda:N or auto)", param, ctx)
        if not torch.cuda.is_available():
            self.fail(f"{value!r}: no CUDA GPU on this machine (choose cpu or auto)", param, ctx)
        index = int(match.group(2) or 0)
        if index >= torch.cuda.device_count():
            self.fail(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)", param, ctx)
        return text


#: The multi-site syntax of every command: ``A+B`` joins sites into one joint edit, ``A,B`` lists
#: alternatives (candidates that ``sweep --sites`` compares).
JOIN, ALTERNATIVES = "+", ","


class LayerList(click.ParamType):
    """One dotted layer name, or several joined by ``+`` into one joint edit (``auto`` passes through);
    an empty name is refused, and so is ``,`` (which lists alternatives, as in ``sweep --sites``)."""

    name = "layer[+layer…]"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        text = str(value)
        if ALTERNATIVES in text:
            joined = JOIN.join(item.strip() for item in text.split(ALTERNATIVES))
            self.fail(f"{text!r}: one joint edit over several sites is written {joined!r} ('+' joins sites; ',' "
                      "lists alternatives, which clipedit sweep --sites compares)", param, ctx)
        items = [item.strip() for item in text.split(JOIN)]
        if not any(items):
            self.fail(f"{text!r} names no layer", param, ctx)
        if not all(items):
            self.fail(f"{text!r} has an empty layer name (between '+')", param, ctx)
        return JOIN.join(items)


class Text(click.ParamType):
    """A string of valid Unicode (bytes that are not UTF-8 on the command line are refused)."""

    name = "text"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            self.fail(f"'{shown}' is not valid UTF-8 text", param, ctx)
        return text


class InputFile(click.Path):
    """An input file: an existing regular file (through symlinks) of at most ``max_bytes`` (None: any
    size), checked as the option is parsed, before any model loads (:func:`clipedit.io.require_file`:
    a FIFO would block the read forever, ``/dev/zero`` would fill the memory). A refusal is one
    ``Error:`` line naming the option."""

    def __init__(self, max_bytes: Optional[int] = None) -> None:
        super().__init__(dir_okay=False, path_type=Path)
        self.max_bytes = max_bytes

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        from clipedit.io import require_file

        path = super().convert(value, param, ctx)
        name = (param.opts[0] if param.opts and param.opts[0].startswith("-") else param.human_readable_name) \
            if param is not None else "input"
        return require_file(path, f"{name} file", max_bytes=self.max_bytes)


#: Upper bounds of input files by kind (far above any real one; a bound keeps a stray multi-gigabyte file
#: or a device from being read into memory).
MAX_FONT_BYTES = 256 * 2**20

DEVICE = Device()
LAYERS = LayerList()
TEXT = Text()
#: A text list (classes, templates, words) and a settings JSON: bounded as :mod:`clipedit.inputs` reads them.
TEXT_FILE = InputFile(max_bytes=MAX_TEXT_BYTES)
JSON_FILE = InputFile(max_bytes=MAX_JSON_BYTES)
IMAGE_FILE = InputFile(max_bytes=MAX_IMAGE_BYTES)
FONT_FILE = InputFile(max_bytes=MAX_FONT_BYTES)
#: Edit files (their size follows the model's): regular files of any size.
EDIT_FILE = InputFile()
