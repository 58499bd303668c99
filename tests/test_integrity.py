"""Integrity under bad input and faults (issue 11): nothing corrupt passes, nothing half-written stays.

Every test here reproduces one failure the issue lists: a tampered edit file, a traceback instead of
one ``Error:`` line, an output set that mixes runs, silently wrong data, an untrustworthy cache entry.
The fault-injection tests fill the disk mid-write (a small tmpfs when this process may mount one,
otherwise a writer patched to raise ENOSPC) and check that the output folder holds the complete
previous run or nothing new, and no temporaries.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_error
from PIL import Image
from safetensors.torch import load_file, save_file
from test_rewrite import _pair

from clipedit import cli
from clipedit.core import RewriteHParams, apply_edit, compute_rewrite, key_statistics, save_edits
from clipedit.core import statistics as stats_module
from clipedit.core.cache import cache_dir
from clipedit.io import read_safetensors_metadata
from clipedit.models import save_state_dict

VIT_SITE = "visual.transformer.resblocks.1.mlp.c_proj"


# -- helpers ---------------------------------------------------------------------------------------
def _reference(model, n_batches: int = 2):
    g = torch.Generator().manual_seed(7)
    ref = [torch.randn(8, 3, 64, 64, generator=g) for _ in range(n_batches)]
    return lambda: ref


@pytest.fixture(scope="module")
def edit_files(tmp_path_factory):
    """(base checkpoint, edited checkpoint, edit file) of a rank-2 edit of tiny-vit."""
    from clipedit.models import load_model

    folder = tmp_path_factory.mktemp("edit")
    torch.manual_seed(0)
    model = load_model("tiny-vit", device="cpu").model
    stats = key_statistics(model, VIT_SITE, _reference(model), forward=model.encode_image)
    edit = compute_rewrite(model, _pair(), RewriteHParams(layer=VIT_SITE, rank=2), stats,
                           forward=model.encode_image, meta={"model": "tiny-vit"})
    base = save_state_dict(folder / "base.safetensors", model.state_dict())
    edited_model = copy.deepcopy(model)
    apply_edit(edited_model, edit)
    edited = save_state_dict(folder / "edited.safetensors", edited_model.state_dict())
    return base, edited, save_edits(folder / "edit.safetensors", edit)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One statistics cache for this module's defend runs (they all edit the same weights)."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def base(edit_files, shared_cache, monkeypatch) -> Path:
    """The tiny-vit base checkpoint, with the module's shared cache in use."""
    monkeypatch.setenv("CLIPEDIT_CACHE", str(shared_cache))
    return edit_files[0]


@pytest.fixture(scope="module")
def defended(edit_files, shared_cache, tmp_path_factory) -> Path:
    """A completed ``defend --cov-reg 0.25`` run (umask 022) of the base checkpoint: the "previous run"."""
    out = tmp_path_factory.mktemp("defended") / "run"
    old_mask, old_cache = os.umask(0o022), os.environ.get("CLIPEDIT_CACHE")
    os.environ["CLIPEDIT_CACHE"] = str(shared_cache)
    try:
        cli.main([str(a) for a in _defend_args(edit_files[0], out, "--cov-reg", "0.25")])
    except SystemExit as e:
        assert not e.code, f"defend failed: exit {e.code}"
    finally:
        os.umask(old_mask)
        if old_cache is None:
            os.environ.pop("CLIPEDIT_CACHE")
        else:
            os.environ["CLIPEDIT_CACHE"] = old_cache
    return out


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _tamper(path: Path, out: Path, name: str, change) -> Path:
    """A copy of edit file ``path`` with tensor ``name`` changed in place by ``change``; metadata kept."""
    tensors = load_file(str(path))
    change(tensors[f"0.{name}"])  # the only member of the set the file holds
    save_file(tensors, str(out), metadata=read_safetensors_metadata(path))
    return out


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _defend_args(base, out, *extra):
    return ["defend", "--model", "tiny-vit", "--checkpoint", base, "--text", "ipod", "--renders", "2", "--rank", "2",
            "--layer", VIT_SITE, "--no-eval", "--out", out, *extra]


# -- 1. edit files are verified before use ------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda t: t.view(-1)[0].add_(1e-3), "orig_weight does not match its orig_sha256"),
    (lambda t: t.view(-1)[0].fill_(float("nan")), "NaN or inf in its orig_weight"),
])
def test_revert_refuses_an_edit_whose_original_weight_was_altered(edit_files, tmp_path, capsys, change, message):
    _, edited, edit = edit_files
    bad = _tamper(edit, tmp_path / "bad.safetensors", "orig_weight", change)
    out = tmp_path / "restored.safetensors"
    line = run_error(capsys, "revert", bad, "--model", "tiny-vit", "--checkpoint", edited, "--out", out)
    assert message in line and str(bad) in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["lambda", "directions"])
def test_apply_refuses_an_edit_whose_factors_were_altered(edit_files, tmp_path, capsys, name):
    base, _, edit = edit_files
    bad = _tamper(edit, tmp_path / "bad.safetensors", name, lambda t: t.mul_(1.5))
    out = tmp_path / "applied.safetensors"
    line = run_error(capsys, "apply", bad, "--model", "tiny-vit", "--checkpoint", base, "--out", out)
    assert "does not match its edited_sha256" in line
    assert not out.exists()


# -- 2. one line instead of a traceback ---------------------------------------------------------------
@pytest.mark.parametrize("model, layer, reason", [
    ("tiny-rn", "visual.attnpool.c_proj", "attention pooling"),
    ("tiny-rn", "visual.attnpool.q_proj", "attention pooling"),
    ("tiny-vit", "visual.transformer.resblocks.0.attn.out_proj", "MultiheadAttention"),
    ("tiny-vit", "transformer.resblocks.0.mlp.c_proj", "never called by the image forward pass"),
])
def test_unsupported_sites_say_which_are_supported(tmp_path, capsys, model, layer, reason):
    out = tmp_path / "run"
    line = run_error(capsys, "defend", "--model", model, "--layer", layer, "--text", "ipod", "--renders", "2",
                     "--rank", "1", "--no-eval", "--out", out)
    assert reason in line and "supported sites are" in line and "mlp.c_proj" in line
    assert not out.exists()


def test_nan_in_a_checkpoint_is_refused_on_load(tiny_rn, tmp_path, capsys):
    state = tiny_rn.model.state_dict()
    state["visual.layer3.0.bn3.running_var"][0] = float("nan")
    bad = save_state_dict(tmp_path / "nan.safetensors", state)
    out = tmp_path / "run"
    line = run_error(capsys, "defend", "--model", "tiny-rn", "--checkpoint", bad, "--text", "ipod",
                     "--renders", "2", "--rank", "1", "--no-eval", "--out", out)
    assert "visual.layer3.0.bn3.running_var contains NaN or inf" in line
    assert not out.exists()


def test_nan_weights_are_refused_before_solving(tiny_rn):
    from clipedit.core import resolve_site
    from clipedit.errors import SiteError

    with torch.no_grad():
        tiny_rn.model.visual.layer3[0].bn3.running_var[0] = float("nan")
    with pytest.raises(SiteError, match="bn3.running_var contains NaN or inf"):
        resolve_site(tiny_rn.model, "visual.layer3.0.conv3")


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


# -- 3. output sets are atomic: the fault-injection tests ------------------------------------------------
class DiskFull:
    """Writers that fill the disk: the ``fail_at``-th file written fails with ENOSPC after half its bytes."""

    def __init__(self, monkeypatch, fail_at: int) -> None:
        import safetensors.torch

        self.count, self.fail_at = 0, fail_at
        real_save_file, real_image_save = safetensors.torch.save_file, Image.Image.save

        def save_file_(tensors, filename, metadata=None):
            real_save_file(tensors, filename, metadata=metadata)
            self._maybe_fail(filename)

        def image_save(image, fp, format=None, **params):
            real_image_save(image, fp, format=format, **params)
            self._maybe_fail(fp)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file_)
        monkeypatch.setattr(Image.Image, "save", image_save)

    def _maybe_fail(self, filename) -> None:
        if cache_dir() in Path(filename).parents:  # the statistics cache is best effort: not counted
            return
        self.count += 1
        if self.count == self.fail_at:
            path = Path(filename)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))


def _mount_tmpfs(path: Path, size_bytes: int) -> bool:
    """Mount a tmpfs of ``size_bytes`` at ``path`` when this process may (root, a kernel that allows it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size) -> folder or None``: a tmpfs of that size (None where none can be mounted)."""
    mounted = []

    def mount(size_bytes: int):
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        if _mount_tmpfs(folder, size_bytes):
            mounted.append(folder)
            return folder
        return None

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("fail_at", [1, 2])  # the model fails / the model fits but the edit file does not
def test_defend_on_a_full_disk_keeps_the_previous_run(base, defended, tmp_path, capsys, monkeypatch, fail_at):
    out = _copy_run(defended, tmp_path / "run")
    previous = _snapshot(out)
    DiskFull(monkeypatch, fail_at)
    line = run_error(capsys, *_defend_args(base, out, "--rank", "1"))
    assert "No space left on device" in line
    assert _snapshot(out) == previous
    assert _temporaries(tmp_path) == []


def test_defend_on_a_full_disk_creates_nothing(base, tmp_path, capsys, monkeypatch):
    DiskFull(monkeypatch, fail_at=1)
    out = tmp_path / "run"
    line = run_error(capsys, *_defend_args(base, out))
    assert "No space left on device" in line
    assert not out.exists() and _temporaries(tmp_path) == []


def test_defend_on_a_real_small_disk_leaves_nothing(base, defended, tmp_path, capsys, monkeypatch, small_disk):
    sizes = {p.name: p.stat().st_size for p in defended.iterdir()}
    # Room for the new model, not for the edit file as well.
    disk = small_disk(sizes["model.safetensors"] + sizes["edit.safetensors"] // 2)
    if disk is None:  # no tmpfs here: the same fault through the patched writer
        disk = tmp_path / "disk"
        DiskFull(monkeypatch, fail_at=2)
    out = disk / "run"
    line = run_error(capsys, *_defend_args(base, out))
    assert "No space left on device" in line
    assert not out.exists() and _temporaries(disk) == []


def test_defend_replaces_an_older_run_whole_and_cleans_stale_temporaries(base, defended, tmp_path, capsys):
    out = _copy_run(defended, tmp_path / "run")
    from clipedit.io import _temp_name  # left by a killed run (a process that is gone): authenticated names

    killed = [out / _temp_name("model.safetensors", ".safetensors", owner="999999999-1"),
              tmp_path / _temp_name("run", owner="999999999-1")]
    killed[0].write_bytes(b"\0" * 1000)
    killed[1].mkdir()
    (killed[1] / "model.safetensors").write_bytes(b"\0" * 1000)
    code, _, err = run_cli(_defend_args(base, out, "--method", "finetune-local", "--steps", "1"), capsys)
    assert code == 0, err
    # The fine-tuned run has no edit file: the older run's must not stay beside its model.
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "results.json"}
    assert json.loads((out / "results.json").read_text())["method"] == "finetune-local"
    assert _temporaries(tmp_path) == []


def test_attack_on_a_full_disk_writes_nothing(tmp_path, capsys, monkeypatch, photo_files):
    out = tmp_path / "out"
    DiskFull(monkeypatch, fail_at=5)  # the second render's blank image
    line = run_error(capsys, "attack", photo_files["cat"], photo_files["coffee"], "--text", "ipod", "--out", out)
    assert "No space left on device" in line
    assert not out.exists() or not any(out.iterdir())
    assert _temporaries(tmp_path) == []


def test_attack_on_a_real_small_disk_writes_nothing(tmp_path, capsys, monkeypatch, photo_files, small_disk):
    disk = small_disk(64 * 1024)  # about two renders' images
    if disk is None:
        disk = tmp_path / "disk"
        DiskFull(monkeypatch, fail_at=5)
    out = disk / "out"
    args = ["attack", *photo_files.values(), "--text", "ipod", "--n", "3", "--out", out]
    line = run_error(capsys, *args)
    assert "No space left on device" in line
    assert not out.exists() or not any(out.iterdir())
    assert _temporaries(disk) == []


# -- 4. silent wrong data -------------------------------------------------------------------------------
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


# -- 5. the statistics cache checks its entries -----------------------------------------------------------
def _stats_entries() -> list[Path]:
    return sorted((cache_dir() / "stats").glob("*.safetensors"))


def _count_computations(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = stats_module.key_second_moment
    monkeypatch.setattr(stats_module, "key_second_moment", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("alter", [
    lambda t: t["C"].mul_(3.0),                        # altered values: a different, still valid C
    lambda t: t["C"].diagonal().fill_(-1.0),           # corrupt but parseable: not positive definite
])
def test_an_altered_cache_entry_is_recomputed_with_a_warning(tiny_vit, monkeypatch, caplog, alter):
    model = tiny_vit.model
    calls = _count_computations(monkeypatch)
    ref = _reference(model)
    true = key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    (entry,) = _stats_entries()
    tensors = load_file(str(entry))
    alter(tensors)
    save_file(tensors, str(entry), metadata=read_safetensors_metadata(entry))
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    assert torch.equal(again.C, true.C) and len(calls) == 2
    assert "does not match its digest" in caplog.text
    key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    assert len(calls) == 2  # the rewritten entry is sound


def test_a_cache_entry_made_by_other_arguments_is_recomputed(tiny_vit, monkeypatch, caplog):
    model = tiny_vit.model
    calls = _count_computations(monkeypatch)
    ref = _reference(model)
    key_statistics(model, VIT_SITE, ref, data_key="ref-a", forward=model.encode_image)
    b = key_statistics(model, VIT_SITE, lambda: ref()[:1], data_key="ref-b", forward=model.encode_image)
    a_entry, b_entry = sorted(_stats_entries(), key=lambda p: p.stat().st_mtime_ns)
    shutil.copyfile(a_entry, b_entry)  # entry of ref-a under ref-b's name
    with caplog.at_level("WARNING"):
        again = key_statistics(model, VIT_SITE, lambda: ref()[:1], data_key="ref-b", forward=model.encode_image)
    assert "made by other arguments" in caplog.text
    assert torch.equal(again.C, b.C) and len(calls) == 3


def test_defend_takes_cov_reg(defended):
    meta = read_safetensors_metadata(defended / "edit.safetensors")
    assert json.loads(meta["hparams"])["cov_reg"] == 0.25


# -- 6. no network: one line, no retries ------------------------------------------------------------------
@pytest.mark.slow  # a fresh process: open_clip's imports alone take seconds
def test_offline_download_fails_at_once_with_one_line(tmp_path, image_folder):
    # A fresh process, as a user runs it: the hub is not marked offline, its address resolves nowhere.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="https://hub.clipedit-test.invalid", HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-m", "clipedit", "audit", "--model", "ViT-B-32:openai", "--data",
                           str(image_folder), "--out", str(tmp_path / "r.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1
    assert len(lines) == 1, done.stderr  # no retry warnings before the error
    assert lines[0].startswith("Error: ") and "no network" in lines[0] and "--checkpoint" in lines[0]
    assert not (tmp_path / "r.json").exists()


# -- 7. smaller ones --------------------------------------------------------------------------------------
def test_efficientnet_lite0_refuses_unknown_tags():
    from clipedit.errors import ModelLoadError
    from clipedit.models import load_model

    with pytest.raises(ModelLoadError, match="unknown pretrained tag 'laion2b' for efficientnet-lite0"):
        load_model("efficientnet-lite0:laion2b", device="cpu")


def test_efficientnet_lite0_none_is_random_init_as_elsewhere():
    from clipedit.models import load_model

    shipped = load_model("efficientnet-lite0", device="cpu")
    shipped_again = load_model("efficientnet-lite0:imagenet", device="cpu")
    torch.manual_seed(0)
    random = load_model("efficientnet-lite0:none", device="cpu")
    assert random.pretrained == "none" and shipped.pretrained.startswith("imagenet")
    w = "conv_stem.weight"
    assert torch.equal(shipped.model.state_dict()[w], shipped_again.model.state_dict()[w])
    assert not torch.equal(shipped.model.state_dict()[w], random.model.state_dict()[w])


def test_wrong_architecture_names_the_first_missing_and_unexpected_keys(tiny_rn, tmp_path, capsys, image_folder):
    ckpt = save_state_dict(tmp_path / "rn.safetensors", tiny_rn.model.state_dict())
    line = run_error(capsys, "audit", "--model", "tiny-vit", "--checkpoint", ckpt, "--data", image_folder)
    assert "missing 31 key(s), first: visual.class_embedding" in line
    assert "unexpected 122 key(s), first: visual.bn1" in line and "wrong shape" in line


def test_a_bad_user_checkpoint_for_mini_is_not_told_to_retrain(tiny_vit, tmp_path, capsys):
    ckpt = save_state_dict(tmp_path / "vit.safetensors", tiny_vit.model.state_dict())
    line = run_error(capsys, "audit", "--model", "mini", "--checkpoint", ckpt, "--n", "4")
    assert "does not fit" in line and "missing" in line
    assert "train-mini" not in line


def test_outputs_have_the_usual_mode(defended, tmp_path, capsys, photo_files):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(["attack", photo_files["cat"], "--text", "ipod", "--out", tmp_path / "att"], capsys)
        assert code == 0, err
    finally:
        os.umask(old)
    files = [*defended.iterdir(), *(tmp_path / "att").iterdir()]
    assert len(files) == 6 and {p.stat().st_mode & 0o777 for p in files} == {0o644}
    assert {d.stat().st_mode & 0o777 for d in (defended, tmp_path / "att")} == {0o755}


def test_train_mini_never_writes_the_shipped_checkpoint_by_default():
    from clipedit.commands.train_mini import train_cmd
    from clipedit.models.mini import bundled_asset_dir

    default = next(p.default for p in train_cmd.params if p.name == "out")
    assert Path(default) == Path("runs") / "mini"
    assert Path(default).resolve() != bundled_asset_dir("mini").resolve()


def test_fp16_sources_stay_fp16_and_revert_bit_exactly(tiny_vit, tmp_path, capsys):
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_vit.model.state_dict().items()}
    base = save_state_dict(tmp_path / "base16.safetensors", state)
    out = tmp_path / "run"
    code, _, err = run_cli(_defend_args(base, out), capsys)
    assert code == 0, err
    source, edited = load_file(str(base)), load_file(str(out / "model.safetensors"))
    changed = {k for k in source if not torch.equal(source[k], edited[k])}
    assert changed == {f"{VIT_SITE}.weight"}  # every other tensor: the source's fp16 bytes
    assert edited[f"{VIT_SITE}.weight"].dtype == torch.float32  # the edit itself is not rounded away
    restored_path = tmp_path / "restored.safetensors"
    code, _, err = run_cli(["revert", out / "edit.safetensors", "--model", "tiny-vit", "--checkpoint",
                            out / "model.safetensors", "--out", restored_path], capsys)
    assert code == 0, err
    restored = load_file(str(restored_path))
    assert all(restored[k].dtype == source[k].dtype and torch.equal(restored[k], source[k]) for k in source)
    assert restored_path.stat().st_size < 1.1 * base.stat().st_size
