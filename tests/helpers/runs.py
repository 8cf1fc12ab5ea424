"""Runs of gankd-distill for tests: the tiny recipe, a run killed mid-way, its metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# `gankd-distill` in a fresh interpreter (what a user's process is), for tests that kill a run mid-way
DISTILL_CLI = [sys.executable, "-c", "import sys; from gankd.distill.cli import main; sys.exit(main())"]


def metrics_lines(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_run_after(recipe_path: Path, run_dir: Path, min_metric_lines: int, env: dict, timeout_s: float = 300
                   ) -> int:
    """Start ``gankd-distill run RECIPE``, SIGKILL it (kill -9) once ``state/last.pt`` exists and metrics.jsonl has
    more than ``min_metric_lines`` records, and return the step its last checkpoint saved."""
    proc = subprocess.Popen([*DISTILL_CLI, "run", str(recipe_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    state, metrics = run_dir / "state" / "last.pt", run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while not (state.exists() and metrics.exists() and len(metrics_lines(metrics)) > min_metric_lines):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "report.md").exists(), "the run finished before the kill"
    return torch.load(state, weights_only=True)["progress"]["position"]["step"]


def tiny_recipe_dict(teacher_dir: Path, out_dir: Path | str, **overrides) -> dict:
    """A few-step recipe (every stage, 3 steps each, batch 2 of 32 px crops, one thread) as a dict; ``overrides``
    replace or add keys (``teacher`` included)."""
    return {"name": "tiny", "teacher": str(teacher_dir), "out_dir": str(out_dir), "width": 0.5, "teacher_d_feat": 8,
            "n1": 1, "n2": 1, "n3": 1, "steps_per_epoch": 3, "batch_size": 2, "hr_size": 32, "train_crops": 6,
            "val_crops_per_image": 1, "select_by": "psnr", "checkpoint_every": 2, "log_every": 1, "threads": 1,
            "ema_decay": 0.9, **overrides}
