"""A user's data in compare / sweep (the seeded split), PAINT's --supported task, and tolerances at the
resolution of the measurement."""
from __future__ import annotations

import hashlib
import json
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image

from clipedit.data.splits import FOLDER, MIN_PER_SIDE, hash_fraction, read_labelled, split_data, split_records
from clipedit.errors import ClipeditError
from clipedit.eval.pick import scene_tolerance
from clipedit.mini.world import CLASSNAMES, attack_set, draw_scene
from tests.conftest import run_error, run_ok


def _folder(root, n_per_class: int, classes: int = 4, seed: int = 3):
    rng = np.random.default_rng(seed)
    for label in range(classes):
        d = root / CLASSNAMES[label]
        d.mkdir(parents=True)
        for i in range(n_per_class):
            draw_scene(rng, label).image.save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder of 40 mini-world photos, 4 classes."""
    return _folder(tmp_path_factory.mktemp("folder") / "photos", 10)


@pytest.fixture(scope="module")
def triples(tmp_path_factory):
    """A triples benchmark (clean / white / written) of 30 mini-world scenes."""
    root = tmp_path_factory.mktemp("triples") / "set"
    attacks, labels = attack_set(30, 5)
    for i, (a, label) in enumerate(zip(attacks, labels)):
        d = root / CLASSNAMES[label]
        d.mkdir(parents=True, exist_ok=True)
        a.clean.save(d / f"s{i:02d}_clean.png")
        a.blank.save(d / f"s{i:02d}_white.png")
        a.attacked.save(d / f"s{i:02d}_{a.text.replace(' ', '-')}.png")
    return root


@pytest.fixture(scope="module")
def rta(tmp_path_factory, triples):
    """The triples' written photos as an RTA-100-style set (attacked photos only: no clean, no blank)."""
    root = tmp_path_factory.mktemp("rta") / "rta"
    root.mkdir()
    for path in sorted(triples.rglob("*.png")):
        scene, _, suffix = path.stem.rpartition("_")
        if suffix not in ("clean", "white"):
            (root / f"label={path.parent.name}_text={suffix}_{scene}.png").write_bytes(path.read_bytes())
    return root


@pytest.fixture(scope="module")
def supported(tmp_path_factory):
    """A supported task: 3 classes x 4 photos of other scenes than the patch data."""
    return _folder(tmp_path_factory.mktemp("supported") / "sup", 4, classes=3, seed=99)


# -- the split ---------------------------------------------------------------------------------------------
def test_the_split_is_deterministic_disjoint_complete_seeded_and_recorded(folder):
    a, b = split_data(str(folder), seed=0), split_data(str(folder), seed=0)
    val, test = set(a.files("validation")), set(a.files("test"))
    assert a.record() == b.record() and not val & test
    assert val | test == {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}
    assert all(hash_fraction(0, f"file:{f}") < 0.5 for f in val) and all(hash_fraction(0, f"file:{f}") >= 0.5
                                                                         for f in test)
    other = split_data(str(folder), seed=1)
    assert set(other.files("validation")) != val
    record = a.record()
    assert record["seed"] == 0 and record["layout"] == FOLDER and "sha256" in record["rule"]
    assert record["counts"]["validation"]["images"] + record["counts"]["test"]["images"] == 40
    assert record["digests"]["test"] == hashlib.sha256("\n".join(sorted(test)).encode()).hexdigest()
    # names only: the order files are listed in does not matter
    layout, root, records, _, _ = read_labelled(str(folder))
    shuffled = random.Random(4).sample(records, len(records))
    assert [r.path for r in split_records(shuffled, root, 0)[0]] == [r.path for r in a.validation]


def test_a_scene_s_clean_blank_and_written_photos_stay_on_one_side(triples):
    split = split_data(f"triples:{triples}", seed=2)
    sides = {}
    for side in ("validation", "test"):
        for r in split.side(side):
            sides.setdefault(r.pair, set()).add(side)
    assert len(sides) == 30 and all(len(s) == 1 for s in sides.values())
    assert split.record()["counts"]["test"]["units"] * 3 == split.record()["counts"]["test"]["images"]


def test_the_validation_world_holds_validation_photos_only(folder):
    import clipedit
    from clipedit.data.prepare.user_data import with_validation_world

    split = split_data(str(folder))
    bundle = with_validation_world(clipedit.load_model("mini"), split)
    paths = {p.relative_to(folder).as_posix() for p in bundle.world.photos.paths}
    assert paths == set(split.files("validation")) and not paths & set(split.files("test"))
    attacks, labels = bundle.world.attack_set(1000, 1, ["ipod"], split="validation")
    assert len(attacks) <= len(split.validation)  # a held-out set: one scene a photo at most


# -- compare / sweep --data ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_data_end_to_end_with_paint_on_a_supported_folder(triples, supported, tmp_path, capsys):
    import clipedit
    from clipedit.data.folders import load_image_folder
    from clipedit.eval.predictor import make_predictor

    swapped = "ball,apple,car"  # folder names apple, ball, car: two swapped, so clean scenes != this task
    out = tmp_path / "cmp"
    short = tmp_path / "hp.json"  # a short θ₁ (its full budget, its peers', is for real runs)
    short.write_text(json.dumps({"paint": {"steps": 2, "lrs": [1e-3], "checkpoints": 1}}))
    table = run_ok(capsys, "compare", "--model", "mini", "--data", f"triples:{triples}", "--methods", "edit,paint",
                   "--hparams", short,
                   "--seeds", "0", "--n-signs", "6", "--n-val", "12", "--n-train", "12", "--supported", supported,
                   "--supported-classes", swapped, "--out", out)
    record = json.loads((out / "compare.json").read_text())
    split = split_data(f"triples:{triples}", seed=0)
    assert record["data_split"] == split.record() == record["compare"]["data"]
    assert record["n"] == len(split.test) and record["dataset"] == f"triples:{triples}"
    cells = record["compare"]["cells"]
    for method in ("unedited", "edit", "paint"):
        for key in ("text_acc", "other_text_acc", "clean_acc", "blank_acc", "reading_acc"):
            c = cells[method][key]
            assert c["n"] > 0 and c["lo"] <= c["value"] <= c["hi"], (method, key)
    words = record["words"]
    n_clean = sum(r.kind == "clean" for r in split.test)
    assert len(words) > 1
    assert cells["unedited"]["clean_acc"]["n"] == n_clean  # the same clean photos for every word: counted once
    raw = record["compare"]["raw"]["unedited"]["-"]
    assert sum(raw[w]["clean_acc"][1] for w in words) == n_clean * len(words)  # each word scored them all
    assert "- split: validation when" in table
    # PAINT's α curve: the supported column is the folder's, under its own (swapped) class names
    paint = record["compare"]["details"]["paint"]["0"]
    rows = paint["alpha_curve"]
    assert all(r["n_supported"] == 12 for r in rows) and "(a disjoint seed)" not in paint["rule"]
    assert str(supported) in paint["rule"]  # the rule uses the folder
    bundle = clipedit.load_model("mini")
    sup = load_image_folder(supported)  # classes in folder order; --supported-classes renames them in that order
    images = torch.stack([bundle.preprocess(image) for image in sup.images])
    predicted = make_predictor(bundle, swapped.split(","))(images).argmax(1)
    expected = float((predicted == torch.tensor(sup.labels)).float().mean())
    assert rows[0]["alpha"] == 0.0 and rows[0]["supported_acc"] == pytest.approx(expected)
    assert rows[0]["supported_acc"] != rows[0]["clean_acc"]
    assert paint["selection"]["tolerance"]["scenes_allowed"] == 1 and paint["selection"]["supported"] == str(supported)
    assert record["compare"]["details"]["edit"]["0:" + words[0]]["selection"]["tolerance"] is None  # nothing tuned


@pytest.mark.slow
def test_compare_data_leaves_out_what_the_data_cannot_give(rta, tmp_path, capsys):
    out = tmp_path / "cmp"
    table = run_ok(capsys, "compare", "--model", "mini", "--data", f"rta100:{rta}", "--methods", "edit",
                   "--seeds", "0", "--n-signs", "0", "--out", out)
    record = json.loads((out / "compare.json").read_text())
    cells, notes = record["compare"]["cells"]["unedited"], record["compare"]["notes"]
    assert cells["text_acc"]["n"] > 0 and cells["clean_acc"]["n"] == 0 and cells["blank_acc"]["n"] == 0
    assert "unedited/clean_acc" not in record["metrics"] and "edit/text_acc" in record["metrics"]
    assert any("clean: left out (the dataset has no clean photos)" in n for n in notes)
    assert any("blank note: left out" in n for n in notes) and any("reading kept: left out" in n for n in notes)
    assert "clean n=" not in table and "blank note n=" not in table  # no column for what was not measured
    assert "defended word n=" in table


@pytest.mark.slow
def test_sweep_data_scores_the_validation_side_of_the_same_split(folder, tmp_path, capsys):
    out = tmp_path / "s"
    run_ok(capsys, "sweep", "--model", "mini", "--data", str(folder), "--text", "ipod", "--sites",
           "visual.layer3.0.conv3", "--ranks", "1", "--n-val", "100", "--n-signs", "0", "--renders", "4",
           "--split-seed", "3", "--out", out)
    record = json.loads((out / "sweep.json").read_text())
    split = split_data(str(folder), seed=3)
    assert record["data_split"] == split.record() and record["dataset"] == f"{folder}:validation"
    assert 0 < record["n_scenes"] <= len(split.validation)  # one scene per validation photo, no test photo
    tol = record["selection"]["tolerance"]
    assert tol["n"] == record["n_scenes"] and tol["scenes_allowed"] >= 1


# -- tolerances at the resolution of the measurement ----------------------------------------------------------
def test_scene_tolerance_widens_below_one_scene_refuses_nonsense_and_says_the_scenes(caplog):
    with caplog.at_level(logging.WARNING):
        tol = scene_tolerance(0.005, 160, "the keep rule")
    assert tol.applied == pytest.approx(1 / 160) and tol.scenes == 1 and tol.widened
    assert "the keep rule 0.5 point is below one scene of 160" in caplog.text
    assert tol.to_dict()["scenes_allowed"] == 1 and "widened from 0.5 point" in tol.to_dict()["text"]
    assert tol.allows(1 / 160) and not tol.allows(2 / 160)
    wide = scene_tolerance(0.01, 1000)
    assert not wide.widened and wide.scenes == 10
    assert scene_tolerance(0.0, 50).scenes == 0  # no loss asked for: kept
    for bad in (-0.01, float("nan")):
        with pytest.raises(ClipeditError, match="finite fraction >= 0"):
            scene_tolerance(bad, 100)


def test_dyslexify_clean_budget_below_one_scene_is_widened():
    from clipedit.methods.dyslexify import DyslexifyHParams, greedy_selection, selection_record

    n = 50  # stop_at_delta 0.01 = half a scene: a one-scene loss would stop the published search
    table = {(): (40, 10), ("a",): (39, 20), ("a", "b"): (37, 30), ("a", "b", "c"): (36, 40)}
    kept, steps, _ = greedy_selection(["a", "b", "c"], lambda heads: table[tuple(heads)], n)
    assert kept == ["a", "b"] and steps[1].get("stopped") == "clean budget"  # 1 scene lost: on; 3: stop
    record = selection_record(DyslexifyHParams(), n)
    assert record["tolerance"]["scenes_allowed"] == 1 and record["tolerance"]["widened"] and record["keep_scenes"] == 1


def test_head_ablation_records_the_scenes_its_tolerance_allows(tiny_rn):
    from clipedit.methods.head_ablation import HeadAblationHParams, ablate_heads
    from tests.test_peers import exemplar_request, with_world

    bundle = with_world(tiny_rn)
    result = ablate_heads(bundle, exemplar_request(bundle), ["ipod"], HeadAblationHParams(n_val=6, patience=0))
    tol = result.selection["tolerance"]
    assert tol["n"] == 6 and tol["scenes_allowed"] == 1 and tol["widened"]  # 0.5 point of 6 scenes
    assert "1 of 6 scenes" in result.selection["rule"]


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.fixture
def small(tmp_path):
    return _folder(tmp_path / "small", 3, classes=3)


@pytest.fixture
def flat(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    draw_scene(np.random.default_rng(0), 0).image.save(root / "a.png")
    return root


@pytest.mark.parametrize("case, message", [
    ("small", "too small to split into validation and test"),
    ("not-a-folder", "--supported"),
    ("empty", "holds no images"),
    ("flat", "has no class folders"),
    ("classes", "--supported-classes gives 2 names for the 3 class folders"),
    ("overlap", "overlaps --data"),
    ("classes-alone", "--classes goes with --data"),
    ("seeds", "--seeds is empty"),
    pytest.param("word", "carries the word 'zebra'", marks=pytest.mark.slow),
])
def test_compare_bad_user_data_is_one_error_line_and_writes_nothing(case, message, small, flat, folder, supported,
                                                                     triples, tmp_path, capsys):
    out = tmp_path / "cmp"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"small": ["--data", small],
            "not-a-folder": ["--supported", next(supported.rglob("*.png"))],
            "empty": ["--supported", empty],
            "flat": ["--supported", flat],
            "classes": ["--supported", supported, "--supported-classes", "a,b"],
            "overlap": ["--data", folder, "--supported", folder],
            "classes-alone": ["--classes", "a,b"],
            "seeds": ["--data", folder, "--seeds", ","],
            "word": ["--data", f"triples:{triples}", "--words", "zebra", "--methods", "edit"]}[case]
    line = run_error(capsys, "compare", "--model", "mini", *args, "--out", out)
    assert message in line
    assert not out.exists()
    if case == "small":
        assert f"at least {MIN_PER_SIDE} a side" in line


@pytest.mark.parametrize("args, message", [
    (["--method", "edit", "--supported", "SUP"], "goes with --method paint"),
    (["--method", "paint", "--supported", "SUP", "--supported-classes", "a"], "gives 1 names for the 3"),
    (["--method", "paint", "--supported-classes", "a"], "--supported-classes goes with --supported"),
])
def test_defend_supported_bad_input(args, message, supported, tmp_path, capsys):
    args = [str(supported) if a == "SUP" else a for a in args]
    line = run_error(capsys, "defend", "--model", "mini", "--no-eval", *args, "--out", tmp_path / "d")
    assert message in line and not (tmp_path / "d").exists()


def test_sweep_data_too_small_is_one_error_line(small, tmp_path, capsys):
    line = run_error(capsys, "sweep", "--model", "mini", "--data", small, "--out", tmp_path / "s")
    assert "too small to split" in line and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_defend_paint_with_supported_records_the_folder_and_its_alpha_curve(supported, tmp_path, capsys):
    hparams = tmp_path / "paint.json"
    hparams.write_text(json.dumps({"n_train": 8, "epochs": 1, "batch_size": 4, "n_val": 6, "n_signs": 6,
                                   "alphas": [0.0, 1.0], "steps": 2, "lrs": [1e-3], "checkpoints": 1}))
    run_ok(capsys, "defend", "--model", "mini", "--method", "paint", "--supported", supported, "--hparams", hparams,
           "--no-eval", "--out", tmp_path / "d")
    record = json.loads((tmp_path / "d" / "results.json").read_text())
    assert record["hparams"]["supported"] == str(supported) and record["hparams"]["n_val"] == 6
    rows = record["details"]["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 1.0]
    assert all(r["n_supported"] == 12 and r["n"] == 6 for r in rows)
    assert record["details"]["selection"]["supported"] == str(supported)
    assert record["details"]["selection"]["tolerance"]["n"] == 12


def test_16_bit_greyscale_images_keep_their_tones(tmp_path):
    from clipedit.data.images import load_image

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (32, 64, 3)
    assert abs(rgb.mean() - 127.5) < 2 and rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0)


# -- the word-disjoint split on --data -----------------------------------------------------------------------
def _spy_methods(monkeypatch) -> dict:
    """Every method's run replaced by a spy that records the world it is handed and the words that world
    writes when a method asks for "another class's name" (as the peers' training and validation sets do)."""
    import clipedit.selection.compare as compare_module

    seen: dict = {}

    def spy(base, method, word, seed, settings, shared):
        attacks, _ = base.world.attack_set(40, seed, "other", split="validation")
        seen[method] = {"world": base.world, "written": {a.text for a in attacks}}
        return base, {"budget": {}}, 0.0

    monkeypatch.setattr(compare_module, "run_method", spy)
    return seen


def test_compare_data_unseen_words_are_held_out_class_words_for_every_method(tmp_path, tiny_vit, monkeypatch):
    from clipedit.data.prepare.user_data import scoring_sets, with_validation_world
    from clipedit.data.prepare.word_split import WordSplitWorld, word_split
    from clipedit.selection.compare import CompareSettings, compare
    from clipedit.selection.compare_scoring import images_key

    root = _folder(tmp_path / "six", 4, classes=6)
    split = split_data(str(root), seed=0)
    words = ("ipod",)
    expected = word_split(split.classnames, words, seed=5)
    assert expected.heldout and len(expected.trainable) > 2  # something held out, something left to train on
    seen = _spy_methods(monkeypatch)
    record = compare(tiny_vit, CompareSettings(methods=("edit", "edit-any-word"), words=words, seeds=(0,),
                                               n_test=12, n_signs=0, n_train=8, n_val=4, data=str(root),
                                               word_seed=5))
    assert record["word_split"] == expected.record()
    assert set(seen) == {"edit", "edit-any-word"}  # a word-specific and a word-agnostic method
    for method, got in seen.items():
        assert isinstance(got["world"], WordSplitWorld) and got["world"].heldout_words == expected.heldout
        assert got["world"].from_photos  # still the data's photo world to code that asks
        assert got["written"] and got["written"] <= set(expected.trainable), method
    # the unseen-words cells: notes on the test photos writing held-out words only, the same set compare scored
    tests = scoring_sets(with_validation_world(tiny_vit, split), split, words, 12, 0, unseen=expected.heldout)
    other, labels = tests["ipod"].sets.other
    assert other and {a.text for a in other} <= set(expected.heldout)
    entry = record["raw"]["unedited"]["-"]["ipod"]["other_text_acc"]
    assert entry[2] == images_key([a.attacked for a in other], labels) + ":text" and entry[1] > 0
    assert record["cells"]["edit"]["other_text_acc"]["n"] == entry[1]
    assert any(f"unseen words: {', '.join(expected.heldout)}, held out" in n for n in record["notes"])


def test_compare_data_with_too_few_classes_to_hold_one_out_has_no_unseen_cell(tmp_path, tiny_vit, monkeypatch):
    from clipedit.data.prepare.word_split import WordSplitWorld
    from clipedit.selection.compare import CompareSettings, compare

    root = _folder(tmp_path / "three", 8, classes=3)
    seen = _spy_methods(monkeypatch)
    record = compare(tiny_vit, CompareSettings(methods=("edit",), words=("ipod", "mug"), seeds=(0,), n_test=6,
                                               n_signs=0, n_train=8, n_val=4, data=str(root)))
    assert "word_split" not in record and record["cells"]["unedited"]["other_text_acc"]["n"] == 0
    assert not isinstance(seen["edit"]["world"], WordSplitWorld)  # nothing to hold out: the data's world as it is
    assert any("no word-disjoint split, no unseen-words cell" in n for n in record["notes"])
    assert any(n.startswith("unseen words: left out (no test-side image carries a held-out class word")
               for n in record["notes"])


def test_a_benchmark_photo_counts_as_unseen_only_with_a_held_out_word():
    from pathlib import Path

    from clipedit.data.benchmarks import BenchmarkImage
    from clipedit.data.prepare.user_data import metric_of

    def photo(word):
        return BenchmarkImage(Path("x.png"), "apple", word)

    held = frozenset({"mug"})
    assert metric_of(photo("ipod"), {"ipod"}, held) == "text_acc"
    assert metric_of(photo("mug"), {"ipod"}, held) == "other_text_acc"
    assert metric_of(photo("star"), {"ipod"}, held) is None  # a trainable class word: in neither word cell
    assert metric_of(photo("star"), {"ipod"}) == "other_text_acc"  # no split: every other word
    assert metric_of(photo("apple"), {"ipod"}, held) is None  # its own class: no attack
