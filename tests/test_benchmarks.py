"""Benchmark adapters on tiny replicas of each published layout, their figures, and their bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_error, run_ok
from PIL import Image, ImageDraw

from clipedit.data.benchmarks import (
    load_benchmark_images,
    read_benchmark,
    read_manifest,
    split_spec,
    write_manifest,
)
from clipedit.errors import ClipeditError
from clipedit.eval.benchmark_metrics import evaluate_benchmark
from clipedit.eval.predictor import make_predictor


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def with_note(image: Image.Image, word: str = "") -> Image.Image:
    """``image`` with a white note, ``word`` written on it (no word: a blank note)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    draw.rectangle((20, 30, 76, 60), fill="white")
    if word:
        draw.text((24, 38), word, fill="black")
    return out


def key(r) -> tuple:
    return (r.path.resolve(), r.true_class, r.word, r.kind, r.pair)


@pytest.fixture
def triples_dir(tmp_path, photos) -> Path:
    """The paper's layout: mug_{clean,white,ipod} at the top; cat/ and rocket/ scenes in class folders."""
    root = tmp_path / "triples"
    save(root / "mug_clean.jpg", photos["coffee"])
    save(root / "mug_white.jpg", with_note(photos["coffee"]))
    save(root / "mug_ipod.jpg", with_note(photos["coffee"], "ipod"))
    for cls, word in (("cat", "rocket"), ("rocket", "cat")):
        save(root / cls / "s1_clean.png", photos[cls])
        save(root / cls / "s1_blank.png", with_note(photos[cls]))
        save(root / cls / f"s1_{word}.png", with_note(photos[cls], word))
    save(root / "cat" / "s2_big-mug.png", with_note(photos["cat"], "big mug"))
    return root


# --- one replica per layout ---

def test_rta100_reads_label_and_text_from_file_names(tmp_path, photos):
    data = tmp_path / "rta100" / "ours" / "data"  # where the Defense-Prefix loader reads it
    save(data / "label=cat_text=rocket.png", with_note(photos["cat"], "rocket"))
    save(data / "label=coffee mug_text=cat.jpg", with_note(photos["coffee"], "cat"))
    bench = read_benchmark(f"rta100:{tmp_path / 'rta100'}")
    got = sorted((r.path.name, r.true_class, r.word, r.kind) for r in bench.records)
    assert got == [("label=cat_text=rocket.png", "cat", "rocket", "attacked"),
                   ("label=coffee mug_text=cat.jpg", "coffee mug", "cat", "attacked")]
    assert bench.classnames() == ["cat", "coffee mug", "rocket"]  # true classes and written words


def test_paint_reads_its_typographic_attacks_folder(tmp_path, photos):
    root = tmp_path / "paint"
    save(root / "typographic_attacks" / "label=dog_text=cat.png", with_note(photos["cat"], "cat"))
    save(root / "label=not_text=read.png", photos["cat"])  # outside the folder the loaders read
    bench = read_benchmark(f"paint:{root}")
    assert [(r.true_class, r.word) for r in bench.records] == [("dog", "cat")]


def test_disentangling_reads_annotations_json(tmp_path, photos):
    root = tmp_path / "dis" / "typographic_attack_dataset"
    save(root / "images" / "IMG_1.JPG", with_note(photos["coffee"], "good"))
    save(root / "images" / "IMG_2.JPG", photos["coffee"])
    (root / "annotations.json").write_text(json.dumps({
        "IMG_1.JPG": {"true object": "cup", "typographic attack label": "good"},
        "IMG_2.JPG": {"true object": "cup", "typographic attack label": ""}}))
    bench = read_benchmark(f"disentangling:{tmp_path / 'dis'}")
    assert [(r.path.name, r.true_class, r.word, r.kind) for r in bench.records] == [
        ("IMG_1.JPG", "cup", "good", "attacked"), ("IMG_2.JPG", "cup", None, "clean")]


def test_scam_reads_metadata_csv_with_its_three_variants(tmp_path, photos):
    folder = tmp_path / "scam" / "images" / "train"
    rows = [("SCAM", "img_0001", "cat", "rocket"), ("NoSCAM", "img_0001", "cat", "rocket"),
            ("SynthSCAM", "img_0001", "cat", "rocket"), ("SCAM", "img_0002", "tea pot", "bike")]
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "type", "object_label", "attack_word", "postit_area_pct", "id"])
        for kind, scene, obj, word in rows:
            save(folder / f"{kind}_{scene}.jpg", photos["cat"])
            writer.writerow([f"{kind}_{scene}.jpg", kind, obj, word, "1.5", f"{kind}_{scene}"])
    records = read_benchmark(f"scam:{tmp_path / 'scam'}").records
    assert [(r.kind, r.true_class, r.word, r.pair) for r in records] == [
        ("attacked", "cat", "rocket", "img_0001"), ("clean", "cat", None, "img_0001"),
        ("synthetic", "cat", "rocket", "img_0001"), ("attacked", "tea pot", "bike", "img_0002")]
    assert all(r.path.is_file() for r in records)


def test_triples_read_clean_blank_and_written_versions(triples_dir):
    records = read_benchmark(f"triples:{triples_dir}").records
    got = sorted((r.pair, r.true_class, r.kind, r.word) for r in records)
    assert got == [("cat/s1", "cat", "attacked", "rocket"), ("cat/s1", "cat", "blank", None),
                   ("cat/s1", "cat", "clean", None), ("cat/s2", "cat", "attacked", "big mug"),
                   ("mug", "mug", "attacked", "ipod"), ("mug", "mug", "blank", None),
                   ("mug", "mug", "clean", None), ("rocket/s1", "rocket", "attacked", "cat"),
                   ("rocket/s1", "rocket", "blank", None), ("rocket/s1", "rocket", "clean", None)]


def test_manifest_round_trips_any_layout(tmp_path, triples_dir):
    records = read_benchmark(f"triples:{triples_dir}").records
    manifest = write_manifest(tmp_path / "conv" / "manifest.csv", records)
    assert sorted(map(key, read_manifest(manifest))) == sorted(map(key, records))
    assert sorted(map(key, read_benchmark(f"manifest:{manifest.parent}").records)) == sorted(map(key, records))


# --- figures ---

def test_benchmark_figures_follow_the_predictions(tiny_vit, triples_dir, tmp_path, photos):
    save(triples_dir / "cat" / "s3_cat.png", with_note(photos["cat"], "cat"))  # names its own class
    data = load_benchmark_images(read_benchmark(f"triples:{triples_dir}"), ["cat", "mug", "rocket", "ipod"])
    m = evaluate_benchmark(tiny_vit, make_predictor(tiny_vit, data.classnames), data, batch_size=4)
    pred = torch.tensor(m["predictions"])
    target = torch.tensor([data.classnames.index(r.true_class) for r in data.records])
    kinds = [r.kind for r in data.records]
    attacked = torch.tensor([k == "attacked" for k in kinds])
    counted = attacked & torch.tensor([r.word != r.true_class for r in data.records])
    words = torch.tensor([data.classnames.index(r.word) if r.word in data.classnames else -1 for r in data.records])
    targeted = counted & (words >= 0)
    assert m["n"] == 11 and m["n_attacked"] == 5 and m["n_clean"] == m["n_blank"] == 3 and m["n_skipped"] == 0
    assert m["acc1"] == pytest.approx((pred == target)[attacked].double().mean().item())
    assert m["n_text"] == 4 and m["text_acc"] == pytest.approx((pred == target)[counted].double().mean().item())
    assert m["n_word_in_classes"] == 3  # rocket, cat, ipod are classes; "big mug" is not
    assert m["attack_success_rate"] == pytest.approx((pred == words)[targeted].double().mean().item())
    clean = torch.tensor([k == "clean" for k in kinds])
    assert m["clean_acc"] == pytest.approx((pred == target)[clean].double().mean().item())
    assert "acc5" not in m  # fewer than 5 classes
    assert sum(v["n"] for v in m["by_word"].values()) == 4 and m["by_word"]["big mug"]["attack_success_rate"] is None
    assert sum(v["n_clean"] for v in m["by_class"].values()) == 3


def clip_benchmark_build(files: list[Path], output: Path) -> list[dict[str, str]]:
    """clip_benchmark's ``build`` step, reproduced line for line from ``clip_benchmark/cli.py``
    (``main_build``, LAION-AI/CLIP_benchmark): metrics copied into one row, then the record over them."""
    rows = []
    fieldnames = set()
    for path in files:
        data = json.load(open(path))
        row = {}
        row.update(data["metrics"])
        row.update(data)
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        for field in row.keys():
            fieldnames.add(field)
        rows.append(row)
    with open(output, "w") as csvfile:
        writer = csv.DictWriter(csvfile, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    with open(output, newline="") as f:
        return list(csv.DictReader(f))


def test_clip_benchmark_build_gives_a_number_per_metric_cell(capsys, tmp_path, triples_dir, image_folder):
    bench_json, rendered_json = tmp_path / "bench.json", tmp_path / "rendered.json"
    run_ok(capsys, "audit", "--model", "tiny-vit", "--dataset", f"triples:{triples_dir}", "--out", bench_json)
    run_ok(capsys, "audit", "--model", "tiny-vit", "--data", image_folder, "--out", rendered_json)
    rows = clip_benchmark_build([bench_json, rendered_json], tmp_path / "benchmark.csv")
    for path, row in zip((bench_json, rendered_json), rows):
        metrics = json.loads(path.read_text())["metrics"]
        assert {"acc1", "mean_per_class_recall", "clean_acc", "text_acc", "attack_success_rate"} <= set(metrics)
        for name, value in metrics.items():
            cell = row[name]
            assert cell == "" if value is None else float(cell) == pytest.approx(value), (name, cell)
    assert rows[0]["dataset"] == f"triples:{triples_dir}" and rows[0]["model_fullname"] == "tiny-vit none"


# --- bad input ---

def test_unreadable_images_are_skipped_and_counted(tmp_path, triples_dir, corrupt_jpg, capsys):
    broken = triples_dir / "rocket" / "s2_mug.jpg"  # sorts mid-set
    broken.write_bytes(corrupt_jpg.read_bytes())
    data = load_benchmark_images(read_benchmark(f"triples:{triples_dir}"))
    assert len(data.records) == 10 and [Path(p) for p, _ in data.skipped] == [broken]
    out = tmp_path / "r.json"
    stdout = run_ok(capsys, "audit", "--model", "tiny-vit", "--dataset", f"triples:{triples_dir}", "--out", out)
    record = json.loads(out.read_text())
    assert record["metrics"]["n_skipped"] == 1 and record["metrics"]["n"] == 10
    assert record["skipped"][0][0] == str(broken) and "skipped 1 images" in stdout
    only_broken = tmp_path / "only"
    save(only_broken / "mug_clean.jpg", Image.new("RGB", (4, 4)))
    (only_broken / "mug_clean.jpg").write_bytes(corrupt_jpg.read_bytes())
    with pytest.raises(ClipeditError, match="no image of triples"):
        load_benchmark_images(read_benchmark(f"triples:{only_broken}"))


def test_benchmark_bad_inputs_fail_in_one_line(capsys, tmp_path, triples_dir, image_folder):
    audit = ("audit", "--model", "tiny-vit", "--dataset")
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,class\nx.png,cat\n")
    assert "lacks column(s): word" in run_error(capsys, *audit, f"manifest:{manifest}")
    assert "dataset path not found" in run_error(capsys, *audit, f"rta100:{tmp_path / 'nowhere'}")
    assert "labels not in the class list: mug" in run_error(capsys, *audit, f"triples:{triples_dir}",
                                                            "--classes", "cat,rocket,ipod")
    assert "unknown dataset kind 'imagenet'" in run_error(capsys, *audit, f"imagenet:{triples_dir}")
    assert "expected KIND:PATH" in run_error(capsys, *audit, str(triples_dir))
    assert "is not named label=<class>_text=<word>" in run_error(capsys, *audit, f"rta100:{triples_dir}")
    assert "give one of --data, --photos or --dataset" in run_error(
        capsys, *audit, f"triples:{triples_dir}", "--data", image_folder)
    manifest.write_text("image,class,word,kind\nx.png,cat,,sideways\n")
    assert "unknown kind 'sideways'" in run_error(capsys, *audit, f"manifest:{manifest}")
    with pytest.raises(ClipeditError, match="unknown dataset kind"):
        split_spec("nope:/x")
