"""The option groups of ``clipedit defend``: the defense's settings, a real exemplar photo, the evaluation."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import click

from clipedit.commands.options import GreedyOption, class_list, option_group, read_json_file
from clipedit.commands.params import IMAGE_FILE, JOIN, JSON_FILE, LAYERS, TEXT_FILE, count, finite
from clipedit.core.hparams import MAX_KEEP_TARGETS, SOLVERS
from clipedit.data.benchmarks import LAYOUTS
from clipedit.data.images import load_image, load_mask, load_photos
from clipedit.data.prepare.exemplars import request_from_images
from clipedit.data.prepare.typo_train import check_supported
from clipedit.errors import ClipeditError
from clipedit.eval.evaluation import N_EVAL, EvalOptions
from clipedit.methods.finetune import FinetuneHParams
from clipedit.methods.registry import METHODS
from clipedit.settings.defaults import MAX_RENDERS


@dataclass
class SettingsOptions:
    """What the user gave of the defense's settings (the rest: the model's defaults, ``resolve_config``)."""

    method: str = "edit"
    layer: Optional[str] = None
    rank: Optional[str] = None
    solver: Optional[str] = None
    cov_reg: Optional[float] = None
    keep_targets: Optional[float] = None
    keep_reading: Optional[float] = None
    steps: Optional[int] = None
    lr: Optional[float] = None
    renders: Optional[int] = None
    mask_kind: Optional[str] = None
    photos: tuple[Path, ...] = ()
    reference: Optional[Path] = None
    vocab: Optional[Path] = None
    hparams_file: Optional[Path] = None
    seed: int = 0
    supported: Optional[Path] = None
    supported_classes: Optional[str] = None

    @property
    def auto(self) -> list[str]:
        """Which of ``layer`` / ``rank`` are ``auto`` (chosen by the sweep on the validation split)."""
        return [n for n, v in (("layer", self.layer), ("rank", self.rank)) if v == "auto"]

    def overrides(self, any_word: bool) -> dict[str, Any]:
        """The given settings as overrides of the defaults (``auto`` left to the sweep)."""
        if self.vocab is not None and not any_word:
            raise ClipeditError("--vocab goes with --text '*'")
        layer = None if self.layer in (None, "auto") else self.layer.split(JOIN)
        spec = METHODS[self.method]
        if layer and len(layer) > 1 and not spec.model_defaults:  # never tune only the first
            raise ClipeditError(f"--method {self.method} trains one layer; --layer names {len(layer)} "
                                f"({', '.join(layer)})")
        given = {"method": self.method, "layer": layer, "renders": self.renders, "mask": self.mask_kind,
                 "seed": self.seed, "reference": self.reference, "vocab": self.vocab,
                 "photos": load_photos(self.photos) if self.photos else None,
                 "hparams": self.supported_hparams(read_json_file(self.hparams_file, "--hparams"))}
        if spec.model_defaults:  # the rewrite's options (--steps, --lr: its optimize solver's)
            given.update(rank=_rank(self.rank), solver=self.solver, cov_reg=self.cov_reg,
                         keep_targets=self.keep_targets, keep_reading=self.keep_reading)
            if self.solver == "optimize":
                given.update(steps=self.steps, lr=self.lr)
        elif issubclass(spec.hparams_cls, FinetuneHParams):  # the fine-tuning baselines' steps and lr
            given.update(steps=self.steps, lr=self.lr)
        return given

    def supported_hparams(self, hparams: Optional[dict]) -> Optional[dict]:
        """``--supported DIR`` (PAINT's supported task, checked now) merged into the method's settings."""
        if self.supported is None:
            if self.supported_classes is not None:
                raise ClipeditError("--supported-classes goes with --supported")
            return hparams
        takes = [m for m, spec in METHODS.items() if "supported" in {f.name for f in fields(spec.hparams_cls)}]
        if self.method not in takes:
            raise ClipeditError(f"--supported is the supported task of a method whose selection rule has one "
                                f"({', '.join(takes)}): it goes with --method {takes[0]}, not {self.method}")
        names = class_list(self.supported_classes, None)
        check_supported(self.supported, names)
        if hparams is not None and not isinstance(hparams, dict):
            return hparams  # PaintHParams.from_dict refuses it in one line
        return {**(hparams or {}), "supported": str(self.supported), "supported_classes": names}


def _rank(rank: Optional[str]) -> Optional[int]:
    if rank is None or rank == "auto":
        return None
    if not rank.isdigit() or int(rank) < 1:
        raise ClipeditError(f"--rank takes a positive integer or 'auto', got {rank!r}")
    return int(rank)


def keep_reading_option():
    """``--keep-reading BETA`` (defend and sweep): the rewrite's ``keep_reading``."""
    return click.option("--keep-reading", "keep_reading", type=finite(min=0, max=MAX_KEEP_TARGETS), default=None,
                        metavar="BETA",
                        help="Weight of keeping reading: signs (class names written alone, in exemplar styles) "
                             "kept as they are in the closed-form solve, BETA times the exemplars' weight "
                             "(0: no signs) [default: 0].")


settings_options = option_group(
    "settings", SettingsOptions,
    click.option("--vocab", type=TEXT_FILE, default=None,
                 help="Word list (one or more per line) for --text '*' [default: open_clip's tokenizer words, "
                      "the class names and random letter strings]."),
    click.option("--method", type=click.Choice(list(METHODS)), default="edit", show_default=True,
                 help="The rewrite, a fine-tuning baseline or a peer defense, on the same exemplars."),
    click.option("--hparams", "hparams_file", type=JSON_FILE, default=None,
                 metavar="FILE.json", help="The method's settings (its hparams class's fields) as a JSON object; "
                                           "the options below override them."),
    click.option("--layer", type=LAYERS, default=None,
                 help="Dotted name of the layer to rewrite (default per architecture and model, "
                      "clipedit/settings/hparams); several joined by '+' (A+B): one edit over those sites, solved "
                      "in order; 'auto': the sweep's pick on the validation split (clipedit sweep)."),
    click.option("--rank", default=None, metavar="INTEGER|auto",
                 help="Rank of the update [default: per architecture and model, clipedit/settings/hparams]; "
                      "'auto': the sweep's pick on the validation split."),
    click.option("--solver", type=click.Choice(SOLVERS), default=None,
                 help="How the rewrite is solved [default: closed-form, or --hparams' solver]."),
    click.option("--cov-reg", type=finite(min=0, min_open=True), default=None,
                 help="Ridge added to the key statistics, times their mean variance [default: per architecture]."),
    click.option("--keep-blank", "keep_targets", type=finite(min=0), default=None,
                 help="Weight of keeping the blank exemplars' own outputs in the solve (0: the paper's solve) "
                      "[default: per model]."),
    keep_reading_option(),
    click.option("--steps", type=click.IntRange(min=1), default=None,
                 help="Steps of the optimize solver / fine-tuning baselines."),
    click.option("--lr", type=finite(min=0, min_open=True), default=None, help="Their learning rate."),
    click.option("--renders", type=count(max=MAX_RENDERS), default=None,
                 help="Rendered exemplars per word [default: per architecture and model, clipedit/settings/hparams]."),
    click.option("--mask-kind", type=click.Choice(["text", "label"]), default=None,
                 help="Edit the glyphs' locations or the whole label's."),
    click.option("--photos", cls=GreedyOption, type=IMAGE_FILE,
                 help="Photos to render exemplars on instead of the model's world "
                      "(default: the model's world, e.g. mini's; else scikit-image samples)."),
    click.option("--reference", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Folder of reference images for the key statistics."),
    click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed."),
    click.option("--supported", type=click.Path(path_type=Path), default=None, metavar="DIR",
                 help="--method paint: the supported task α is chosen on beside the patching task, an ImageFolder "
                      "(DIR/<class>/<image>) [default: clean validation scenes and signs of the model's world]."),
    click.option("--supported-classes", default=None, help="Class names for --supported (comma-separated; default: "
                                                          "its folder names)."),
)


@dataclass
class PhotoExemplar:
    """A real attacked photo, the same photo with a blank note, and the text's mask."""

    exemplar: Optional[Path] = None
    blank: Optional[Path] = None
    mask_path: Optional[Path] = None

    @property
    def given(self) -> bool:
        return any(p is not None for p in (self.exemplar, self.blank, self.mask_path))

    def request(self, bundle):
        """The exemplar pair as an EditRequest (None when no photo was given)."""
        if not self.given:
            return None
        if not all(p is not None for p in (self.exemplar, self.blank, self.mask_path)):
            raise ClipeditError("a real exemplar needs all of --exemplar, --blank and --mask")
        return request_from_images(bundle.preprocess, [load_image(self.exemplar)], [load_image(self.blank)],
                                   [load_mask(self.mask_path)])

    def shown(self) -> dict:
        """The images a report shows."""
        return {"exemplar": load_image(self.exemplar), "blank": load_image(self.blank),
                "mask": load_mask(self.mask_path)}


photo_options = option_group(
    "photo", PhotoExemplar,
    click.option("--exemplar", type=IMAGE_FILE, default=None,
                 help="A real attacked photo (with --blank and --mask) instead of rendered exemplars."),
    click.option("--blank", type=IMAGE_FILE, default=None,
                 help="The same photo with a blank note."),
    click.option("--mask", "mask_path", type=IMAGE_FILE, default=None,
                 help="Mask image of the text (white = text)."),
)


@dataclass
class EvalChoice:
    """Where to evaluate before/after (``--no-eval``: nowhere)."""

    data: Optional[str] = None
    classes: Optional[str] = None
    n_eval: int = N_EVAL
    no_eval: bool = False

    def options(self, keep_predictions: bool) -> Optional[EvalOptions]:
        """The evaluation's options, or None with ``--no-eval``."""
        if self.no_eval:
            return None
        return EvalOptions(data=self.data, classes=class_list(self.classes, None), n=self.n_eval,
                           keep_predictions=keep_predictions)


eval_options = option_group(
    "evaluation", EvalChoice,
    click.option("--data", default=None, metavar="DIR|KIND:PATH",
                 help="ImageFolder to render notes on, or a typographic benchmark as published (KIND: "
                      f"{', '.join(LAYOUTS)}) to evaluate on (default: the model's world's held-out scenes)."),
    click.option("--classes", default=None, help="Class names for --data (comma-separated)."),
    click.option("--n-eval", type=count(), default=N_EVAL, show_default=True,
                 help="Held-out scenes per set (models whose world generates them, e.g. mini)."),
    click.option("--no-eval", is_flag=True, help="Skip the before/after evaluation."),
)
