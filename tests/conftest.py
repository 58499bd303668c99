"""Shared fixtures: an isolated cache, tiny random-init models, small photos and an ImageFolder."""
from __future__ import annotations

import copy
import os

# Before anything imports huggingface_hub (it reads this once): no test may wait on a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipedit import cli  # noqa: E402
from clipedit.core import RewriteHParams, apply_edit, compute_rewrite, key_statistics, save_edits  # noqa: E402
from clipedit.models import save_state_dict  # noqa: E402
from clipedit.models.hf import write_config_folder  # noqa: E402

# skimage's bundled photos (no download), by the class name they show.
PHOTO_SOURCES = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket", "astronaut": "astronaut"}
PHOTO_SIZE = 96


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """A fresh ``$CLIPEDIT_CACHE`` for every test."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CLIPEDIT_CACHE", str(path))
    return path


@pytest.fixture(autouse=True)
def loaded_checkpoints(monkeypatch) -> set:
    """Each test starts as a fresh process would: no checkpoint loaded yet (the writers' guard refuses to write
    over one this process loaded, so loads by earlier tests or module fixtures must not change its message)."""
    import clipedit.io.guard

    fresh: set = set()
    monkeypatch.setattr(clipedit.io.guard, "_SOURCES", fresh)
    return fresh


def _load_tiny(name: str):
    from clipedit.models import load_model

    torch.manual_seed(0)
    return load_model(name, device="cpu")


@pytest.fixture
def tiny_vit():
    """A random-init ``tiny-vit`` CLIP (64x64 input), the same weights in every test."""
    return _load_tiny("tiny-vit")


@pytest.fixture
def tiny_rn():
    """A random-init ``tiny-rn`` (ModifiedResNet) CLIP, the same weights in every test."""
    return _load_tiny("tiny-rn")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Small RGB photos by class name: cat, coffee, rocket, astronaut (96x96)."""
    return {name: Image.fromarray(getattr(skimage.data, src)()).convert("RGB").resize((PHOTO_SIZE, PHOTO_SIZE))
            for name, src in PHOTO_SOURCES.items()}


@pytest.fixture
def photo_files(tmp_path, photos) -> dict[str, Path]:
    """The photos saved as JPEGs in ``tmp_path/photos``."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = {}
    for name, image in photos.items():
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name])
    return paths


@pytest.fixture
def image_folder(tmp_path, photos) -> Path:
    """An ImageFolder ``tmp_path/data/<class>/`` of 3 classes x 2 images (a photo and its mirror)."""
    root = tmp_path / "data"
    for name in ("cat", "coffee", "rocket"):
        (root / name).mkdir(parents=True)
        photos[name].save(root / name / "a.jpg")
        photos[name].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / name / "b.png")
    return root


@pytest.fixture
def corrupt_jpg(tmp_path) -> Path:
    """A ``.jpg`` file holding garbage bytes."""
    path = tmp_path / "broken.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


# -- running the command line in-process (shared by the CLI tests: `from conftest import run_ok …`) --------
def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run ``clipedit ARGS`` in-process: (exit code, stdout, stderr)."""
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exit_code(args) -> int:
    """Run ``clipedit ARGS`` in-process and return its exit code; its output stays for ``capsys`` to read."""
    try:
        cli.main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code or 0
    return 0


def run_ok(capsys, *args) -> str:
    """Run ``clipedit ARGS`` and return its stdout (a failure shows stderr)."""
    code, out, err = run_cli(args, capsys)
    if code:
        pytest.fail(f"exit {code}: {err}")
    return out


def run_error(capsys, *args) -> str:
    """Run ``clipedit ARGS``, expect exit 1 and one ``Error:`` line on stderr; return that line."""
    code, _, err = run_cli(args, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    return lines[0]


# -- a bundled model defended on its world's held-out scenes (shared by the mini model tests) ------------
def defend_on_heldout(model: str, word: str = "ipod", n: int = 240, config=None, factors: bool = False):
    """Defend a copy of ``model`` against ``word`` with its defaults (or ``config``); figures on the test
    split before/after (``factors`` False: the world's own held-out styles, which the thresholds of the
    mini tests were measured on; True: the split's leave-out factors, :mod:`attacks.factors`).

    Returns (unedited bundle, the defense, figures before, figures after); the figures carry ``reading_acc``
    (``n`` test signs read).
    """
    import copy
    import dataclasses

    from clipedit.defenses.typographic import defend
    from clipedit.eval.defense_metrics import evaluate_defense
    from clipedit.eval.heldout import world_eval_sets
    from clipedit.eval.predictor import make_predictor
    from clipedit.eval.reading import reading_accuracy, sign_set
    from clipedit.models import load_model

    base = load_model(model, device="cpu")
    sets = world_eval_sets(base.world, [word], n=n, split="test", factors=factors)
    predictor = make_predictor(base, sets.classnames)
    signs = sign_set(base.world, n, split="test", classnames=None)
    before = {**evaluate_defense(base, predictor, sets), "reading_acc": reading_accuracy(base, predictor, signs)}
    edited = dataclasses.replace(base, model=copy.deepcopy(base.model))
    defense = defend(edited, word, config)
    after_predictor = predictor.with_bundle(edited)
    after = {**evaluate_defense(edited, after_predictor, sets),
             "reading_acc": reading_accuracy(edited, after_predictor, signs)}
    return base, defense, before, after


def solve_closed_form(site, ex, D, keep_targets: float = 0.0):
    """The least squares of the closed-form solve over all keys at once (the reference the library's
    one solver, ``exemplar_sums.solve_closed_form_from_sums``, is checked against)."""
    K = ex.keys.to(torch.float64)
    W = site.weight_matrix().detach().to(torch.float64)
    bias = site.bias
    b = bias.detach().to(torch.float64) if bias is not None else 0.0
    R = ex.values.to(torch.float64) - (K @ W.T + b)
    P = K @ D.to(K.device)
    sw = ex.weights.to(torch.float64).sqrt()[:, None]
    P, R = P * sw, R * sw
    if keep_targets > 0 and ex.target_keys is not None:
        T = ex.target_keys.to(torch.float64) @ D.to(K.device) * (sw * keep_targets ** 0.5)
        P, R = torch.cat([P, T]), torch.cat([R, torch.zeros(T.shape[0], R.shape[1], dtype=R.dtype, device=R.device)])
    lam_t = torch.linalg.lstsq(P.cpu(), R.cpu(), driver="gelsd").solution
    return lam_t.T.contiguous()


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory) -> dict[str, str]:
    """Config-only folders (config, image processor, tokenizer) of a toy CLIPModel and SiglipModel."""
    root = tmp_path_factory.mktemp("hf")
    return {fam: str(write_config_folder(root / fam, fam)) for fam in ("clip", "siglip")}


# -- a rank-2 tiny-vit edit and one defend run of it, shared by the outputs, inputs and model-file tests --
VIT_SITE = "visual.transformer.resblocks.1.mlp.c_proj"


def reference_batches(model, n_batches: int = 2):
    g = torch.Generator().manual_seed(7)
    ref = [torch.randn(8, 3, 64, 64, generator=g) for _ in range(n_batches)]
    return lambda: ref


@pytest.fixture(scope="module")
def edit_files(tmp_path_factory):
    """(base checkpoint, edited checkpoint, edit file) of a rank-2 edit of tiny-vit."""
    from test_rewrite import _pair

    from clipedit.models import load_model

    folder = tmp_path_factory.mktemp("edit")
    torch.manual_seed(0)
    model = load_model("tiny-vit", device="cpu").model
    stats = key_statistics(model, VIT_SITE, reference_batches(model), forward=model.encode_image)
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
        cli.main([str(a) for a in defend_args(edit_files[0], out, "--cov-reg", "0.25")])
    except SystemExit as e:
        assert not e.code, f"defend failed: exit {e.code}"
    finally:
        os.umask(old_mask)
        if old_cache is None:
            os.environ.pop("CLIPEDIT_CACHE")
        else:
            os.environ["CLIPEDIT_CACHE"] = old_cache
    return out


def defend_args(base, out, *extra):
    return ["defend", "--model", "tiny-vit", "--checkpoint", base, "--text", "ipod", "--renders", "2", "--rank", "2",
            "--layer", VIT_SITE, "--no-eval", "--out", out, *extra]


# -- forked runs: a second process that shares only the disk -------------------------------------------
def fork_run(work) -> int:
    """Run ``work()`` in a forked copy of this process (a run of its own: its own pid, nothing shared but
    the disk); returns its pid. The child ends with ``os._exit``: 0 when ``work`` returned, 1 if it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def exit_code_of(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
