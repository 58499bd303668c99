"""``clipedit attack``: write typographic attacks (attacked, blank-note and mask images) for photos."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Optional

import click
import numpy as np
from PIL import Image

from clipedit.attacks import Attack, LabelStyle, render_attack
from clipedit.attacks.scripts import writing
from clipedit.commands.options import check_out_dir, out_dir_option, script_option, seed_option
from clipedit.commands.params import FONT_FILE, TEXT, count, finite
from clipedit.data.images import load_image
from clipedit.errors import ClipeditError
from clipedit.io import atomic_output_set, save_image
from clipedit.outputs import OutputSet, check_outputs

log = logging.getLogger(__name__)


MAX_FILE_WORD = 64  # characters of a word kept in file names (a file name has at most 255 bytes)


def file_word(word: str) -> str:
    """``word`` made safe for a file name (runs of other characters become ``-``); a long word is cut
    to ``MAX_FILE_WORD`` characters and given a digest of the whole word."""
    slug = re.sub(r"[^\w]+", "-", word.strip(), flags=re.UNICODE).strip("-") or "text"
    return slug if len(slug) <= MAX_FILE_WORD else f"{slug[:MAX_FILE_WORD]}-{_word_digest(word)}"


def file_words(words: list[str]) -> list[str]:
    """A distinct file-name form of every word: words that would share one (``ipod!``/``ipod?``,
    ``a/b``/``a-b``) each get a digest of the word appended."""
    slugs = [file_word(w) for w in words]
    return [s if slugs.count(s) == 1 else f"{s}-{_word_digest(w)}" for s, w in zip(slugs, words)]


def _word_digest(word: str) -> str:
    return hashlib.sha1(word.encode()).hexdigest()[:8]


def render_all(photos: list[Path], words: list[str], n: int, style: LabelStyle,
               seed: int) -> list[tuple[str, Attack]]:
    """(file stem, attack) for every photo x word x k < n.

    Render k of (photo i, word j) is seeded by (seed, i, j, k).
    """
    out = []
    names = file_words(words)
    for i, path in enumerate(photos):
        image = load_image(path)
        for j, word in enumerate(words):
            for k in range(n):
                render_seed = int(np.random.default_rng([seed, i, j, k]).integers(2**31 - 1))
                stem = f"{path.stem}_{names[j]}" + (f"_{k}" if n > 1 else "")
                out.append((stem, render_attack(image, word, style, seed=render_seed)))
    stems = [stem for stem, _ in out]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ClipeditError(f"two renders would share the file name {clash[0]!r}; rename a photo or change a word")
    return out


def save_attack(out: Path, stem: str, attack: Attack) -> list[Path]:
    """Write ``<stem>_attacked.png``, ``_blank.png`` and ``_mask.png`` (label pixels white)."""
    mask = Image.fromarray(attack.mask.astype(np.uint8) * 255)
    return [save_image(out / f"{stem}_{part}.png", image)
            for part, image in (("attacked", attack.attacked), ("blank", attack.blank), ("mask", mask))]


@click.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--text", "texts", type=TEXT, multiple=True, required=True, metavar="WORD",
              help="Word to write (repeat for several).")
@click.option("--n", type=count(max=10_000), default=1, show_default=True,
              help="Renders per photo and word (random placement each).")
@out_dir_option(help="Directory for <stem>_<word>[_<k>]_{attacked,blank,mask}.png.")
@click.option("--kind", type=click.Choice(["note", "sticker", "text"]), default="note", show_default=True,
              help="A paper note, a sticker, or bare text.")
@click.option("--font", type=FONT_FILE, default=None,
              help="TTF/OTF font file (default DejaVu Sans).")
@click.option("--font-size", type=finite(min=0, min_open=True), default=0.12, show_default=True,
              help="Below 1: fraction of the image's shorter side; else pixels.")
@script_option()
@click.option("--position", type=click.Choice(["random", "center"]), default="random", show_default=True)
@click.option("--rotation", type=finite(), default=0.0, show_default=True, help="Degrees, counter-clockwise.")
@click.option("--perspective", type=finite(), default=0.0, show_default=True, help="Perspective warp 0..0.9.")
@seed_option()
def attack(photos: tuple[Path, ...], texts: tuple[str, ...], n: int, out: Path, kind: str,
           font: Optional[Path], font_size: float, script: Optional[str], position: str, rotation: float,
           perspective: float, seed: int) -> None:
    """Write words onto PHOTOS as typographic attacks.

    Every render is saved as the attacked photo, the same photo with a blank label, and
    the label's mask. Nothing is written unless every render succeeds.
    """
    words, font_path = writing(list(dict.fromkeys(texts)), script, str(font) if font else None)
    style = LabelStyle(kind=kind, font=font_path, font_size=font_size,
                       position=position, rotation=rotation, perspective=perspective)
    stems = [p.stem for p in photos]
    clash = sorted({s for s in stems if stems.count(s) > 1})
    if clash:
        raise ClipeditError(f"photos share the file name {clash[0]!r}; their outputs would overwrite each other")
    check_out_dir(out)
    check_outputs({"--out": OutputSet(out)}, inputs={"PHOTOS": photos, "--font": font})
    renders = render_all(list(photos), list(dict.fromkeys(words)), n, style, seed)
    with atomic_output_set(out) as stage:  # every render's three images, or nothing
        written = [path.name for stem, result in renders for path in save_attack(stage, stem, result)]
    for name in written:
        click.echo(str(out / name))
    log.info("wrote %d renders to %s", len(renders), out)
