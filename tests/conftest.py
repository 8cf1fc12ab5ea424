"""Shared fixtures: tiny, randomly initialised configs of every registered arch (CPU-fast); per session, the tiny
teacher, the tiny recipe and the exported artifacts several test files use.

tests/ mirrors the packages (distill/{models,data,train,report,tools}, export, serve); cross-cutting tests (layering,
CLI, bad input, docs) stay here. pytest puts this folder on sys.path, so every test file imports ``conftest`` and
the ``helpers`` package by name; test file basenames are unique across folders (no __init__.py files)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gankd.distill import ModelConfig, list_archs
from gankd.distill.models.registry import family_task, get_arch

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# Small enough for a full forward+backward in milliseconds, shaped like the real archs.
TINY_KWARGS = {
    "rrdbnet": [
        {"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8},
        {"scale": 2, "num_feat": 16, "num_block": 1, "num_grow_ch": 8},  # x2plus layout: pixel-unshuffled input
        {"scale": 1, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    ],
    "srvgg_compact": [
        {"num_feat": 16, "num_conv": 2, "upscale": 4},
        {"num_feat": 8, "num_conv": 1, "upscale": 2, "act_type": "leakyrelu"},
    ],
    "span": [
        {"feature_channels": 8, "upscale": 4},
        {"feature_channels": 6, "upscale": 2, "norm": False},  # the no_norm layout (its buffer is in the state)
    ],
    # a foreign teacher: a spandrel PLKSR (CNN, no size requirement) rebuilt from its recorded hyper-parameters
    "spandrel": [{"architecture": "PLKSR", "model_class": "PLKSR", "hyperparameters": {"dim": 8, "n_blocks": 1},
                  "scale": 4}],
    "unet_discriminator_sn": [{"num_feat": 8}],
    "stylegan2_generator": [{"size": 32, "style_dim": 32, "n_mlp": 2, "narrow": 0.0625}],
    "stylegan2_discriminator": [{"size": 32, "narrow": 0.0625}],
    "gcfsr": [{"out_size": 32, "num_style_feat": 32, "narrow": 0.0625}],
}



def tiny_configs() -> list[ModelConfig]:
    missing = set(list_archs()) - set(TINY_KWARGS)
    assert not missing, f"registered archs without a tiny test config: {missing}"
    out = []
    for arch, variants in TINY_KWARGS.items():
        for kwargs in variants:
            task = family_task(get_arch(arch).family)
            scale = kwargs.get("scale", kwargs.get("upscale")) if arch in ("rrdbnet", "srvgg_compact", "span",
                                                                            "spandrel") \
                else None
            out.append(ModelConfig(arch=arch, kwargs=kwargs, task=task, scale=scale,
                                   input_range=(0.0, 1.0) if task == "sr" else (-1.0, 1.0)))
    return out


def config_id(config: ModelConfig) -> str:
    return config.arch + "-" + "-".join(f"{k}{v}" for k, v in config.kwargs.items())


def inputs_for(config: ModelConfig, size: int = 16, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """What the model takes: LR images (sr), (LQ face, scale) (GCFSR), z (StyleGAN2 G), images (discriminators)."""
    gen = torch.Generator().manual_seed(0)
    if config.arch == "stylegan2_generator":
        return (torch.randn(batch, config.kwargs["style_dim"], generator=gen),)
    if config.arch == "gcfsr":
        size = config.kwargs["out_size"]
        return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1, torch.tensor([8.0, 32.0, 16.0, 4.0][:batch])
    if config.kind == "discriminator":
        size = config.kwargs.get("size", 32)
    return (torch.rand(batch, 3, size, size, generator=gen),)


def input_for(config: ModelConfig, size: int = 16, batch: int = 2) -> torch.Tensor:
    """The single image input of an SR generator or a discriminator."""
    return inputs_for(config, size, batch)[0]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine two OpenMP threads can wait on each other for hundreds of ms."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


def sr_artifact(root: Path, config: ModelConfig, simplify: bool = False) -> Path:
    """A tiny SR model (seeded, output biased off zero so a wrong pipeline shows) saved and exported to ONNX under
    ``root``; returns the artifact folder. The serve tests' shared artifact."""
    from gankd.distill import save_model
    from gankd.export import exporter

    torch.manual_seed(0)
    model = config.build()
    with torch.no_grad():
        model.body[-1].bias.add_(0.5)
    model_dir = save_model(root / "model", model, config)
    exporter.export_model(model_dir, root / "art", exporter.ExportSettings(formats=("onnx",), simplify=simplify),
                          log=lambda _msg: None)
    return root / "art"


def assert_same_output_under_threads(session, images: list, tile: int = 16, rounds: int = 3) -> None:
    """One Session shared by one thread per image, started together, ``rounds`` runs each: every run equals the
    image's single-threaded output (tiles of concurrent requests never mix)."""
    import threading

    import numpy as np

    expected = [session.run(img, tile=tile) for img in images]
    results, failures, barrier = {}, [], threading.Barrier(len(images))

    def work(i):
        barrier.wait()
        for _ in range(rounds):
            results[i] = session.run(images[i], tile=tile)
            if not np.array_equal(results[i], expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and all(np.array_equal(results[i], expected[i]) for i in range(len(images)))


# ----------------------------------------------------------------------------------------------- shared, per session
# Built once per pytest process (once per pytest-xdist worker), under tmp_path_factory. They are read-only: a test
# that changes a teacher folder or an artifact (its manifest, its files) copies it into its own tmp_path first.

TINY_TEACHER = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8},
                           task="sr", scale=4)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """The tiny RRDB x4 teacher folder (seed 1) that the run, baseline and DDP tests distil."""
    from gankd.distill import save_model

    path = tmp_path_factory.mktemp("teacher") / "tiny"
    torch.manual_seed(1)
    save_model(path, TINY_TEACHER.build(), TINY_TEACHER)
    return path


def tiny_recipe_dict(teacher_dir: Path, out_dir: Path | str, **overrides) -> dict:
    """A few-step recipe (every stage, 3 steps each, batch 2 of 32 px crops, one thread) as a dict; ``overrides``
    replace or add keys (``teacher`` included)."""
    return {"name": "tiny", "teacher": str(teacher_dir), "out_dir": str(out_dir), "width": 0.5, "teacher_d_feat": 8,
            "n1": 1, "n2": 1, "n3": 1, "steps_per_epoch": 3, "batch_size": 2, "hr_size": 32, "train_crops": 6,
            "val_crops_per_image": 1, "select_by": "psnr", "checkpoint_every": 2, "log_every": 1, "threads": 1,
            "ema_decay": 0.9, **overrides}


@pytest.fixture(scope="session")
def tiny_recipe(tiny_teacher):
    """``tiny_recipe(out_dir, **overrides)``: :func:`tiny_recipe_dict` of the :func:`tiny_teacher`."""
    return lambda out_dir, **overrides: tiny_recipe_dict(tiny_teacher, out_dir, **overrides)


_GEN = ModelConfig(arch="stylegan2_generator", kwargs={"size": 32, "style_dim": 32, "n_mlp": 2, "narrow": 0.03125},
                   task="generate", scale=None, input_range=(-1.0, 1.0))
_FACE = ModelConfig(arch="gcfsr", kwargs={"out_size": 64, "num_style_feat": 32, "narrow": 0.03125},
                    task="face_sr", scale=None, input_range=(-1.0, 1.0))
# name -> (model config, seed, SR output biased off zero, ExportSettings fields). SR outputs sit around 0.5 so the
# [0, 1] clamp hides nothing; "generate" is a teacher (psi input, fp16, the INT8 gate tried), "generate_plain" a
# student of the same style_dim without psi; "face_sr" a teacher with fp16, "face_sr_plain" a student.
SHARED_ARTIFACTS = {
    "sr": (ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, task="sr", scale=4),
           0, True, {}),
    "sr_x2": (ModelConfig(arch="rrdbnet", kwargs={"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                          task="sr", scale=2), 0, True, {}),
    "sr_rrdb": (ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                            task="sr", scale=4), 0, True, {}),
    "sr_small": (ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1, "upscale": 2}, task="sr",
                             scale=2), 0, True, {"formats": ("onnx",), "simplify": False}),
    "generate": (_GEN, 0, False, {"psi": True, "fp16": True, "int8": True, "calib_count": 8,
                                  "int8_min_speedup": 0.0}),
    "generate_plain": (_GEN, 1, False, {}),
    "face_sr": (_FACE, 0, False, {"fp16": True}),
    "face_sr_plain": (_FACE, 1, False, {}),
}


class SharedArtifacts:
    """``shared[name]`` -> (model folder, artifact folder) of :data:`SHARED_ARTIFACTS`, exported on first use;
    ``shared.manifests[name]``: the manifest the export returned."""

    def __init__(self, root: Path):
        self.root, self.built, self.manifests = root, {}, {}

    def __getitem__(self, name: str) -> tuple[Path, Path]:
        if name not in self.built:
            self.built[name] = self._export(name, *SHARED_ARTIFACTS[name])
        return self.built[name]

    def copies(self, root: Path, names: dict[str, str]) -> dict[str, tuple[Path, Path]]:
        """``{folder name: (model folder, a copy of the artifact as root/folder name)}`` for ``{folder name: shared
        name}``: for what shows folder names (the demo, Triton's model names)."""
        import shutil

        return {folder: (self[name][0], Path(shutil.copytree(self[name][1], root / folder)))
                for folder, name in names.items()}

    def _export(self, name: str, config: ModelConfig, seed: int, bias: bool, settings: dict) -> tuple[Path, Path]:
        from gankd.distill import save_model
        from gankd.export import exporter

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(seed)
            model = config.build()
            if bias:
                with torch.no_grad():
                    (model.conv_last if hasattr(model, "conv_last") else model.body[-1]).bias.add_(0.5)
            model_dir = save_model(self.root / "models" / name, model, config)
            self.manifests[name] = exporter.export_model(model_dir, self.root / name,
                                                         exporter.ExportSettings(**settings), log=lambda _msg: None)
        finally:
            torch.set_num_threads(previous)
        return model_dir, self.root / name


@pytest.fixture(scope="session")
def shared_artifacts(tmp_path_factory) -> SharedArtifacts:
    """The exported artifacts several test files use (one per task and a few SR shapes), each built once."""
    return SharedArtifacts(tmp_path_factory.mktemp("shared_artifacts"))


@pytest.fixture(scope="session")
def demo_artifacts(shared_artifacts, tmp_path_factory) -> list[Path]:
    """The demo's pair: copies of the shared x4 RRDB and x4 SRVGG named teacher and student (the demo shows folder
    names)."""
    copies = shared_artifacts.copies(tmp_path_factory.mktemp("demo"), {"teacher": "sr_rrdb", "student": "sr"})
    return [art for _, art in copies.values()]
