"""Reading the files a user names (word lists, class and template lists, settings JSON, annotations):
each one a regular file of bounded size (:func:`clipedit.io.require_file`), text as UTF-8, JSON of
bounded nesting. A FIFO, a device, a folder or a file larger than its kind ever is: one line, before a
byte is read (a FIFO would wait for a writer forever, ``/dev/zero`` would fill the memory)."""
from __future__ import annotations

import json
import os
import stat
from typing import Any

from clipedit.errors import ClipeditError
from clipedit.io import require_file

#: Largest text input (class, template and word lists, settings): far above any real list.
MAX_TEXT_BYTES = 16 * 2**20
#: Largest JSON input (settings, annotations of a benchmark).
MAX_JSON_BYTES = 64 * 2**20
#: Nesting of a JSON input beyond which it is no settings or annotation file (Python's parser would
#: overflow its stack first on ``[[[[…``).
MAX_JSON_DEPTH = 64


def read_input_bytes(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``); ``what`` names it in errors."""
    path = require_file(path, what, max_bytes=max_bytes)
    try:  # non-blocking: a FIFO swapped in after the check opens at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ClipeditError(f"cannot read {what} {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ClipeditError(f"{what} {path} is not a regular file")
        data = f.read(max_bytes + 1)  # a file that grows (or a /proc file of size 0) stays bounded too
    if len(data) > max_bytes:
        raise ClipeditError(f"{what} {path} is more than the {max_bytes:,} bytes such a file may have")
    return data


def read_input_text(path: str | os.PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of the regular file ``path`` (a byte-order mark dropped)."""
    data = read_input_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ClipeditError(f"cannot read {what} {path}: not UTF-8 text (byte {e.start})") from None


def read_input_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES,
                    max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The parsed JSON of the regular file ``path``: malformed, too deep, non-standard constants (NaN,
    Infinity) or a number too long for Python are one line each."""
    text = read_input_text(path, what, max_bytes)
    check_depth(text, f"{what} {path}", max_depth)

    def constant(name: str):
        raise ClipeditError(f"cannot read {what} {path}: {name} is not a JSON number")

    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise ClipeditError(f"cannot read {what} {path}: {e}") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits
        raise ClipeditError(f"cannot read {what} {path}: {str(e).splitlines()[0][:120]}") from None


def check_depth(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON ``text`` whose brackets nest deeper than ``max_depth`` (brackets inside strings count
    too: a bound, not a parser)."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > max_depth:
                raise ClipeditError(f"cannot read {what}: nested deeper than {max_depth} levels")
        elif char in "]}":
            depth -= 1

