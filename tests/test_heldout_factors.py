"""Leave-out factors (font catalogue split by family, size band, inks, papers, weight), figures by kind and
size band with Wilson intervals, and writing in scripts other than Latin (shaped with raqm)."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from conftest import run_error, run_ok
from PIL import Image, ImageFont, features

import clipedit.attacks.catalogue as catalogue
import clipedit.attacks.factors as factors
from clipedit.attacks import AttackError, LabelStyle, StyleSampler, render_attack
from clipedit.attacks.catalogue import LATIN, FontFace, covers, design_of, read_face, split_faces, split_of
from clipedit.attacks.fonts import default_font_path, mpl_font_dir
from clipedit.attacks.scripts import SCRIPTS, check_shaping, needs_shaping, script_of, transliterate
from clipedit.eval.strata import format_proportion, proportion, strata, wilson


def mpl_faces() -> tuple[FontFace, ...]:
    """The fonts every machine has (matplotlib's): the split logic is tested on these."""
    return catalogue.catalogue([str(mpl_font_dir())])


def test_split_of_is_a_hash_of_the_design_and_keeps_variants_together():
    bucket = int(hashlib.sha256(b"tex gyre termes").hexdigest(), 16) % 100
    expected = "exemplar" if bucket < 40 else "validation" if bucket < 70 else "test"
    assert split_of("TeX Gyre Termes") == expected == split_of("  tex  GYRE termes ")
    assert design_of("Roboto Condensed") == "roboto" and split_of("Roboto Condensed") == split_of("Roboto")
    assert split_of("Linux Libertine Display O") == split_of("Linux Libertine O")
    assert split_of("DejaVu Sans") == split_of("DejaVu Sans Mono") == "exemplar"
    names = [f"Family {i}" for i in range(300)]
    shares = {s: sum(split_of(n) == s for n in names) / len(names) for s in catalogue.SPLITS}
    assert 0.3 < shares["exemplar"] < 0.5 and 0.2 < shares["validation"] < 0.4 and 0.2 < shares["test"] < 0.4


def test_split_faces_on_the_fonts_this_machine_has():
    faces = mpl_faces()
    assert any(f.family == "DejaVu Sans" for f in faces) and all(read_face(f.path) == f for f in faces)
    by_split = {s: split_faces(s, faces) for s in catalogue.SPLITS}
    assert by_split["exemplar"], "DejaVu is always in the exemplar split"
    families = [{f.family for f in fs} for fs in by_split.values()]
    assert not (families[0] & families[1] or families[0] & families[2] or families[1] & families[2])
    for split, fs in by_split.items():
        assert all(split_of(f.family) == split and f.regular and covers(f.path, LATIN) for f in fs)
        assert len({f.family for f in fs}) == len(fs)  # one face per family
    # coverage filters: a regular face without Latin letters (STIX's big delimiters) is left out
    sym = [f for f in faces if f.family == "STIXSizeFourSym" and f.regular]
    assert sym and split_of(sym[0].family) == "test" and not covers(sym[0].path, LATIN)
    assert sym[0] not in by_split["test"]
    arabic = split_faces("exemplar", faces, chars="بت")  # DejaVu Sans writes Arabic, DejaVu Serif does not
    assert {f.family for f in arabic} == {"DejaVu Sans", "DejaVu Sans Mono"}
    with pytest.raises(AttackError, match="unknown font split"):
        split_faces("train", faces)


def test_split_fonts_fall_back_to_matplotlib_with_a_warning(monkeypatch, caplog):
    factors.split_fonts.cache_clear()
    monkeypatch.setattr(factors, "split_font_paths", lambda split, chars=LATIN: ())
    try:
        val, test = factors.split_fonts("validation"), factors.split_fonts("test")
    finally:
        factors.split_fonts.cache_clear()
    assert "no font of the validation split is installed" in caplog.text and "pip install" in caplog.text
    fam = lambda paths: {read_face(p).family for p in paths}  # noqa: E731
    assert fam(val) and fam(test) and not fam(val) & fam(test)
    assert not (fam(val) | fam(test)) & fam(StyleSampler.exemplar().fonts)


def test_reference_catalogue_comes_from_the_pip_packages(monkeypatch, caplog):
    """The declared pip font packages alone give both held-out splits, disjoint, without a warning;
    the Debian catalogue is used only when asked for."""
    monkeypatch.delenv(catalogue.CATALOGUE_ENV, raising=False)
    assert not catalogue.missing_pip_packages()
    assert catalogue.default_dirs() == catalogue.pip_font_dirs()
    faces = catalogue.catalogue()
    val, test = ({f.family for f in split_faces(s, faces)} for s in ("validation", "test"))
    assert val and test and not val & test
    assert all(f.path.startswith(catalogue.pip_font_dirs()) for f in faces)
    factors.split_fonts.cache_clear()
    try:
        assert factors.split_fonts("validation") and factors.split_fonts("test")
    finally:
        factors.split_fonts.cache_clear()
    assert "no font of" not in caplog.text
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, "debian")
    assert catalogue.default_dirs() == catalogue.pip_font_dirs() + catalogue.FONT_DIRS
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, "google")
    with pytest.raises(AttackError, match="CLIPEDIT_FONT_CATALOGUE"):
        catalogue.default_dirs()


def test_pip_font_packages_are_declared_dependencies():
    import tomllib
    from pathlib import Path

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].strip() for d in deps}
    assert set(catalogue.PIP_PACKAGES) <= names


@pytest.mark.parametrize("split", ["validation", "test"])
def test_split_styles_share_no_factor_with_the_exemplars(split):
    ex, ho = StyleSampler.exemplar(), factors.split_sampler(split)
    assert not {read_face(p).family for p in ho.fonts} & {read_face(p).family for p in ex.fonts}
    assert ho.font_size[0] > ex.font_size[1]                                  # size band
    assert not set(ho.text_colors) & set(ex.text_colors) and not set(ho.note_colors) & set(ex.note_colors)
    assert ex.bold_prob == 0 and ho.bold_prob > 0                             # weight: faux bold
    assert set(ho.kinds) == {"note", "sticker", "text"}
    other = factors.split_sampler("test" if split == "validation" else "validation")
    assert not {read_face(p).family for p in ho.fonts} & {read_face(p).family for p in other.fonts}
    with pytest.raises(AttackError, match="unknown held-out split"):
        factors.split_sampler("exemplar")


def test_heldout_world_sets_use_the_split_factors():
    from clipedit.eval.heldout import world_eval_sets
    from clipedit.mini.world import MiniWorld

    val = world_eval_sets(MiniWorld(), ["ipod"], 12, "validation")
    test = world_eval_sets(MiniWorld(), ["ipod"], 12, "test")
    fonts = lambda s: {a.style.font for a in s.edited[0]}  # noqa: E731
    assert fonts(val) <= set(factors.split_fonts("validation")) and fonts(test) <= set(factors.split_fonts("test"))
    assert all(0.19 <= a.style.font_size <= 0.24 for a in val.edited[0] + test.edited[0])


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) is None and proportion([])["acc"] is None
    assert format_proportion(proportion([True, False, True, True])) == "75.0% [30.1, 95.4] n=4"


def test_strata_separate_kinds_and_size_bands():
    photo = Image.new("RGB", (64, 64), (90, 120, 60))
    specs = [("note", 0.20), ("note", 0.23), ("sticker", 0.20), ("text", 0.22)]
    attacks = [render_attack(photo, "ipod", LabelStyle(kind=k, font_size=s, shrink_to_fit=True), seed=i)
               for i, (k, s) in enumerate(specs)]
    labels = [1, 1, 1, 1]
    classnames = ["ipod", "mug"]
    predictions = {"clean": [1, 1, 1, 1], "blank": [1, 0, 1, 1], "text": [0, 1, 0, 1]}
    out = strata(attacks, labels, predictions, classnames)
    head = out["notes + stickers"]
    assert head["text_acc"]["n"] == 3 and head["text_acc"]["acc"] == pytest.approx(1 / 3)
    assert head["attack_success_rate"]["acc"] == pytest.approx(2 / 3)
    assert head["blank_acc"]["acc"] == pytest.approx(2 / 3)
    assert out["bare text"]["text_acc"]["acc"] == 1.0 and out["bare text"]["text_acc"]["n"] == 1
    assert out["notes, size 0.19-0.215"]["text_acc"]["n"] == 1 and out["notes, size 0.215-0.24"]["text_acc"]["acc"] == 1
    assert "stickers, size 0.215-0.24" not in out


# -- scripts ------------------------------------------------------------------------------------------------

def test_transliteration_and_script_detection():
    for script, spec in SCRIPTS.items():
        assert len(spec["letters"]) == 26
        word = transliterate("umbrella", script)
        assert len(word) == 8 and {script_of(c) for c in word} == {script}
        assert transliterate(word, script) == word  # already in the script: kept
    assert needs_shaping("سلام") and needs_shaping("नमस्ते") and not needs_shaping("кружка")
    with pytest.raises(AttackError, match="unknown script"):
        transliterate("ipod", "klingon")


@pytest.mark.skipif(not features.check("raqm"), reason="shaping needs Pillow with raqm")
def test_arabic_is_shaped_joining_changes_the_advances():
    word = "سلام"
    shaped = ImageFont.truetype(default_font_path(), 40, layout_engine=ImageFont.Layout.RAQM)
    basic = ImageFont.truetype(default_font_path(), 40, layout_engine=ImageFont.Layout.BASIC)
    assert shaped.getlength(word) != basic.getlength(word)  # joined forms have other advances
    glyphs = lambda f: np.asarray(f.getmask(word))  # noqa: E731
    assert glyphs(shaped).shape != glyphs(basic).shape or (glyphs(shaped) != glyphs(basic)).any()
    attack = render_attack(Image.new("RGB", (96, 96), "white"), word, LabelStyle(font_size=0.2), seed=0)
    assert attack.text_mask.any()


def test_shaping_unavailable_is_a_clear_error(monkeypatch):
    import clipedit.attacks.scripts as scripts

    monkeypatch.setattr(scripts.features, "check", lambda name: False)
    with pytest.raises(AttackError, match="raqm"):
        check_shaping("سلام")
    check_shaping("кружка")  # Cyrillic needs no shaping
    with pytest.raises(AttackError, match="raqm"):
        render_attack(Image.new("RGB", (96, 96), "white"), "שלום", seed=0)


def test_attack_and_audit_write_a_script(capsys, tmp_path, photo_files):
    out = tmp_path / "out"
    run_ok(capsys, "attack", photo_files["cat"], "--text", "ipod", "--script", "cyrillic", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == [f"cat_ипод_{p}.png" for p in ("attacked", "blank", "mask")]
    stdout = run_ok(capsys, "audit", "--model", "mini", "--script", "greek", "--n", "12")
    assert "text note" in stdout
    err = run_error(capsys, "audit", "--model", "mini", "--script", "greek", "--dataset", f"rta100:{tmp_path}")
    assert "--script" in err


def test_split_sampler_with_a_script_font_renders_it():
    sampler = dataclasses.replace(factors.split_sampler("test", fonts=(default_font_path(),)), kinds=("note",))
    style = sampler.sample(np.random.default_rng(0))
    attack = render_attack(Image.new("RGB", (64, 64), "white"), transliterate("mug", "hebrew"), style, seed=0)
    assert attack.text_mask.any() and style.font == default_font_path()


def test_defense_table_reports_notes_and_stickers_apart_from_bare_text():
    from clipedit.eval.defense_metrics import comparison_rows

    def hits(acc: float) -> dict:
        return {"text_acc": proportion([True] * int(10 * acc) + [False] * (10 - int(10 * acc)))}

    def figures(acc_notes: float, acc_text: float) -> dict:
        groups = {"notes + stickers": hits(acc_notes), "bare text": hits(acc_text)}
        return {"clean_acc": 1.0, "blank_acc": 0.9, "text_acc": 0.5, "strata": groups}

    rows = {r[0]: r[1:] for r in comparison_rows(figures(0.2, 0.6), figures(0.8, 0.9))}
    assert rows["text note, notes + stickers (defended words)"] == [0.2, 0.8, 10]  # before, after, n
    assert rows["text note, bare text (defended words)"] == [0.6, 0.9, 10]
    assert "text note, notes + stickers (other words)" not in rows


@pytest.mark.slow
def test_on_the_leave_out_factors_notes_and_stickers_fool_the_mini_more_than_bare_text():
    """The reason the headline is notes + stickers: a mix with bare text would hide the stronger attack."""
    from clipedit.eval.heldout import world_attack_set
    from clipedit.eval.metrics import evaluate_attacks
    from clipedit.eval.predictor import make_predictor
    from clipedit.models import load_model

    bundle = load_model("mini", device="cpu")
    attacks, labels = world_attack_set(bundle.world, 120, "validation")
    predictor = make_predictor(bundle, bundle.classnames)
    m = evaluate_attacks(bundle, predictor, attacks, labels, batch_size=120, progress=False)
    out = strata(attacks, labels, m["predictions"], bundle.classnames)
    notes, bare = out["notes + stickers"]["attack_success_rate"], out["bare text"]["attack_success_rate"]
    assert notes["n"] + bare["n"] == m["n_word_in_classes"] and notes["n"] >= 60 and bare["n"] >= 20
    assert notes["ci95"][0] > bare["ci95"][1]  # non-overlapping 95% intervals
