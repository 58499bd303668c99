"""Key statistics and audit counts sharded over 2 CPU ranks (gloo, launched by torchrun) equal one process's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file

from clipedit import cli
from clipedit.core.distributed import all_reduce_sum, rank_and_world, shard, shard_bounds, shard_iterable

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_outside_a_process_group_the_helpers_are_the_identity():
    assert rank_and_world() == (0, 1)
    assert shard_bounds(7) == (0, 7) and list(shard(range(7))) == list(range(7))
    assert list(shard_iterable(iter("abc"))) == ["a", "b", "c"]
    t = torch.arange(3.0)
    assert all_reduce_sum(t) is t


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory) -> Path:
    """Seven small photos (an odd number of batches of two)."""
    folder = tmp_path_factory.mktemp("reference")
    for i, name in enumerate(("chelsea", "coffee", "rocket", "astronaut", "horse", "camera", "moon")):
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((48 + 8 * i, 64)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory, reference_folder) -> Path:
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CLIPEDIT_CACHE": str(tmp_path_factory.mktemp("rank_cache"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(out), str(reference_folder)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(ranks_dir) -> list[dict]:
    return [torch.load(ranks_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process() -> dict:
    sys.path.insert(0, str(WORKER.parent))
    try:
        from distributed_worker import workload
    finally:
        sys.path.remove(str(WORKER.parent))
    return workload()


@pytest.mark.slow
def test_two_ranks_give_the_one_process_key_statistics(two_ranks, one_process):
    for rank in two_ranks:
        assert rank["world"] == 2 and one_process["world"] == 1
        assert rank["n"] == one_process["n"]
        assert torch.allclose(rank["C"], one_process["C"], rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # shares the torchrun launch (two processes) of the test above
def test_two_ranks_give_the_one_process_audit(two_ranks, one_process):
    single = one_process["audit"]
    assert single["n"] == 14 and single["n_text"] > 0
    for rank in two_ranks:
        # the same predictions scored by the same code: every count and rate is equal
        assert rank["audit"] == single


@pytest.mark.slow  # shares the torchrun launch (two processes) of the test above
def test_stats_command_under_torchrun_equals_one_process(ranks_dir, reference_folder, tmp_path, capsys):
    single = tmp_path / "single.safetensors"
    torch.manual_seed(0)  # tiny-vit's weights: the same seed as the ranks'
    cli.main(["stats", "--model", "tiny-vit", "--device", "cpu", "--reference", str(reference_folder),
              "--batch-size", "2", "--out", str(single)])
    assert "keys from 7 images on 1 rank(s)" in capsys.readouterr().out
    sharded, one = load_file(str(ranks_dir / "stats.safetensors")), load_file(str(single))
    assert int(sharded["n_keys"]) == int(one["n_keys"]) == 7 * 65
    assert torch.allclose(sharded["C"], one["C"], rtol=1e-12, atol=1e-14)


def test_stats_command_fills_the_cache_that_defend_reads(reference_folder, monkeypatch):
    from clipedit.core import statistics as stats_module
    from clipedit.defenses.typographic import DefenseConfig, reference_statistics
    from clipedit.models import load_model

    layer = "visual.transformer.resblocks.1.mlp.c_proj"
    torch.manual_seed(0)
    cli.main(["stats", "--model", "tiny-vit", "--device", "cpu", "--reference", str(reference_folder),
              "--layer", layer])
    monkeypatch.setattr(stats_module, "key_second_moment", lambda *a, **k: pytest.fail("computed again"))
    torch.manual_seed(0)
    stats = reference_statistics(load_model("tiny-vit", device="cpu"), layer, DefenseConfig(reference=reference_folder))
    assert stats.layer == layer and stats.n_keys == 7 * 65


@pytest.mark.slow
def test_audit_under_torchrun_reports_the_one_process_figures(tmp_path, capsys):
    """``torchrun -m clipedit audit``: 2 gloo ranks share the rendered attacks; rank 0 writes the one-process result."""
    from conftest import run_ok

    single = tmp_path / "one.json"
    run_ok(capsys, "audit", "--model", "mini", "--scenes", "24", "--out", single)
    sharded = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clipedit", "audit", "--model", "mini", "--scenes", "24", "--out", str(sharded)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("attack success") == 1  # only rank 0 prints
    import json

    one, two = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert two["metrics"] == one["metrics"] and two["by_word"] == one["by_word"]
