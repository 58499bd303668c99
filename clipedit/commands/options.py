"""Click options shared by the commands (--model, --checkpoint, --device, --out …) and their parsing."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import click

from clipedit.commands.params import DEVICE, EDIT_FILE
from clipedit.errors import ClipeditError
from clipedit.io import check_replaceable


@dataclass
class ModelOptions:
    """Which model to load and where.

    Attributes:
        spec: ``NAME[:PRETRAINED]``, ``mini`` …
        checkpoint: local weights to load instead of the tag's.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        edits: edit files applied on load, in order (``--edit FILE``; weight and hook edits alike).
    """

    spec: str
    checkpoint: Optional[Path] = None
    device: Optional[str] = None
    edits: tuple[Path, ...] = ()

    def load(self):
        """The :class:`~clipedit.models.ModelBundle` these options name."""
        from clipedit.models import load_model

        return load_model(self.spec, checkpoint=self.checkpoint, device=self.device, edits=self.edits)


def model_options(default: Optional[str] = None, edits: bool = False) -> Callable:
    """Decorator: add --model/--checkpoint/--device (and ``edits``: a repeatable --edit FILE) and pass them
    as ``model: ModelOptions``."""

    def decorate(f: Callable) -> Callable:
        @click.option("--model", "model_spec", required=default is None, default=default, show_default=True,
                      metavar="SPEC", help="Model NAME[:PRETRAINED] (e.g. ViT-B-32:openai, mini, tiny-vit).")
        @click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                      help="Local weights (.pt/.bin/.safetensors; a save_pretrained folder with --model hf) "
                           "instead of downloading.")
        @click.option("--device", type=DEVICE, default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
        @functools.wraps(f)
        def wrapper(*args, model_spec: str, checkpoint: Optional[Path], device: str, edit_files=(), **kwargs):
            if model_spec is None or not str(model_spec).strip():  # click 8.5 lets a required option through
                raise ClipeditError("--model is required: name the model to load (e.g. --model mini, "
                                    "--model ViT-B-32:openai; `clipedit models` lists them)")
            # missing files are refused before anything loads (a model takes seconds to minutes)
            if checkpoint is not None and not checkpoint.exists():
                raise ClipeditError(f"checkpoint not found: {checkpoint}")
            for path in edit_files:
                if not path.exists():
                    raise ClipeditError(f"edit file not found: {path}")
            return f(*args, model=ModelOptions(model_spec, checkpoint, device, tuple(edit_files)), **kwargs)

        if edits:
            wrapper = click.option("--edit", "edit_files", multiple=True, metavar="FILE",
                                   type=EDIT_FILE,
                                   help="An edit file to apply on load (repeatable, in order; weight and hook "
                                        "edits alike).")(wrapper)
        return wrapper

    return decorate


def out_dir_option(required: bool = True, help: str = "Output directory.") -> Callable:
    """Decorator: ``--out DIR`` (a Path)."""
    return click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
                        required=required, help=help)


def out_file_option(default: Optional[str] = None, help: str = "Output file.") -> Callable:
    """Decorator: ``--out FILE`` (a Path)."""
    return click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
                        default=default, show_default=default is not None, help=help)


def seed_option(default: int = 0) -> Callable:
    """Decorator: ``--seed S`` (a whole number in ``[0, 2**32 - 1]``, what NumPy's generators take)."""
    from clipedit.core.hparams import MAX_SEED

    return click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=default, show_default=True,
                        help="Random seed.")


def script_option() -> Callable:
    """Decorator: ``--script S``: write the words in a script other than Latin (a font that covers it;
    Latin words transliterated letter by letter; see :mod:`attacks.scripts`)."""
    from clipedit.attacks.scripts import SCRIPTS

    return click.option("--script", type=click.Choice(list(SCRIPTS)), default=None,
                        help="Write in this script (a font that covers it; Latin words transliterated).")


def batch_size_option(default: int = 64) -> Callable:
    """Decorator: ``--batch-size B`` (positive int)."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True,
                        help="Images per forward pass.")


#: Bytes a temporary's name adds to its output's (``.NAME.<pid>-<start>.<random>.tmp.png``).
TEMPORARY_ROOM = 48


def check_name_lengths(path: str | os.PathLike) -> Path:
    """Refuse (one line) an output path with a name longer than the file system takes (255 bytes on most)
    or longer than a path may be, before anything is computed or written."""
    path = Path(path)
    if not str(path).strip():
        raise ClipeditError("the output path is empty")
    ancestor = path.absolute()
    while ancestor != ancestor.parent and not _exists(ancestor):
        ancestor = ancestor.parent
    try:
        name_max, path_max = os.pathconf(ancestor, "PC_NAME_MAX"), os.pathconf(ancestor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for i, part in enumerate(path.parts):
        # the last name also gets a temporary beside it while written: .NAME.<pid>-<start>.<random>.tmp…
        limit = name_max - (TEMPORARY_ROOM if i == len(path.parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            raise ClipeditError(f"output name {part[:24]}… is {len(os.fsencode(part))} bytes long; names on this file "
                                f"system are at most {name_max} bytes, and an output's at most {limit} (its "
                                "temporary adds to it while it is written)")
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise ClipeditError(f"output path {str(path)[:24]}… is longer than the {path_max} bytes a path may be")
    return path


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long to look up
        return False


def _looked_up(path: Path, test: Callable[[], bool], what: str) -> bool:
    """``test()`` of ``path`` (exists, is a folder …); a path the system cannot look up (a symlink loop …)
    is one line naming ``what`` it was to be."""
    try:
        return test()
    except OSError as e:
        raise ClipeditError(f"cannot use {what} {str(path)[:80]}: {e.strerror}") from None


def check_out_dir(path: str | os.PathLike) -> Path:
    """Fail now (creating nothing) if directory ``path`` could not be created or written to later."""
    path = check_name_lengths(path)
    if _looked_up(path, path.exists, "output directory"):
        check_replaceable(path, directory=True)  # a file, a device, a FIFO: each named as what it is
        if not os.access(path, os.W_OK | os.X_OK):
            raise ClipeditError(f"output directory {path} is not writable")
        return path
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ClipeditError(f"cannot create output directory {path}: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ClipeditError(f"cannot create output directory {path}: {ancestor} is not writable")
    return path


def check_out_file(path: str | os.PathLike) -> Path:
    """Fail now (creating nothing) if file ``path`` could not be written later."""
    path = check_name_lengths(path)
    if _looked_up(path, path.is_dir, "output file"):
        raise ClipeditError(f"output file {path} is a directory")
    check_out_dir(path.parent)
    return path


def split_list(text: Optional[str]) -> Optional[list[str]]:
    """``"a, b,c"`` -> ``["a", "b", "c"]`` (empty items dropped); None stays None."""
    if text is None:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Non-empty, non-comment (``#``) lines of a text file; ``what`` names it in errors."""
    from clipedit.inputs import read_input_text

    text = read_input_text(path, f"{what} file")
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


def class_list(classes: Optional[str], classes_file: Optional[Path]) -> Optional[list[str]]:
    """The class names from ``--classes a,b,c`` or ``--classes-file F`` (None when neither is given).

    Raises:
        ClipeditError: both given, or the list is empty.
    """
    if classes is not None and classes_file is not None:
        raise ClipeditError("give either --classes or --classes-file, not both")
    names = split_list(classes) if classes is not None else \
        read_lines(classes_file, "classes") if classes_file is not None else None
    if names is not None and not names:
        raise ClipeditError("the class list is empty")
    return names


def template_list(templates_file: Optional[Path]) -> Optional[list[str]]:
    """Prompt templates from ``--templates-file`` (one per line, each with ``{}``), or None."""
    if templates_file is None:
        return None
    templates = read_lines(templates_file, "templates")
    if not templates:
        raise ClipeditError(f"templates file {templates_file} has no templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ClipeditError(f"template {bad[0]!r} has no '{{}}' for the class name")
    return templates


class GreedyOption(click.Option):
    """A repeatable option that also takes every value after it: ``--photos a.jpg b.jpg``.

    Use with ``cls=GreedyCommand`` on the command; the values end at the next ``-``-word.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["multiple"] = True
        super().__init__(*args, **kwargs)


class GreedyCommand(click.Command):
    """A command that rewrites ``--opt a b`` into ``--opt a --opt b`` for its :class:`GreedyOption` s."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {o for p in self.params if isinstance(p, GreedyOption) for o in p.opts}
        return super().parse_args(ctx, expand_greedy(args, names))


def expand_greedy(args: list[str], names: set[str]) -> list[str]:
    """Repeat a greedy option's name before each further plain value that follows it."""
    out: list[str] = []
    current: Optional[str] = None  # the greedy option being read
    has_value = False  # whether it has its first value already
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        if arg.startswith("-") and arg != "-":
            name, eq, _ = arg.partition("=")
            current = name if name in names else None
            has_value = bool(eq)
            out.append(arg)
        elif current is not None and has_value:
            out += [current, arg]
        else:
            out.append(arg)
            has_value = True
    return out


def option_group(name: str, cls: type, *options: Callable) -> Callable:
    """Decorator: add ``options`` (click.option decorators whose parameter names are fields of the
    dataclass ``cls``) and pass their values as one argument ``name: cls``."""
    import dataclasses

    fields = [f.name for f in dataclasses.fields(cls)]

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            group = cls(**{k: kwargs.pop(k) for k in fields if k in kwargs})
            return f(*args, **{name: group}, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def read_json_file(path: Optional[Path], what: str):
    """The parsed JSON of ``path`` (None stays None); a missing, special, huge, too deeply nested or
    malformed file is one line."""
    from clipedit.inputs import read_input_json

    if path is None:
        return None
    return read_input_json(path, f"{what} file")
