"""Tests for the typographic attack generator (attacks/)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import skimage.data
from conftest import run_cli, run_error
from PIL import Image

from clipedit.attacks import (
    Attack,
    AttackError,
    LabelStyle,
    StyleSampler,
    default_font_path,
    render_attack,
    render_batch,
)
from clipedit.errors import ClipeditError


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(skimage.data.coffee()).resize((160, 120))


@pytest.fixture(scope="module")
def tiny() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea()).resize((64, 64))


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (arr(a) != arr(b)).any(axis=2)


def assert_exact_masks(attack: Attack) -> None:
    """The documented pixel-exact relations between images and masks."""
    h, w = attack.mask.shape
    assert attack.attacked.size == attack.blank.size == attack.clean.size == (w, h)
    assert attack.mask.dtype == bool and attack.text_mask.dtype == bool
    assert attack.text_mask.any()
    assert not (changed(attack.attacked, attack.blank) & ~attack.text_mask).any()
    assert not (changed(attack.blank, attack.clean) & ~attack.mask).any()
    assert not (attack.text_mask & ~attack.mask).any()
    x0, y0, x1, y1 = attack.box
    inside = np.zeros_like(attack.mask)
    inside[y0:y1, x0:x1] = True
    assert not (attack.mask & ~inside).any()
    # the box is tight: each of its edges touches the mask
    assert attack.mask[y0].any() and attack.mask[y1 - 1].any()
    assert attack.mask[:, x0].any() and attack.mask[:, x1 - 1].any()
    # the glyphs visibly change the image
    assert changed(attack.attacked, attack.blank).sum() > 0.5 * attack.text_mask.sum()


@pytest.mark.parametrize("kind", ["note", "sticker", "text"])
@pytest.mark.parametrize("rotation, perspective", [(0.0, 0.0), (17.0, 0.25)])
def test_masks_are_exact(coffee, kind, rotation, perspective):
    style = LabelStyle(kind=kind, rotation=rotation, perspective=perspective, opacity=0.9)
    attack = render_attack(coffee, "iPod", style, seed=3)
    assert_exact_masks(attack)
    assert np.array_equal(arr(attack.clean), arr(coffee))
    if kind == "text":
        assert np.array_equal(arr(attack.blank), arr(attack.clean))
        assert np.array_equal(attack.mask, attack.text_mask)
    else:
        # the note covers more than the glyphs, and the glyphs sit on it
        assert attack.note_mask.sum() > 2 * attack.text_mask.sum()
        assert not (attack.text_mask & ~attack.note_mask).any()
        note_pixels = arr(attack.blank)[attack.note_mask & ~attack.text_mask]
        interior = np.abs(note_pixels - np.array(style.note_color)).max(axis=1) <= 1
        assert interior.mean() > 0.5


def test_same_seed_is_byte_identical_and_other_seed_differs(coffee):
    style = LabelStyle(rotation=10, perspective=0.2)
    a = render_attack(coffee, "apple", style, seed=7)
    b = render_attack(coffee, "apple", style, seed=7)
    c = render_attack(coffee, "apple", style, seed=8)
    assert a.attacked.tobytes() == b.attacked.tobytes()
    assert a.blank.tobytes() == b.blank.tobytes()
    assert np.array_equal(a.mask, b.mask) and a.box == b.box
    assert a.attacked.tobytes() != c.attacked.tobytes()


def test_numpy_and_pil_inputs_agree(coffee):
    from_pil = render_attack(coffee, "cat", seed=1)
    from_array = render_attack(np.asarray(coffee), "cat", seed=1)
    assert from_pil.attacked.tobytes() == from_array.attacked.tobytes()
    gray = render_attack(coffee.convert("L"), "cat", seed=1)
    assert gray.attacked.mode == "RGB" and gray.attacked.size == coffee.size


def test_batch_render_k_does_not_depend_on_n(coffee, tiny):
    short = render_batch([coffee, tiny], "iPod", 3, seed=5)
    long = render_batch([coffee, tiny], "iPod", 6, seed=5)
    assert len(short) == 3 and len(long) == 6
    for a, b in zip(short, long):
        assert a.style == b.style and a.seed == b.seed
        assert a.attacked.tobytes() == b.attacked.tobytes()
    assert [a.clean.size for a in long] == [coffee.size, tiny.size] * 3
    assert len({a.style for a in long}) == 6
    # each render is reproducible from its recorded style and seed
    again = render_attack(coffee, "iPod", long[2].style, seed=long[2].seed)
    assert again.attacked.tobytes() == long[2].attacked.tobytes()
    assert render_batch(coffee, "iPod", 2, seed=6)[0].attacked.tobytes() != short[0].attacked.tobytes()


def test_text_that_cannot_fit_raises_one_line(tiny):
    with pytest.raises(AttackError) as err:
        render_attack(tiny, "extraordinarily", LabelStyle(font_size=30), seed=0)
    message = str(err.value)
    assert "does not fit in a 64x64 image" in message and "(30px)" in message
    assert "\n" not in message
    assert isinstance(err.value, ValueError) and not isinstance(err.value, ClipeditError)


def test_shrink_to_fit_and_reduced_padding(tiny):
    shrunk = render_attack(tiny, "extraordinarily", LabelStyle(font_size=30, shrink_to_fit=True), seed=0)
    assert shrunk.font_px < 30
    assert_exact_masks(shrunk)
    # a word that fits only without the note margin still renders at the requested size
    snug = render_attack(tiny, "television", LabelStyle(font_size=10, padding=2.0, rotation=30), seed=0)
    assert snug.font_px == 10
    assert_exact_masks(snug)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_raises(coffee, text):
    with pytest.raises(AttackError, match="empty"):
        render_attack(coffee, text)


def test_unreadable_font_raises_naming_path(coffee, tmp_path):
    missing = str(tmp_path / "nope.ttf")
    with pytest.raises(AttackError, match="nope.ttf"):
        render_attack(coffee, "iPod", LabelStyle(font=missing))
    garbage = tmp_path / "garbage.ttf"
    garbage.write_bytes(b"not a font")
    with pytest.raises(AttackError, match="garbage.ttf"):
        render_attack(coffee, "iPod", LabelStyle(font=str(garbage)))


@pytest.mark.parametrize(
    "options",
    [dict(opacity=1.5), dict(opacity=0.0), dict(opacity=float("nan")), dict(kind="poster"),
     dict(position="left"), dict(text_color=(0, 0, 300)), dict(font_size=-1)],
)
def test_bad_style_raises(options):
    with pytest.raises(AttackError):
        LabelStyle(**options)


def test_bad_image_raises():
    with pytest.raises(AttackError):
        render_attack(np.zeros((32, 32, 3), np.float32), "iPod")


def test_heldout_and_exemplar_share_no_font_size_or_colour():
    ex, ho = StyleSampler.exemplar(), StyleSampler.heldout()
    assert len(ex.fonts) >= 3 and len(ho.fonts) >= 3
    assert all(os.path.isfile(f) for f in ex.fonts + ho.fonts)
    assert not {os.path.basename(f) for f in ex.fonts} & {os.path.basename(f) for f in ho.fonts}
    assert not set(ex.text_colors) & set(ho.text_colors)
    assert not set(ex.note_colors) & set(ho.note_colors)
    assert ex.font_size[1] < ho.font_size[0] or ho.font_size[1] < ex.font_size[0]
    rng_ex, rng_ho = np.random.default_rng(0), np.random.default_rng(0)
    for _ in range(30):
        s, t = ex.sample(rng_ex), ho.sample(rng_ho)
        assert s.font in ex.fonts and t.font in ho.fonts
        assert s.text_color in ex.text_colors and t.note_color in ho.note_colors
        assert ex.font_size[0] <= s.font_size <= ex.font_size[1]


def test_heldout_fonts_render(coffee):
    for font in StyleSampler.heldout().fonts:
        assert_exact_masks(render_attack(coffee, "iPod", LabelStyle(font=font), seed=0))


def test_text_mask_grows_with_font_size(coffee):
    sizes = [10, 16, 24]
    counts = [render_attack(coffee, "iPod", LabelStyle(font_size=s), seed=0).text_mask.sum() for s in sizes]
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] > 2 * counts[0]


def test_positions(coffee):
    w, h = coffee.size
    center = render_attack(coffee, "cat", LabelStyle(position="center"), seed=0)
    x0, y0, x1, y1 = center.box
    assert abs((x0 + x1) / 2 - w / 2) <= 4 and abs((y0 + y1) / 2 - h / 2) <= 4
    corner = render_attack(coffee, "cat", LabelStyle(position=(0.0, 0.0)), seed=0)
    assert corner.box[0] <= 1 and corner.box[1] <= 1
    box = (90, 60, 155, 115)
    for seed in range(5):
        obj = render_attack(coffee, "cat", LabelStyle(position="object", shadow=0.0), seed=seed, object_box=box)
        assert box[0] <= obj.box[0] and box[1] <= obj.box[1] and obj.box[2] <= box[2] and obj.box[3] <= box[3]
    no_box = render_attack(coffee, "cat", LabelStyle(position="object"), seed=0)
    assert no_box.box == center.box


def test_lower_opacity_is_fainter(coffee):
    strong = render_attack(coffee, "iPod", LabelStyle(opacity=1.0), seed=0)
    faint = render_attack(coffee, "iPod", LabelStyle(opacity=0.4), seed=0)
    diff = lambda a: np.abs(arr(a.attacked) - arr(a.blank)).sum()  # noqa: E731
    assert diff(faint) < 0.6 * diff(strong)


def test_large_photo(coffee):
    big = Image.fromarray(skimage.data.astronaut())  # 512x512
    attack = render_attack(big, "television", LabelStyle(rotation=-12, perspective=0.2), seed=2)
    assert_exact_masks(attack)
    assert 20 <= attack.font_px <= 80


def test_tiny_images(tiny):
    sampler = StyleSampler.exemplar()
    attacks = render_batch(tiny, "iPod", 20, seed=0, sampler=sampler)
    for attack in attacks:
        assert_exact_masks(attack)


def test_default_font_is_matplotlibs_dejavu():
    path = default_font_path()
    assert os.path.isfile(path) and os.path.basename(path) == "DejaVuSans.ttf"
    assert "mpl-data" in path


def test_a_very_long_attack_word_gets_a_short_file_name(tmp_path, capsys):
    word = "ipod" * 75  # 300 characters: more than a file name may hold
    photo = tmp_path / "cat.png"
    Image.new("RGB", (3000, 120), "white").save(photo)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["attack", photo, "--text", word, "--font-size", "12", "--position", "center",
                                 "--out", out], capsys)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and all(len(n.encode()) < 120 for n in names)
    assert all(n.startswith("cat_ipodipod") for n in names)


@pytest.mark.parametrize("words", [("ipod!", "ipod?"), ("a/b", "a-b")])
def test_words_with_the_same_file_name_do_not_overwrite_each_other(tmp_path, capsys, photo_files, words):
    out = tmp_path / "out"
    args = ["attack", photo_files["cat"], "--out", out, "--font-size", "0.2"]
    for w in words:
        args += ["--text", w]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert len(list(out.iterdir())) == 6 == len(set(stdout.split()))


def test_characters_the_font_lacks_are_refused(tmp_path, capsys, photo_files):
    from clipedit.attacks import AttackError, render_attack

    with pytest.raises(AttackError, match="U[+]1F4F1"):
        render_attack(Image.new("RGB", (96, 96), "white"), "ipod\N{MOBILE PHONE}", seed=0)
    out = tmp_path / "out"
    line = run_error(capsys, "attack", photo_files["cat"], "--text", "\N{MOBILE PHONE}", "--out", out)
    assert "no glyph for" in line and "--font" in line
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("--font", "/dev/zero"), "not a regular file"),
    (("--font-size", "1e9"), "font_size"),
])
def test_attack_font_messages(tmp_path, capsys, photo_files, args, message):
    line = run_error(capsys, "attack", photo_files["cat"], "--text", "ipod", "--out", tmp_path / "o", *args)
    assert message in line and "Pillow" not in line and "no such file" not in line
