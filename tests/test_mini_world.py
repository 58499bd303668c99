"""The generated mini world: scenes, attack sets, reference images, captions and the training pool."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipedit.errors import ClipeditError
from clipedit.mini.training.captions import CaptionMix, caption
from clipedit.mini.training.pool import BLANK, CLEAN, SIGN, TEXT, PoolMix, build_pool
from clipedit.mini.world import CLASSNAMES, IMAGE_SIZE, TEMPLATES, Scene, attack_set, draw_scene, reference_images


def test_classes_and_templates():
    assert "ipod" in CLASSNAMES
    assert len(CLASSNAMES) >= 10 and len(set(CLASSNAMES)) == len(CLASSNAMES)
    assert all("{}" in t for t in TEMPLATES)


@pytest.mark.parametrize("label", range(len(CLASSNAMES)))
def test_every_class_is_drawn_inside_its_box(label):
    rng = np.random.default_rng(label)
    for _ in range(5):
        scene = draw_scene(rng, label)
        assert isinstance(scene, Scene)
        assert scene.label == label
        assert scene.image.mode == "RGB" and scene.image.size == (IMAGE_SIZE, IMAGE_SIZE)
        x0, y0, x1, y1 = scene.object_box
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        # A real object: at least a sixth of the image wide or high, and not a flat patch.
        assert max(x1 - x0, y1 - y0) >= IMAGE_SIZE / 6
        patch = np.asarray(scene.image)[y0:y1, x0:x1].astype(float)
        assert patch.std() > 10


def test_random_labels_cover_classes_and_other_sizes_work():
    rng = np.random.default_rng(0)
    seen = {draw_scene(rng).label for _ in range(200)}
    assert seen == set(range(len(CLASSNAMES)))
    assert draw_scene(rng, 0, size=96).image.size == (96, 96)


def test_draw_scene_rejects_unknown_label():
    with pytest.raises(ValueError):
        draw_scene(np.random.default_rng(0), len(CLASSNAMES))


def test_scenes_are_deterministic_under_a_seed():
    a = draw_scene(np.random.default_rng(7), 3)
    b = draw_scene(np.random.default_rng(7), 3)
    c = draw_scene(np.random.default_rng(8), 3)
    assert a.image.tobytes() == b.image.tobytes() and a.object_box == b.object_box
    assert a.image.tobytes() != c.image.tobytes()


def test_attack_set_writes_another_class_and_labels_match():
    attacks, labels = attack_set(30, seed=1)
    assert len(attacks) == len(labels) == 30
    counts = np.bincount(labels, minlength=len(CLASSNAMES))
    assert counts.max() - counts.min() <= 1  # balanced classes
    for attack, label in zip(attacks, labels):
        assert attack.text in CLASSNAMES and attack.text != CLASSNAMES[label]
        assert attack.clean.size == attack.attacked.size == attack.blank.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert attack.text_mask.any() and attack.mask.any()
        assert attack.attacked.tobytes() != attack.clean.tobytes()
        # The note leaves most of the image, and the writing stays inside the note's area.
        assert attack.mask.mean() < 0.5
        assert not (attack.text_mask & ~attack.mask).any()


@pytest.mark.parametrize("words", ["ipod", ["ipod", "mug"], ["hello", "ipod"]])
def test_attack_set_with_given_words_never_writes_the_true_class(words):
    vocab = [words] if isinstance(words, str) else words
    attacks, labels = attack_set(36, seed=2, words=words)
    assert {a.text for a in attacks} <= set(vocab)
    assert all(a.text != CLASSNAMES[label] for a, label in zip(attacks, labels))
    assert "ipod" in {a.text for a in attacks}


def test_attack_set_single_word_skips_its_own_class():
    _, labels = attack_set(24, seed=3, words="ipod")
    assert CLASSNAMES.index("ipod") not in labels


def test_attack_set_is_deterministic():
    a, la = attack_set(6, seed=4)
    b, lb = attack_set(6, seed=4)
    assert la == lb
    assert [x.attacked.tobytes() for x in a] == [x.attacked.tobytes() for x in b]
    assert [x.text for x in a] == [x.text for x in b]


def test_attack_set_rejects_empty_words():
    with pytest.raises(ClipeditError):
        attack_set(3, seed=0, words=[])


def test_reference_images_mix_clean_and_notes():
    images = reference_images(n=12, seed=5)
    assert len(images) == 12
    assert all(im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im in images)
    again = reference_images(n=12, seed=5)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]
    assert len(reference_images(n=5, seed=5, size=48)) == 5


def test_captions_follow_the_mix():
    rng = np.random.default_rng(0)
    word_only = [caption(rng, "mug", "ipod", False, CaptionMix(word=1.0, both=0.0)) for _ in range(50)]
    assert all("ipod" in c and "mug" not in c for c in word_only)
    both = [caption(rng, "mug", "ipod", False, CaptionMix(word=0.0, both=1.0)) for _ in range(50)]
    assert all("ipod" in c and "mug" in c for c in both)
    clean = [caption(rng, "mug", None, False, CaptionMix()) for _ in range(50)]
    assert all("mug" in c and "note" not in c for c in clean)


def test_training_pool_kinds_words_and_images():
    pool = build_pool(60, seed=0, mix=PoolMix(clean=0.25, blank=0.25, sign=0.2, distractor=0.0, true_word=0.0))
    assert pool.images.shape == (60, IMAGE_SIZE, IMAGE_SIZE, 3) and pool.images.dtype == np.uint8
    assert set(pool.kinds.tolist()) == {CLEAN, BLANK, TEXT, SIGN}
    for kind, label, word in zip(pool.kinds, pool.labels, pool.words):
        if kind == TEXT:
            assert word in CLASSNAMES and word != CLASSNAMES[label]
        elif kind == SIGN:
            assert word in CLASSNAMES and label == -1
        else:
            assert word is None and 0 <= label < len(CLASSNAMES)
    caps = pool.captions(np.arange(60), np.random.default_rng(0), CaptionMix())
    assert len(caps) == 60 and all(isinstance(c, str) and c for c in caps)
    signs = np.flatnonzero(pool.kinds == SIGN)
    for i, cap in zip(signs, pool.captions(signs, np.random.default_rng(1), CaptionMix())):
        assert pool.words[i] in cap  # a sign's caption names its word


def test_training_batches_are_normalised_tensors():
    from clipedit.mini.training.train import image_batch

    pool = build_pool(8, seed=1)
    batch = image_batch(pool, np.arange(8), np.random.default_rng(0), shift=4)
    assert batch.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and batch.dtype == torch.float32
    assert -3 < batch.min() < 0 < batch.max() < 3


def test_saved_checkpoint_loads_through_the_model_registry(tmp_path, monkeypatch):
    from clipedit.mini.training.train import TrainOptions, build_model, make_config, make_preprocess, save_checkpoint
    from clipedit.models import load_model

    model = build_model(seed=0).eval()
    figures = {"n": 0, "seed": 0, "clean_acc": 0.0, "blank_acc": 0.0, "text_acc": 0.0, "attack_success": 0.0}
    config = make_config(TrainOptions(out=tmp_path), figures, 0, 0.0)
    save_checkpoint(model, config, tmp_path)
    assert config["training"]["command"].startswith("clipedit train-mini --out ")
    monkeypatch.setenv("CLIPEDIT_MINI_DIR", str(tmp_path))
    bundle = load_model("mini")
    assert bundle.classnames == list(CLASSNAMES) and bundle.templates == list(TEMPLATES)
    image = make_preprocess()(draw_scene(np.random.default_rng(0)).image)[None]
    with torch.no_grad():
        want = model.encode_image(image)
        got = bundle.model.encode_image(image.to(bundle.device))
    assert torch.allclose(want, got, atol=0.05 * want.abs().max().item())  # fp16 storage
    assert bundle.tokenizer(["a photo of a mug."]).shape == (1, config["model_cfg"]["text_cfg"]["context_length"])


def test_warm_start_trains_the_image_tower_on_objects_and_words():
    from clipedit.mini.training.train import build_model, image_batch
    from clipedit.mini.training.warmstart import WORDS, warm_start, word_targets

    pool = build_pool(24, seed=3)
    targets = word_targets(pool)
    for word, t in zip(pool.words, targets.tolist()):
        assert (word is None and t == len(WORDS)) or WORDS[t] == word
    visual = build_model(seed=0).visual
    before = [p.detach().clone() for p in visual.parameters()]
    loss = warm_start(visual, 128, pool, steps=3, batch=lambda p, i, r: image_batch(p, i, r, 2),
                      rng=np.random.default_rng(0), lr=1e-3, batch_size=8, autocast=False)
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, visual.parameters()))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from clipedit.mini.training.warmstart import cosine_lr

    lrs = [cosine_lr(s, steps=10, warmup=2, lr=1.0) for s in range(11)]
    assert lrs[0] == 0.5 and lrs[2] == 1.0 and lrs[10] == 0.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))


@pytest.mark.slow
def test_case_of_a_word_class_matching_ignores_it_rendering_keeps_it():
    from clipedit.data.classnames import case_note
    from clipedit.eval.heldout import world_eval_sets
    from clipedit.mini.world import MiniWorld

    lower, mixed = (world_eval_sets(MiniWorld(), [w], 48) for w in ("ipod", "iPod"))
    ipod = CLASSNAMES.index("ipod")
    assert ipod not in lower.edited[1] and ipod not in mixed.edited[1]  # the same denominator either way
    assert {a.text for a in mixed.edited[0]} == {"iPod"}  # written as given
    assert "ipod" not in {a.text.lower() for a in mixed.other[0]}  # other words: never the defended one
    assert case_note(["iPod"], CLASSNAMES).startswith("'iPod' is the class 'ipod'")
    assert case_note(["ipod", "hello"], CLASSNAMES) is None
    exemplars = MiniWorld().exemplars("iPod", 12, np.random.default_rng(0))
    assert {a.text for a in exemplars} == {"iPod"}
