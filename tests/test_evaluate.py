"""Predictors, metrics, attack evaluation on cases with known answers, datasets and results records."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from clipedit.attacks import Attack, LabelStyle
from clipedit.data.classnames import labels_from_names, remap_labels
from clipedit.data.folders import load_image_folder
from clipedit.data.images import load_image, to_batches
from clipedit.errors import ClipeditError
from clipedit.eval.attack_sets import attacks_from_photos
from clipedit.eval.metrics import classification_metrics, evaluate_attacks, evaluate_images
from clipedit.eval.predictor import make_predictor
from clipedit.eval.results import format_table, make_record, write_results
from clipedit.models import ModelBundle

CLASSES = ["ipod", "mug", "apple", "ball", "clock", "key"]


# --- a fake model whose prediction is written in the image: class k <=> red channel 10 * k ---

def swatch(k: int, photo: int = 0) -> Image.Image:
    """A 4x4 image that the colour predictor reads as class ``k``; ``photo`` (a corner pixel the
    predictor does not read) tells photos of the same class apart."""
    image = Image.new("RGB", (4, 4), (10 * k, 0, 0))
    image.putpixel((3, 3), (0, photo, 0))
    return image


def colour_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.tensor([float(np.asarray(image)[0, 0, 0])])


class ColourPredictor:
    """Logits peaked at class red / 10."""

    classnames = CLASSES

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        k = (batch[:, 0] / 10).round().long()
        return -(torch.arange(len(self.classnames))[None, :] - k[:, None]).abs().float()


FAKE_BUNDLE = types.SimpleNamespace(preprocess=colour_preprocess)


def fake_attack(word: str, clean: int, blank: int, text: int, photo: int = 0) -> Attack:
    mask = np.zeros((4, 4), bool)
    return Attack(clean=swatch(clean, photo), blank=swatch(blank), attacked=swatch(text), mask=mask,
                  text_mask=mask, box=(0, 0, 1, 1), text=word, style=LabelStyle(), seed=0)


# (true label, written word, clean prediction, blank prediction, text prediction)
CASE = [
    (1, "ipod", 1, 1, 0),    # flipped to the written word
    (1, "apple", 1, 2, 1),   # resists; the blank note alone fools it
    (2, "mug", 2, 2, 1),     # flipped to the written word
    (3, "banana", 0, 3, 3),  # word is no class: counts for text_acc only
    (4, "Clock", 4, 4, 4),   # the true class (other case): left out of text_acc
    (5, "IPOD", 5, 5, 2),    # wrong, but not the written word
]


def test_evaluate_attacks_on_a_known_case():
    attacks = [fake_attack(w, c, b, t, photo=i) for i, (_, w, c, b, t) in enumerate(CASE)]
    labels = [row[0] for row in CASE]
    m = evaluate_attacks(FAKE_BUNDLE, ColourPredictor(), attacks, labels, batch_size=4, progress=False)
    assert m["n"] == 6
    assert m["clean_acc"] == pytest.approx(5 / 6)
    assert m["blank_acc"] == pytest.approx(5 / 6)
    assert (m["text_acc"], m["n_text"]) == (pytest.approx(2 / 5), 5)
    assert (m["attack_success_rate"], m["n_word_in_classes"]) == (pytest.approx(2 / 4), 4)
    assert m["predictions"] == {"clean": [1, 1, 2, 0, 4, 5], "blank": [1, 2, 2, 3, 4, 5], "text": [0, 1, 1, 3, 4, 2]}
    assert m["by_word"]["ipod"] == {"text_acc": 0.0, "attack_success_rate": 1.0, "n": 1, "in_classes": True}
    assert m["by_word"]["IPOD"] == {"text_acc": 0.0, "attack_success_rate": 0.0, "n": 1, "in_classes": True}
    assert m["by_word"]["banana"] == {"text_acc": 1.0, "attack_success_rate": None, "n": 1, "in_classes": False}
    assert m["by_word"]["Clock"]["n"] == 0 and m["by_word"]["Clock"]["text_acc"] is None
    assert "clean_top5" in m


def test_a_photo_written_on_with_several_words_is_one_clean_image():
    """Two photos, each attacked with three words: clean figures over 2 distinct images, notes over 6."""
    attacks = [fake_attack(w, c, c, t, photo=p) for p, c, t in ((0, 1, 1), (1, 2, 0)) for w in ("x", "y", "z")]
    m = evaluate_attacks(FAKE_BUNDLE, ColourPredictor(), attacks, [1] * 3 + [2] * 3, batch_size=4, progress=False)
    assert (m["n"], m["n_clean"], m["n_text"]) == (6, 2, 6)
    assert m["clean_acc"] == 1.0 and m["by_class"]["mug"]["n_clean"] == 1
    assert m["text_acc"] == pytest.approx(3 / 6)


def test_evaluate_attacks_with_given_word_indices():
    attacks = [fake_attack(w, c, b, t) for _, w, c, b, t in CASE]
    labels = [row[0] for row in CASE]
    # Say every word is class 2 ("apple"): rows 1, 3 (label 2 is row 3's class) change roles.
    m = evaluate_attacks(FAKE_BUNDLE, ColourPredictor(), attacks, labels, word_indices=[2] * 6, progress=False)
    assert m["n_text"] == 5 and m["n_word_in_classes"] == 5
    assert m["attack_success_rate"] == pytest.approx(1 / 5)  # only row 6 predicts 2


def test_evaluate_attacks_checks_lengths():
    attacks = [fake_attack("mug", 0, 0, 0)]
    with pytest.raises(ClipeditError, match="labels"):
        evaluate_attacks(FAKE_BUNDLE, ColourPredictor(), attacks, [0, 1], progress=False)
    with pytest.raises(ClipeditError, match="labels must lie in"):
        evaluate_attacks(FAKE_BUNDLE, ColourPredictor(), attacks, [9], progress=False)


def test_classification_metrics_on_hand_built_logits():
    logits = torch.tensor([
        [9.0, 1, 1, 1, 1, 1],   # label 0: right
        [0.0, 1, 2, 9, 3, 4],   # label 0: wrong, and last of 6: outside the top 5
        [5.0, 6, 9, 1, 1, 1],   # label 0: wrong, second: inside the top 5
        [1.0, 8, 9, 1, 1, 1],   # label 1: wrong, inside the top 5
        [1.0, 1, 9, 1, 1, 1],   # label 2: right
    ])
    m = classification_metrics(logits, [0, 0, 0, 1, 2])
    assert m["top1"] == pytest.approx(2 / 5)
    assert m["top5"] == pytest.approx(4 / 5)
    assert m["mean_per_class_recall"] == pytest.approx((1 / 3 + 0 + 1) / 3)
    assert m["n"] == 5 and m["predictions"] == [0, 3, 2, 2, 2]
    assert "top5" not in classification_metrics(logits[:, :4], [0, 0, 0, 1, 2])


def test_evaluate_images_batches_in_order():
    images = [swatch(k) for k in (3, 1, 4, 1, 5)]
    m = evaluate_images(FAKE_BUNDLE, ColourPredictor(), images, [3, 1, 4, 0, 0], batch_size=2, progress=False)
    assert m["predictions"] == [3, 1, 4, 1, 5]
    assert m["top1"] == pytest.approx(3 / 5)
    assert m["mean_per_class_recall"] == pytest.approx((1 + 1 + 1 + 0) / 4)


def test_zero_shot_predictor_on_a_tiny_clip(tiny_vit, photos, cache_dir):
    names = ["cat", "coffee", "rocket"]
    predictor = make_predictor(tiny_vit, names, ["a photo of a {}."])
    assert predictor.classnames == names
    assert list((cache_dir / "zeroshot").glob("*.safetensors")), "the zero-shot head is cached"
    images = [photos[n] for n in names]
    batch = torch.stack([tiny_vit.preprocess(im) for im in images])
    logits = predictor(batch)
    assert logits.shape == (3, 3)
    m = evaluate_images(tiny_vit, predictor, images, [0, 1, 2], batch_size=2, progress=False)
    assert m["predictions"] == logits.argmax(1).tolist()
    with torch.no_grad():  # the model runs on every call: an edit shows at once
        tiny_vit.model.visual.proj.mul_(-1)
    assert not torch.allclose(predictor(batch), logits)


def test_text_tower_fingerprint_is_remembered_until_the_text_side_changes(tiny_vit, monkeypatch):
    from clipedit.eval import zeroshot

    first = zeroshot._text_tower_fingerprint(tiny_vit.model)
    hashed = []
    monkeypatch.setattr(zeroshot, "module_fingerprint", lambda *a, **k: hashed.append(1) or "rehashed")
    assert zeroshot._text_tower_fingerprint(tiny_vit.model) == first and not hashed  # remembered
    with torch.no_grad():
        tiny_vit.model.visual.proj.mul_(2)  # the visual tower does not enter the head
    assert zeroshot._text_tower_fingerprint(tiny_vit.model) == first and not hashed
    with torch.no_grad():
        tiny_vit.model.text_projection.mul_(2)  # an in-place write to the text side is seen
    assert zeroshot._text_tower_fingerprint(tiny_vit.model) == "rehashed" and hashed == [1]


def test_predictor_errors(tiny_vit):
    with pytest.raises(ClipeditError, match="the class list is empty"):
        make_predictor(tiny_vit, [])
    with pytest.raises(ClipeditError, match="duplicate class names: Cat"):
        make_predictor(tiny_vit, ["cat", "Cat"])


class TenLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.scale * torch.arange(10.0).repeat(len(x), 1)


def classifier_bundle() -> ModelBundle:
    return ModelBundle(model=TenLogits(), preprocess=colour_preprocess, kind="classifier", name="ten",
                       classnames=[f"class {i}" for i in range(9)] + ["Golden Retriever"])


def test_classifier_predictor_selects_columns():
    predictor = make_predictor(classifier_bundle(), ["golden retriever", "class 3", "CLASS 7"])
    assert predictor(torch.zeros(2, 1)).tolist() == [[9.0, 3.0, 7.0]] * 2
    with pytest.raises(ClipeditError, match=r"no class named 'zebra', 'okapi'"):
        make_predictor(classifier_bundle(), ["class 1", "zebra", "okapi"])


# --- datasets ---

def test_load_image_folder(image_folder):
    folder = load_image_folder(image_folder)
    assert folder.classnames == ["cat", "coffee", "rocket"]
    assert folder.labels == [0, 0, 1, 1, 2, 2]
    assert [p.name for p in folder.paths] == ["a.jpg", "b.png"] * 3
    assert folder.images[5].size == (96, 96)


def test_image_folder_errors(tmp_path, image_folder):
    with pytest.raises(ClipeditError, match="data directory not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ClipeditError, match="no images found"):
        load_image_folder(tmp_path / "empty")
    (image_folder / "coffee" / "c.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ClipeditError, match=r"cannot read image .*coffee/c\.jpg"):
        load_image_folder(image_folder)


def test_load_image_errors(tmp_path, corrupt_jpg):
    with pytest.raises(ClipeditError, match="image not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ClipeditError, match=r"cannot read image .*broken\.jpg"):
        load_image(corrupt_jpg)
    truncated = tmp_path / "cut.png"
    swatch(3).resize((64, 64)).save(tmp_path / "whole.png")
    truncated.write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(ClipeditError, match="cut.png"):
        load_image(truncated)


def test_attacks_from_photos_one_per_other_word(photos):
    images = [photos["cat"], photos["coffee"], photos["rocket"]]
    names = ["cat", "coffee", "rocket"]
    attacks, labels = attacks_from_photos(images, [0, 1, 2], names, ["Cat", "coffee", "ipod"], seed=3,
                                          progress=False)
    assert len(attacks) == 7  # 3 photos x 3 words, less "Cat" on the cat and "coffee" on the coffee
    assert labels == [0, 0, 1, 1, 2, 2, 2]
    assert all(a.text.lower() != names[y] for a, y in zip(attacks, labels))
    assert [a.text for a in attacks[:2]] == ["coffee", "ipod"]
    again, _ = attacks_from_photos(images, [0, 1, 2], names, ["Cat", "coffee", "ipod"], seed=3, progress=False)
    assert np.array_equal(np.asarray(again[4].attacked), np.asarray(attacks[4].attacked))


def test_attacks_from_photos_random_words(photos):
    args = ([photos["cat"], photos["rocket"]], [0, 2], ["cat", "coffee", "rocket"], ["cat", "coffee", "rocket"])
    attacks, labels = attacks_from_photos(*args, per_image=3, seed=0, progress=False)
    assert labels == [0, 0, 0, 2, 2, 2]
    assert {a.text for a in attacks[:3]} == {"coffee", "rocket"}  # both candidates before a repeat
    other, _ = attacks_from_photos(*args, per_image=3, seed=1, progress=False)
    assert any(not np.array_equal(np.asarray(a.attacked), np.asarray(b.attacked)) for a, b in zip(attacks, other))
    with pytest.raises(ClipeditError, match="every word is the class"):
        attacks_from_photos([photos["cat"]], [0], ["cat"], ["cat"], progress=False)
    with pytest.raises(ClipeditError, match="word list is empty"):
        attacks_from_photos([photos["cat"]], [0], ["cat"], [" "], progress=False)


def test_label_helpers():
    assert remap_labels([0, 2, 1], ["b", "c", "a"], ["A", "B", "C", "D"]) == [1, 0, 2]
    with pytest.raises(ClipeditError, match="lacks the data's classes: c"):
        remap_labels([0, 1], ["b", "c"], ["a", "b"])
    assert labels_from_names(["Mug", "ipod"], CLASSES) == [1, 0]
    with pytest.raises(ClipeditError, match="labels not in the class list: pear"):
        labels_from_names(["pear"], CLASSES)


def test_to_batches_shapes(photos):
    batches = list(to_batches([photos["cat"]] * 5, colour_preprocess, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]


# --- results ---

def test_results_record_and_table(tmp_path, tiny_vit):
    record = make_record(dataset="photos", bundle=tiny_vit, task="typographic_audit",
                         metrics={"clean_acc": 0.5, "predictions": [1]}, classnames=["a", "b"],
                         templates=["{}", "a {}"], words=["b"], seed=7, n=2)
    for key in ("dataset", "model", "pretrained", "task", "metrics", "classnames", "templates", "words",
                "seed", "n", "device", "clipedit_version", "created"):
        assert key in record
    assert record["model"] == "tiny-vit" and record["templates"] == 2 and record["device"] == "cpu"
    assert "predictions" not in record["metrics"]
    path = write_results(tmp_path / "out" / "r.json", record)
    assert json.loads(path.read_text())["metrics"] == {"clean_acc": 0.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]

    table = format_table([("clean", 0.5, 10), ("attack success", None, 0)], header=("", "rate", "n"))
    lines = table.splitlines()
    assert lines[1].split() == ["clean", "50.0%", "10"]
    assert lines[2].split() == ["attack", "success", "n/a", "0"]  # undefined (n = 0): n/a, and why
    from clipedit.eval.results import undefined_reasons

    assert undefined_reasons([("clean", 0.5, 10), ("attack success", None, 0)]) == [
        "attack success: n/a (n = 0: none of the written words is one of the classes, so no note can pull the "
        "prediction to its word)"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_an_image_folder_is_evaluated_on_its_folder_names(image_folder):
    """defend --data DIR uses the folder names as classes, as audit does, not the model's class list."""
    from clipedit.eval.evaluation import EvalOptions, evaluation_sets

    model = types.SimpleNamespace(classnames=[f"class{i}" for i in range(12)], world=None, name="m")
    sets = evaluation_sets(model, ["ipod"], EvalOptions(data=str(image_folder)))
    assert sets.classnames == ["cat", "coffee", "rocket"]
    with pytest.raises(ClipeditError, match=r"2 class names given \(--classes\) for the 3 class folders"):
        evaluation_sets(model, ["ipod"], EvalOptions(data=str(image_folder), classes=["a", "b"]))
