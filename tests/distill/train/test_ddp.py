"""`gankd-distill run` under torchrun (DDP, gloo, 2 processes on loopback, 1 thread each).

Two processes train what one does (the proof that sharding and gradient averaging are right, with a negative control:
a rank that trained on its rows alone, without the averaging, ends far outside the tolerance); only rank 0 writes; a
killed rank ends the other within a bounded time, and --resume finishes the run under the same N and under another
N. Each torchrun start costs 10-20 s of imports on 2 cores, so the runs are tiny and few.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gankd.distill.cli import main
from gankd.distill.train import distributed
from gankd.distill.train.distributed import World
from gankd.distill.errors import GankdError
from gankd.distill.train.recipe import recipe_from_dict
from gankd.distill.train.stages import _augment
from gankd.distill.train.loop import Loop, run
from gankd.serve.ports import free_port

TOLERANCE = 1e-4  # float summation order differs between one batch and two shards (measured 3e-6 after 9 steps);
# a rank that trains its rows alone moves weights ~8e-2
# what torchrun starts in the equality test: the real CLI in a working folder per rank, so a file that rank 1 wrote
# (to the recipe's relative out_dir or anywhere relative) would land where the test looks
WORKER = """
import os, sys
os.chdir(os.path.join(os.environ["TEST_RANK_DIRS"], "rank" + os.environ["RANK"]))
from gankd.distill.cli import main
sys.exit(main())
"""


# every stage (D_T adversarial, D_S distilled, D_S adversarial), DiffAugment, lazy R1, EMA; a global batch of 4 and
# lr 1e-3, so a step that sees the wrong rows moves the weights far beyond float noise
DDP = {"name": "ddp", "batch_size": 4, "train_crops": 8, "checkpoint_every": 100, "lr_g": 1e-3, "lr_d": 1e-3,
       "lr_mlp": 1e-3, "adversarial": "logistic", "teacher_adversarial": "logistic", "r1_every": 2,
       "diffaugment": "color,translation,cutout"}


def ddp_recipe(tiny_recipe, out_dir: str, **overrides) -> dict:
    """The shared tiny recipe (conftest) with :data:`DDP` and ``overrides``."""
    return tiny_recipe(out_dir, **{**DDP, **overrides})


def torchrun(*args: str) -> list[str]:
    """The multi-node form of the command line (c10d rendezvous at an endpoint), on loopback with a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *args]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def modules(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(run_dir / "state" / "last.pt", weights_only=True)["modules"]


def max_difference(a: Path, b: Path) -> float:
    ma, mb = modules(a), modules(b)
    assert ma.keys() == mb.keys()
    return max((ma[name][key].double() - mb[name][key].double()).abs().max().item()
               for name in ma for key in ma[name] if ma[name][key].is_floating_point())


def losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def in_process(recipe: dict, resume: bool = False) -> Path:
    return run(recipe_from_dict(recipe), resume=resume, log=lambda msg: None)


def test_rows_are_disjoint_and_cover_the_batch():
    rows = [set(range(12)[World(rank=r, size=3).rows(12)]) for r in range(3)]
    assert set.union(*rows) == set(range(12)) and sum(map(len, rows)) == 12
    with pytest.raises(GankdError, match="batch_size: a global batch of 6 does not split evenly over 4 processes"):
        World(rank=0, size=4).rows(6)


def test_diffaugment_of_a_shard_is_that_shard_of_the_global_augmentation():
    recipe = recipe_from_dict({"diffaugment": "color,translation,cutout"})
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    whole = _augment(images, recipe, 123)
    for rank in range(3):
        assert torch.allclose(_augment(images[rank::3], recipe, 123, (rank, 3)), whole[rank::3], atol=1e-6)
    # without the shard the rank would draw the first images' augmentations: the test above can fail
    assert not torch.allclose(_augment(images[1::3], recipe, 123), whole[1::3], atol=1e-3)


def test_dry_run_prints_the_world_size_and_the_per_rank_batch(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "quickstart", "batch_size=6", "--dry-run"]) == 0
    assert "# torchrun: world size 2; per-rank batch 3 (global batch_size 6)" in capsys.readouterr().out
    assert main(["run", "quickstart", "batch_size=5", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a global batch of 5 does not split evenly over 2 processes" in err
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "quickstart", "--dry-run"]) == 0
    assert capsys.readouterr().out == ""  # one rank prints


def test_torchrun_refusals_come_before_anything_is_written(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "start", lambda device: World(rank=0, size=2))  # refused before any collective
    with pytest.raises(GankdError, match="a global batch of 3 does not split evenly over 2 processes"):
        run(recipe_from_dict(ddp_recipe(tiny_recipe, str(tmp_path / "odd"), batch_size=3)))
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_what_one_does_and_only_rank_0_writes(tiny_recipe, tmp_path, monkeypatch):
    reference = in_process(ddp_recipe(tiny_recipe, str(tmp_path / "one")))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(ddp_recipe(tiny_recipe, "run")))  # relative: per rank
    for rank in (0, 1):
        (tmp_path / "ranks" / f"rank{rank}").mkdir(parents=True)
    done = subprocess.run(torchrun(str(worker), "run", str(tmp_path / "recipe.yaml")), capture_output=True,
                          text=True, timeout=240, env=env(TEST_RANK_DIRS=str(tmp_path / "ranks")))
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "ranks" / "rank1").iterdir()) == [], "rank 1 wrote files"
    two = tmp_path / "ranks" / "rank0" / "run"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert "torchrun: 2 process(es) on cpu (gloo), global batch 4 = 2 x 2 per process" in done.stderr

    assert max_difference(reference, two) < TOLERANCE  # student, EMA, adapter, D_T, D_S after 9 steps
    one, both = losses(reference), losses(two)
    assert [(r["step"], r["stage"], sorted(r)) for r in one] == [(r["step"], r["stage"], sorted(r)) for r in both]
    for a, b in zip(one, both):  # rank 0 logs the means over ranks: the global batch's losses
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["step"], key)
    # negative control: what rank 0 would train without the gradient all-reduce (its rows 0::2 of every global
    # batch, alone) ends far outside the tolerance, so the comparison above can fail
    batch = Loop.batch
    monkeypatch.setattr(Loop, "batch", lambda self, indices, pos: batch(self, indices[0::2], pos))
    alone = in_process(ddp_recipe(tiny_recipe, str(tmp_path / "alone")))
    assert max_difference(reference, alone) > 100 * TOLERANCE


def _rank_pid(parent: int, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent \
                    and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_killed_rank_ends_the_other_and_resume_finishes(tiny_recipe, tmp_path):
    recipe = ddp_recipe(tiny_recipe, str(tmp_path / "run"), steps_per_epoch=10, checkpoint_every=2,
                         diffaugment="", adversarial="vanilla", teacher_adversarial="vanilla")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    reference = in_process({**recipe, "out_dir": str(tmp_path / "reference")})
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(torchrun("-m", "gankd.distill", "run", str(tmp_path / "recipe.yaml")), stdout=log,
                            stderr=subprocess.STDOUT, env=env())
    state, metrics = tmp_path / "run" / "state" / "last.pt", tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 200
    while not (state.exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=120)
    ended_s = time.monotonic() - killed
    log.close()
    out = (tmp_path / "killed.log").read_text()
    assert ended_s < 30, f"rank 0 took {ended_s:.0f} s to stop"
    assert proc.returncode != 0 and not (tmp_path / "run" / "report.md").exists(), "the run finished before the kill"
    assert "error: rank 0 of 2: another process of this run stopped or cannot be reached" in out, out[-3000:]
    saved = torch.load(state, weights_only=True)["progress"]["position"]["step"]  # loadable, a step before the kill
    assert 0 < saved < 30
    shutil.copytree(tmp_path / "run", tmp_path / "killed")

    # the same N: torchrun --resume replays the same global batches and ends where one process ends
    resumed = subprocess.run(torchrun("-m", "gankd.distill", "run", str(tmp_path / "recipe.yaml"), "--resume"),
                             capture_output=True, text=True, timeout=240, env=env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in resumed.stderr
    assert max_difference(reference, tmp_path / "run") < TOLERANCE
    assert [r["step"] for r in losses(tmp_path / "run")] == [r["step"] for r in losses(reference)]

    # another N: the global batches do not depend on N, so one process continues the two-process run
    shutil.rmtree(tmp_path / "run")
    shutil.copytree(tmp_path / "killed", tmp_path / "run")
    in_process(recipe, resume=True)
    assert max_difference(reference, tmp_path / "run") < TOLERANCE
