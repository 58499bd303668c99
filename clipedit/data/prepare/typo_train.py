"""The typographic splits the word-agnostic peers share: the *training* split (PAINT's θ₁,
Defense-Prefix's token, Dyslexify's scoring images come from other seeds) and the *validation* sets
every method that selects anything selects on.

Training: scenes of the model's world, each with a random *other* class's name at a random position,
in exemplar styles (never the held-out styles of the validation and test splits), from seeds of their
own (``TRAIN_SEED``; :mod:`clipedit.eval.heldout` holds the validation/test seeds). This mirrors the
published training sets: Dyslexify's ImageNet-100 train split with ``position="random"`` and a random
other class name (lowlorenz/dyslexify ``dyslexify/dataset/utils.py`` ``create_typographic_attack_image``).

Validation (:func:`validation_sets`): ``n`` scenes of the validation split with another class's name,
in the split's leave-out factors (:mod:`attacks.factors`, as the edit's sweep and the test split draw
them), their clean copies, and a *supported task* disjoint from them (clean scenes of another seed of
the split, or a given ImageFolder). Signs (a class name alone) are kept beside them for reporting.

A caller that runs several methods passes one ``shared`` dict to :func:`shared_training_set` and
:func:`shared_validation`: each split is rendered once, and every method that uses it is charged the
seconds it took. :func:`validation_for` is the one call of a method's run (a ``supported`` ImageFolder,
checked by :func:`check_supported`, stands for the supported task when given).
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from clipedit.attacks import StyleSampler
from clipedit.data.folders import LabeledImages, image_paths, load_image_folder
from clipedit.data.images import to_batches
from clipedit.errors import ClipeditError
from clipedit.eval.heldout import SPLITS, split_seed
from clipedit.eval.predictor import Predictor
from clipedit.eval.reading import sign_set
from clipedit.models.bundle import ModelBundle

#: Seed of the typographic training split (seed ``s`` of a method uses ``TRAIN_SEED + s``).
TRAIN_SEED = 7_919
assert TRAIN_SEED not in SPLITS.values()
#: Seed offsets, within the validation split, of the patching task's scenes and of the supported task's
#: clean scenes (the split's defended-word set uses +0, other words +1, signs +2).
PATCH_VAL_OFFSET = 3
SUPPORTED_VAL_OFFSET = 4


@dataclass
class TypoSet:
    """Preprocessed images of one split: the clean scene and the same scene with the note, and labels."""

    clean: torch.Tensor
    attacked: torch.Tensor
    labels: torch.Tensor
    words: list[str]
    classnames: list[str]

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class SupportedTask:
    """A task the defense must keep: preprocessed images, labels and the classes of its zero-shot head."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classnames: list[str]

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class TypoValidation:
    """The validation sets every method selects on.

    Attributes:
        typo: scenes with another class's name (the patching task); ``clean``: the same scenes without it.
        labels: their true classes.
        supported: the supported task, disjoint from ``typo``'s scenes.
        signs, sign_labels: class names written alone (reported, never selected on), or None.
    """

    typo: torch.Tensor
    clean: torch.Tensor
    labels: torch.Tensor
    supported: SupportedTask
    signs: Optional[torch.Tensor] = None
    sign_labels: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


def _stack(bundle: ModelBundle, images) -> torch.Tensor:
    return torch.cat(list(to_batches(images, bundle.preprocess, 256)))


def _labelled_world(bundle: ModelBundle, what: str):
    world = bundle.world
    if world is None or not world.classnames:
        raise ClipeditError(f"{bundle.name} has no labelled world to draw {what} from")
    return world


def typographic_training_set(bundle: ModelBundle, n: int, seed: int = 0, position="random") -> TypoSet:
    """``n`` training scenes of the bundle's world with a random other class's name at ``position``.

    Raises:
        ClipeditError: ``n`` < 1, or the model's world has no labelled scenes.
    """
    if n < 1:
        raise ClipeditError(f"the typographic training split needs at least 1 scene, got {n}")
    world = _labelled_world(bundle, "a typographic training split")
    sampler = StyleSampler.exemplar(position=position)
    try:
        attacks, labels = world.attack_set(n, TRAIN_SEED + seed, "other", sampler=sampler)
    except TypeError:
        raise ClipeditError(f"{world.name} cannot draw a training split in exemplar styles") from None
    return TypoSet(_stack(bundle, [a.clean for a in attacks]), _stack(bundle, [a.attacked for a in attacks]),
                   torch.tensor(labels), [a.text for a in attacks], list(world.classnames))


def validation_sets(bundle: ModelBundle, n: int, n_signs: int = 0, supported: Optional[SupportedTask] = None
                    ) -> TypoValidation:
    """The validation sets of the model's world (module docstring); ``supported``: a given supported task
    in place of the world's clean scenes of a disjoint seed."""
    if n < 1:
        raise ClipeditError(f"the validation split is empty (asked for {n} scenes); give at least 1")
    world = _labelled_world(bundle, "validation sets")
    seed = split_seed("validation")
    attacks, labels = world.attack_set(n, seed + PATCH_VAL_OFFSET, "other", split="validation")
    if supported is None:
        other, other_labels = world.attack_set(n, seed + SUPPORTED_VAL_OFFSET, "other", split="validation")
        supported = SupportedTask(f"clean validation scenes of {world.name} (a disjoint seed)",
                                  _stack(bundle, [a.clean for a in other]), torch.tensor(other_labels),
                                  list(world.classnames))
    signs = sign_set(world, n_signs, "validation") if n_signs else None
    return TypoValidation(_stack(bundle, [a.attacked for a in attacks]), _stack(bundle, [a.clean for a in attacks]),
                          torch.tensor(labels), supported, _stack(bundle, signs.images) if signs else None,
                          torch.tensor(signs.labels) if signs else None)


def _shared(shared: Optional[dict[str, Any]], key: str, make) -> tuple[Any, float]:
    if shared is None:
        start = time.perf_counter()
        return make(), time.perf_counter() - start
    if key not in shared:
        start = time.perf_counter()
        shared[key] = (make(), time.perf_counter() - start)
    return shared[key]


def shared_training_set(bundle: ModelBundle, n: int, seed: int, shared: Optional[dict[str, Any]] = None
                        ) -> tuple[TypoSet, float]:
    """(the training split, seconds its rendering took), rendered once per ``shared`` dict."""
    return _shared(shared, f"train:{n}:{seed}", lambda: typographic_training_set(bundle, n, seed))


def shared_validation(bundle: ModelBundle, n: int, n_signs: int = 0, supported: Optional[SupportedTask] = None,
                      shared: Optional[dict[str, Any]] = None) -> tuple[TypoValidation, float]:
    """(the validation sets, seconds they took), rendered once per ``shared`` dict and size."""
    key = f"val:{n}:{n_signs}:{supported.name if supported is not None else '-'}"
    return _shared(shared, key, lambda: validation_sets(bundle, n, n_signs, supported))


@torch.no_grad()
def check_supported(path: str | os.PathLike, classes: Optional[Sequence[str]] = None) -> LabeledImages:
    """The ``--supported`` folder's images and classes, checked before any work.

    Raises:
        ClipeditError: not a folder, no images, images but no class folders, or ``classes`` not one per folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise ClipeditError(f"--supported {root}: not a folder (give an ImageFolder: DIR/<class>/<image>)")
    if not image_paths(root, "--supported folder", required=False):
        raise ClipeditError(f"--supported {root} holds no images (expected {root}/<class>/<image>)")
    if not any(image_paths(d, required=False) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        raise ClipeditError(f"--supported {root} has no class folders (expected {root}/<class>/<image>)")
    data = load_image_folder(root)
    if classes is not None and len(classes) != len(data.classnames):
        raise ClipeditError(f"--supported-classes gives {len(classes)} names for the {len(data.classnames)} "
                            f"class folders of {root} ({', '.join(data.classnames)})")
    if len(data.classnames) < 2:
        raise ClipeditError(f"--supported {root} has one class ({data.classnames[0]}): a task needs two or more")
    if classes is not None:
        data.classnames = list(classes)
    return data


def supported_task(bundle: ModelBundle, path: str | os.PathLike, classes: Optional[Sequence[str]] = None
                   ) -> SupportedTask:
    """The ``--supported`` folder, preprocessed for ``bundle``."""
    data = check_supported(path, classes)
    images = torch.cat(list(to_batches(data.images, bundle.preprocess, 256)))
    return SupportedTask(str(path), images, torch.tensor(data.labels), list(data.classnames))


def validation_for(bundle: ModelBundle, hparams: Any, shared: Optional[dict[str, Any]] = None, n_signs: int = 0
                   ) -> tuple[TypoValidation, float]:
    """The shared validation sets at ``hparams.n_val`` (a ``hparams.supported`` folder: the supported task) and
    the seconds they took (0 when ``shared`` held them)."""
    path = getattr(hparams, "supported", None)
    task = None
    if path is not None:
        key = f"supported:{path}:{getattr(hparams, 'supported_classes', None)}"
        cache = shared if shared is not None else {}
        if key not in cache:
            cache[key] = supported_task(bundle, path, getattr(hparams, "supported_classes", None))
        task = cache[key]
    return shared_validation(bundle, hparams.n_val, n_signs, task, shared)


def correct(predictor: Predictor, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> int:
    """How many of ``images`` the predictor classifies as ``labels``."""
    hits = 0
    for i in range(0, images.shape[0], batch_size):
        pred = predictor(images[i:i + batch_size]).argmax(1).cpu()
        hits += int((pred == labels[i:i + batch_size]).sum())
    return hits
