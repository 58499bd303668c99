"""A user's labelled data split into validation and test by a seeded hash of file names.

    split = split_data("triples:photos/", seed=0)     # or an ImageFolder: split_data("photos/")
    split.validation, split.test                      # BenchmarkImage records, disjoint, covering every file
    split.record()                                    # seed, rule, counts, a digest of each side's file list

The rule: each *unit* goes to validation when ``sha256(f"{seed}:{unit}")``, read as a fraction in
[0, 1), is below ``fraction`` (default 0.5), else to test. The unit is the scene id where the layout
pairs a scene's photos (``triples``, ``scam``, a manifest's ``pair`` column: a scene's clean, blank and
attacked photos land on the same side), else the file's path relative to the dataset folder (POSIX
separators), so the split depends on the names only: neither on the order files are listed in, nor on
the machine, nor on which other files exist. ``clipedit compare --data`` and ``clipedit sweep --data``
both take their split from :func:`split_data`; methods tune on validation, compare scores on test.

Only images that decode are split (a skipped file is counted in the record). Each side needs at least
``MIN_PER_SIDE`` images, else the set is refused in one line (say so rather than report intervals over
a handful of photos).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clipedit.data.benchmarks import BenchmarkImage, load_benchmark_images, looks_like_spec, read_benchmark
from clipedit.data.folders import load_image_folder
from clipedit.errors import ClipeditError

#: Share of the units that go to validation.
SPLIT_FRACTION = 0.5
#: Fewest images either side may hold.
MIN_PER_SIDE = 8
#: The layout name of an ImageFolder (``DIR``) beside the benchmark kinds (``KIND:PATH``).
FOLDER = "folder"
SIDES = ("validation", "test")


def split_rule(seed: int, fraction: float = SPLIT_FRACTION) -> str:
    """The rule in one sentence, as recorded."""
    return (f"validation when int(sha256('{seed}:' + unit)[:16 hex], 16) / 2**64 < {fraction:g}, else test; "
            "unit = the scene id where the layout pairs a scene's photos, else the file's path relative to the "
            "dataset folder")


def hash_fraction(seed: int, unit: str) -> float:
    """``sha256(f"{seed}:{unit}")`` read as a fraction in [0, 1)."""
    return int(hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()[:16], 16) / 2**64


@dataclass
class DataSplit:
    """A labelled dataset split in two.

    Attributes:
        dataset: as given (``KIND:PATH`` or a folder).
        layout: the benchmark kind, or ``folder`` (an ImageFolder: clean photos, notes rendered on them).
        root: the dataset folder (file names are relative to it).
        seed, fraction: the rule's.
        validation, test: the records of each side (sorted by unit, then path).
        classnames: the class list predictions are made over.
        n_skipped: images that did not decode (split over the rest).
    """

    dataset: str
    layout: str
    root: Path
    seed: int
    fraction: float
    validation: list[BenchmarkImage]
    test: list[BenchmarkImage]
    classnames: list[str]
    n_skipped: int = 0

    def side(self, name: str) -> list[BenchmarkImage]:
        """The records of ``validation`` or ``test``."""
        if name not in SIDES:
            raise ClipeditError(f"unknown side {name!r} (choose from {', '.join(SIDES)})")
        return self.validation if name == "validation" else self.test

    def files(self, name: str) -> list[str]:
        """The relative file names of one side, sorted."""
        return sorted(relative_name(r.path, self.root) for r in self.side(name))

    def units(self, name: str) -> list[str]:
        """The distinct units (scenes or files) of one side, sorted."""
        return sorted({split_unit(r, self.root) for r in self.side(name)})

    def record(self) -> dict[str, Any]:
        """What the results record: the rule, the seed, counts, and a sha256 of each side's file list."""
        return {"dataset": self.dataset, "layout": self.layout, "seed": self.seed, "fraction": self.fraction,
                "rule": split_rule(self.seed, self.fraction), "n_skipped": self.n_skipped,
                "counts": {s: {"images": len(self.side(s)), "units": len(self.units(s)),
                               **{k: sum(r.kind == k for r in self.side(s)) for k in sorted({r.kind for r in
                                                                                          self.side(s)})}}
                           for s in SIDES},
                "digests": {s: hashlib.sha256("\n".join(self.files(s)).encode()).hexdigest() for s in SIDES}}


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to the dataset folder, with POSIX separators."""
    folder = root if root.is_dir() else root.parent
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(folder))).as_posix()


def split_unit(record: BenchmarkImage, root: Path) -> str:
    """What the hash is taken of: the record's scene (``scene:<pair>``) or its file (``file:<relative path>``)."""
    return f"scene:{record.pair}" if record.pair else f"file:{relative_name(record.path, root)}"


def split_records(records: Sequence[BenchmarkImage], root: Path, seed: int, fraction: float = SPLIT_FRACTION
                  ) -> tuple[list[BenchmarkImage], list[BenchmarkImage]]:
    """(validation, test) of ``records`` by the rule (module docstring)."""
    if not 0.0 < fraction < 1.0:
        raise ClipeditError(f"the validation fraction must lie strictly between 0 and 1, got {fraction}")
    keyed = sorted(((split_unit(r, root), relative_name(r.path, root)), r) for r in records)
    val = [r for (unit, _), r in keyed if hash_fraction(seed, unit) < fraction]
    test = [r for (unit, _), r in keyed if hash_fraction(seed, unit) >= fraction]
    return val, test


def read_labelled(dataset: str, classes: Optional[Sequence[str]] = None
                  ) -> tuple[str, Path, list[BenchmarkImage], list[str], int]:
    """(layout, root, decodable records, class names, skipped) of ``KIND:PATH`` or an ImageFolder ``DIR``."""
    if looks_like_spec(dataset):
        bench = read_benchmark(dataset)
        loaded = load_benchmark_images(bench, classes, progress=False)
        return bench.layout, bench.root, list(loaded.records), list(loaded.classnames), loaded.n_skipped
    folder = load_image_folder(dataset)
    names = list(classes) if classes is not None else list(folder.classnames)
    if len(names) != len(folder.classnames):
        raise ClipeditError(f"{len(names)} class names given for the {len(folder.classnames)} class folders of "
                            f"{dataset}")
    records = [BenchmarkImage(p, names[label], None, "clean") for p, label in zip(folder.paths, folder.labels)]
    return FOLDER, Path(dataset), records, names, 0


def split_data(dataset: str, seed: int = 0, classes: Optional[Sequence[str]] = None,
               fraction: float = SPLIT_FRACTION, min_per_side: int = MIN_PER_SIDE) -> DataSplit:
    """Read ``dataset`` (``KIND:PATH`` as ``audit --dataset`` reads it, or an ImageFolder ``DIR``) and split it.

    Raises:
        ClipeditError: an unreadable set, or fewer than ``min_per_side`` images on either side.
    """
    layout, root, records, names, skipped = read_labelled(dataset, classes)
    val, test = split_records(records, root, seed, fraction)
    if min(len(val), len(test)) < min_per_side:
        raise ClipeditError(f"{dataset} is too small to split into validation and test: {len(val)} and "
                            f"{len(test)} of its {len(records)} images with split seed {seed} (need at least "
                            f"{min_per_side} a side)")
    return DataSplit(dataset, layout, root, seed, fraction, val, test, names, skipped)
