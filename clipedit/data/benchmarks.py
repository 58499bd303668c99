"""Published typographic-attack benchmarks read into one record type (``clipedit audit --dataset KIND:PATH``).

Every layout becomes a list of :class:`BenchmarkImage` (an image file, its true class, the word written
on it, its kind and the scene it belongs to). Layouts, as their own loaders and cards describe them:

``rta100`` (Azuma & Matsui 2023, `azuma164/Defense-Prefix`, ``rta100.zip``)
    1000 photos named ``label=<class>_text=<word>.<ext>``; read from anywhere below PATH (the
    Defense-Prefix loader reads ``ours/data``). Attacked photos only.
``paint`` (Ilharco et al. 2022, `mlfoundations/patching`, ``typographic_attack_data.zip``)
    The same file naming (``label=dog_text=cat.png``); PATH/``typographic_attacks`` when it exists
    (the folder Defense-Prefix reads), else PATH. *Unconfirmed*: whether the zip holds other folders
    (e.g. photos without text); an image not named this way stops the read with its name.
``disentangling`` (Materzyńska et al. 2022, `joaanna/disentangling_spelling_in_clip`)
    180 photos of 20 objects and ``annotations.json`` (``annotation.json`` in the card's text):
    ``{"IMG_2934.JPG": {"true object": "cup", "typographic attack label": "good"}}``, read from PATH
    or PATH/``typographic_attack_dataset``; images next to it or in ``images/``. An empty attack
    label is read as a clean photo (*unconfirmed* beyond a commented loader in the SCAM code).
``scam`` (Westerhoff et al. 2025, Hugging Face ``BLISS-e-V/SCAM``, ``images.zip``, an imagefolder)
    A ``metadata.csv`` (PATH itself, or found below PATH) with columns ``file_name``, ``type``
    (``SCAM`` / ``SynthSCAM`` / ``NoSCAM``), ``object_label``, ``attack_word`` (and ``id``,
    ``postit_area_pct``); images relative to the CSV. SCAM rows are ``attacked``, SynthSCAM rows
    ``synthetic``, NoSCAM rows ``clean`` (the card: "original images with attacks removed").
    Scenes are paired by the ``id`` without its type prefix (``SCAM_img_0001`` and
    ``NoSCAM_img_0001``); *unconfirmed* that equal numbers are the same scene, and the CSV's exact
    name inside the zip was not seen (the loader uses ``datasets.load_dataset``).
``triples`` (the paper's own photos)
    ``<scene>_clean.jpg``, ``<scene>_white.jpg`` (or ``_blank``) and ``<scene>_<word>.jpg`` for each
    written word. The class is the folder under PATH holding the file (``PATH/<class>/<scene>_…``),
    else the scene name (``PATH/mug_ipod.jpg``: class mug, word ipod).
``manifest`` (clipedit's generic layout; any dataset converts to it, :func:`write_manifest`)
    A CSV file with columns ``image`` (path, relative to the CSV), ``class`` (true class), ``word``
    (the written word, empty for clean and blank photos), and optionally ``pair`` (scene id) and
    ``kind`` (``clean`` / ``blank`` / ``attacked`` / ``synthetic``; default ``attacked`` when a word
    is given, else ``clean``).

The default class list is every true class and every written word (as the Defense-Prefix and
dyslexify loaders of RTA-100, PAINT and Disentangling build it). An image that fails to decode is
skipped, counted and named in the results (:func:`load_benchmark_images`): one bad photo in a
thousand should not cost a run; a set where every image fails stops with an error.
"""
from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image

from clipedit.data.classnames import normalize_name
from clipedit.data.folders import image_paths
from clipedit.data.images import LazyImages, load_image
from clipedit.errors import ClipeditError
from clipedit.inputs import read_input_json
from clipedit.io import require_file

log = logging.getLogger(__name__)

KINDS = ("clean", "blank", "attacked", "synthetic")
MANIFEST_COLUMNS = ("image", "class", "word", "pair", "kind")
MANIFEST_REQUIRED = ("image", "class", "word")
SCAM_TYPES = {"scam": "attacked", "synthscam": "synthetic", "noscam": "clean"}
SCAM_COLUMNS = ("file_name", "type", "object_label", "attack_word")
BLANK_SUFFIXES = frozenset({"white", "blank"})
UNCONFINED = frozenset({"manifest"})  # clipedit's own index: it may point at a dataset stored elsewhere
MAX_LISTED = 20  # skipped or refused files named in the results (the rest are counted)


@dataclass(frozen=True)
class BenchmarkImage:
    """One image of a benchmark.

    Attributes:
        path: the image file.
        true_class: what the photo shows.
        word: the word written on it (None for clean and blank photos).
        kind: ``clean``, ``blank`` (empty note), ``attacked`` (real writing) or ``synthetic`` (rendered).
        pair: the scene it shows, shared by that scene's clean/blank/attacked versions (None: unknown).
    """

    path: Path
    true_class: str
    word: Optional[str] = None
    kind: str = "attacked"
    pair: Optional[str] = None


@dataclass
class Benchmark:
    """A benchmark read from disk: its records and where they came from."""

    layout: str
    root: Path
    records: list[BenchmarkImage]
    outside: list[str] = field(default_factory=list)  # listed files outside the dataset folder (refused)

    @property
    def name(self) -> str:
        """``KIND:PATH``, as given on the command line."""
        return f"{self.layout}:{self.root}"

    def classnames(self) -> list[str]:
        """Every true class and written word, sorted, each once (matched case-insensitively)."""
        names: dict[str, str] = {}
        for r in self.records:
            for name in (r.true_class, r.word):
                if name and normalize_name(name) not in names:
                    names[normalize_name(name)] = name
        return [names[k] for k in sorted(names)]


@dataclass
class LoadedBenchmark:
    """A benchmark's decodable images, ready to evaluate (see :func:`load_benchmark_images`).

    Attributes:
        images: the images, read when indexed.
        records: the record of each image.
        classnames: the class list predictions are made over.
        dataset: a name for the results record (``KIND:PATH``).
        skipped: files that failed to decode, with the reason.
    """

    images: Sequence[Image.Image]
    records: list[BenchmarkImage]
    classnames: list[str]
    dataset: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # the first MAX_LISTED of them
    n_skipped: int = 0  # all of them


# --- one reader per layout ---

def read_label_text_names(root: Path) -> list[BenchmarkImage]:
    """Images named ``label=<class>_text=<word>.<ext>`` below ``root`` (RTA-100 and PAINT)."""
    records = []
    for path in image_paths(root, "dataset folder"):
        parts = path.stem.split("_")
        if len(parts) < 2 or not parts[0].startswith("label=") or not parts[1].startswith("text="):
            raise ClipeditError(f"{path.name} is not named label=<class>_text=<word> (in {root})")
        label, word = parts[0][len("label="):], parts[1][len("text="):]
        if not label:
            raise ClipeditError(f"{path.name} has an empty label")
        records.append(BenchmarkImage(path, label, word or None, "attacked" if word else "clean"))
    return records


def read_rta100(root: Path) -> list[BenchmarkImage]:
    """RTA-100: ``label=<class>_text=<word>.png`` files anywhere below ``root``."""
    return read_label_text_names(root)


def read_paint(root: Path) -> list[BenchmarkImage]:
    """PAINT's real typographic attacks: ``root/typographic_attacks`` (or ``root``), named as RTA-100."""
    sub = root / "typographic_attacks"
    return read_label_text_names(sub if sub.is_dir() else root)


def read_disentangling(root: Path) -> list[BenchmarkImage]:
    """Materzyńska et al.'s set: ``annotations.json`` mapping file -> true object and attack label."""
    candidates = [root] if root.is_file() else [
        d / name for d in (root, root / "typographic_attack_dataset")
        for name in ("annotations.json", "annotation.json")]
    ann_path = next((p for p in candidates if p.is_file()), None)
    if ann_path is None:
        raise ClipeditError(f"no annotations.json in {root} (expected the Disentangling set's annotations)")
    annotations = _read_json(ann_path)
    if not isinstance(annotations, dict) or not annotations:
        raise ClipeditError(f"{ann_path} holds no annotations (expected {{file: {{'true object': …}}}})")
    folder = ann_path.parent / "images" if (ann_path.parent / "images").is_dir() else ann_path.parent
    records = []
    for name, entry in annotations.items():
        if not isinstance(entry, dict) or not entry.get("true object"):
            raise ClipeditError(f"{ann_path}: entry {name!r} lacks 'true object'")
        word = str(entry.get("typographic attack label") or "").strip() or None
        records.append(BenchmarkImage(folder / name, str(entry["true object"]), word,
                                      "attacked" if word else "clean"))
    return records


def _read_json(path: Path):
    """A JSON file of bounded size and nesting; a too deep file or a number too long for Python is one line."""
    return read_input_json(path, "annotations")


def read_scam(root: Path) -> list[BenchmarkImage]:
    """SCAM: ``metadata.csv`` (columns file_name, type, object_label, attack_word), images beside it."""
    csv_path = root if root.is_file() else root / "metadata.csv"
    if not csv_path.is_file():
        found = sorted(root.rglob("metadata.csv")) if root.is_dir() else []
        if not found:
            raise ClipeditError(f"no metadata.csv in {root} (expected SCAM's images.zip, extracted)")
        csv_path = found[0]
    records = []
    for line, row in enumerate(_read_csv(csv_path, SCAM_COLUMNS), start=2):
        if not row["object_label"].strip() or not row["file_name"].strip():
            raise ClipeditError(f"{csv_path} line {line}: empty object_label or file_name")
        kind = SCAM_TYPES.get(row["type"].strip().lower())
        if kind is None:
            raise ClipeditError(f"{csv_path}: unknown type {row['type']!r} (expected SCAM, SynthSCAM or NoSCAM)")
        scene = row.get("id") or Path(row["file_name"]).stem
        pair = scene.split("_", 1)[1] if "_" in scene else scene
        word = row["attack_word"].strip() if kind != "clean" else None
        records.append(BenchmarkImage(csv_path.parent / row["file_name"], row["object_label"].strip(),
                                      word or None, kind, pair))
    return records


def read_triples(root: Path) -> list[BenchmarkImage]:
    """``<scene>_clean``, ``<scene>_white`` / ``_blank`` and ``<scene>_<word>`` images below ``root``."""
    records = []
    for path in image_paths(root, "dataset folder"):
        if path.stem.startswith("label=") and "_text=" in path.stem:
            raise ClipeditError(f"{path.name} is named as RTA-100/PAINT photos are (label=…_text=…), not as "
                                "triples: use --dataset rta100:PATH")
        scene, sep, suffix = path.stem.rpartition("_")
        if not sep or not scene or not suffix:
            raise ClipeditError(f"{path.name} is not named <scene>_clean, <scene>_white or <scene>_<word>")
        rel = path.parent.relative_to(root)
        true_class = rel.parts[0] if rel.parts else scene
        pair = str(rel / scene)
        if suffix.lower() == "clean":
            records.append(BenchmarkImage(path, true_class, None, "clean", pair))
        elif suffix.lower() in BLANK_SUFFIXES:
            records.append(BenchmarkImage(path, true_class, None, "blank", pair))
        else:
            records.append(BenchmarkImage(path, true_class, suffix.replace("-", " "), "attacked", pair))
    return records


def read_manifest(path: Path) -> list[BenchmarkImage]:
    """clipedit's CSV manifest: image, class, word [, pair, kind]; paths relative to the CSV."""
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise ClipeditError(f"manifest not found: {path}")
    records = []
    for i, row in enumerate(_read_csv(path, MANIFEST_REQUIRED), start=2):
        word = (row.get("word") or "").strip() or None
        kind = (row.get("kind") or "").strip().lower() or ("attacked" if word else "clean")
        if kind not in KINDS:
            raise ClipeditError(f"{path} line {i}: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
        if kind in ("attacked", "synthetic") and word is None:
            raise ClipeditError(f"{path} line {i}: an {kind} image needs its word")
        if not (row.get("class") or "").strip() or not (row.get("image") or "").strip():
            raise ClipeditError(f"{path} line {i}: empty image or class")
        records.append(BenchmarkImage(path.parent / row["image"].strip(), row["class"].strip(),
                                      word if kind in ("attacked", "synthetic") else None, kind,
                                      (row.get("pair") or "").strip() or None))
    return records


LAYOUTS: dict[str, Callable[[Path], list[BenchmarkImage]]] = {
    "rta100": read_rta100,
    "paint": read_paint,
    "disentangling": read_disentangling,
    "scam": read_scam,
    "triples": read_triples,
    "manifest": read_manifest,
}


# --- specs, loading, conversion ---

def split_spec(spec: str) -> tuple[str, Path]:
    """``KIND:PATH`` -> (kind, path); raises on a missing colon, an unknown KIND or an empty PATH."""
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not path:
        raise ClipeditError(f"expected KIND:PATH for the dataset, got {spec!r} (KIND: {', '.join(LAYOUTS)})")
    if kind not in LAYOUTS:
        raise ClipeditError(f"unknown dataset kind {kind!r} (choose from {', '.join(LAYOUTS)})")
    return kind, Path(path)


def looks_like_spec(text: str) -> bool:
    """Whether ``text`` reads as ``KIND:PATH`` rather than a directory (for options taking either)."""
    kind, sep, rest = text.partition(":")
    return bool(sep) and bool(rest) and kind.replace("-", "").replace("_", "").isalnum() and not Path(text).exists()


def data_path(spec: Optional[str]) -> Optional[Path]:
    """The path of a ``--data``/``--dataset`` value (``KIND:PATH`` or a folder); None stays None."""
    if spec is None:
        return None
    return split_spec(spec)[1] if looks_like_spec(spec) and spec.partition(":")[0].lower() in LAYOUTS else Path(spec)


def read_benchmark(spec: str) -> Benchmark:
    """The records of ``KIND:PATH``.

    Raises:
        ClipeditError: unknown KIND, missing PATH, a file not in the layout, or no images at all.
    """
    kind, root = split_spec(spec)
    if not root.exists():
        raise ClipeditError(f"dataset path not found: {root}")
    records, outside = LAYOUTS[kind](root), []
    if kind not in UNCONFINED:  # a published set's own listing names files inside it, nothing else
        records, outside = confine(records, root)
    if outside:
        log.warning("%s: refused %d listed file(s) outside the dataset folder (first: %s)", spec, len(outside),
                    outside[0])
    if not records:
        raise ClipeditError(f"no images in {spec}" + (f" inside its folder ({len(outside)} listed outside it, "
                                                       f"first: {outside[0]})" if outside else ""))
    log.info("%s: %d images (%s)", spec, len(records), ", ".join(
        f"{sum(r.kind == k for r in records)} {k}" for k in KINDS if any(r.kind == k for r in records)))
    return Benchmark(kind, root, records, outside)


def confine(records: list[BenchmarkImage], root: Path) -> tuple[list[BenchmarkImage], list[str]]:
    """(records whose file lies inside the dataset folder, the files of the others): an annotation or
    CSV row naming ``/etc/shadow`` or ``../../x`` is never opened. The folder is ``root`` (its parent
    when ``root`` is the CSV or JSON file); ``..`` and symbolic links are resolved first."""
    folder = Path(os.path.realpath(root if root.is_dir() else root.parent))
    inside, outside = [], []
    for r in records:
        resolved = Path(os.path.realpath(r.path))
        (inside if resolved == folder or folder in resolved.parents else outside).append(r)
    return inside, [str(r.path) for r in outside]


def load_benchmark_images(benchmark: Benchmark, classnames: Optional[Sequence[str]] = None,
                          progress: bool = True) -> LoadedBenchmark:
    """Check that every image decodes; skip (and count) those that do not.

    Args:
        benchmark: the records.
        classnames: the class list (default: :meth:`Benchmark.classnames`); every true class must be in it.
        progress: show a progress bar (on terminals only).

    Raises:
        ClipeditError: a true class missing from ``classnames``, or no image decodes.
    """
    from tqdm import tqdm

    from clipedit.data.classnames import labels_from_names

    names = list(classnames) if classnames is not None else benchmark.classnames()
    labels_from_names([r.true_class for r in benchmark.records], names)  # raises on a class not in the list
    kept: list[BenchmarkImage] = []
    skipped = [(p, "outside the dataset folder: not read") for p in benchmark.outside[:MAX_LISTED]]
    n_skipped = len(benchmark.outside)
    first_reason = skipped[0][1] if skipped else None
    for record in tqdm(benchmark.records, desc="checking images", unit="image", leave=False,
                       disable=None if progress else True):
        try:
            if not record.path.is_file():
                raise ClipeditError(f"image not found: {record.path}" if not record.path.exists() else
                                    f"not a regular file: {record.path}")
            load_image(record.path).close()
            kept.append(record)
        except ClipeditError as e:
            n_skipped += 1
            first_reason = first_reason or str(e)
            if len(skipped) < MAX_LISTED:
                skipped.append((str(record.path), str(e)))
    if n_skipped:
        log.warning("skipped %d of %d images that do not decode or lie outside the dataset (first: %s)", n_skipped,
                    len(benchmark.records) + len(benchmark.outside), first_reason)
    if not kept:
        raise ClipeditError(f"no image of {benchmark.name} could be read ({first_reason})")
    return LoadedBenchmark(LazyImages([r.path for r in kept]), kept, names, benchmark.name, skipped, n_skipped)


def write_manifest(path: str | os.PathLike, records: Sequence[BenchmarkImage]) -> Path:
    """Write ``records`` as clipedit's CSV manifest (image paths relative to the CSV where possible)."""
    from clipedit.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for r in records:
            image = os.path.relpath(r.path.absolute(), path.absolute().parent)
            writer.writerow({"image": image, "class": r.true_class, "word": r.word or "",
                             "pair": r.pair or "", "kind": r.kind})
    return path


def _read_csv(path: Path, required: Sequence[str]) -> Iterator[dict[str, str]]:
    """Rows of a CSV file with a header, one at a time (a million-row file is never held whole);
    raises naming the required columns it lacks (a FIFO or a device is refused before it is opened)."""
    require_file(path, "CSV file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in required if c not in columns]
            if missing:
                raise ClipeditError(f"{path} lacks column(s): {', '.join(missing)} "
                                    f"(has: {', '.join(columns) or 'none'})")
            for row in reader:
                yield {(k or "").strip(): (v if isinstance(v, str) else "") for k, v in row.items()}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ClipeditError(f"cannot read {path}: {e}") from None
