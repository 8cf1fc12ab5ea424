"""Shared fixtures: tiny, randomly initialised configs of every registered arch (CPU-fast); per session, the tiny
teacher, the tiny recipe and the exported artifacts several test files use.

tests/ mirrors the packages (distill/{models,data,train,report,tools}, export, serve); cross-cutting tests (layering,
CLI, bad input, docs) stay here. This file holds fixtures only; the functions tests share are in ``helpers/``
(pytest puts this folder on sys.path, so tests import ``helpers.X`` by name; test file basenames are unique across
folders; ``helpers`` is the one package). The tests run offline and leave the user's ~/.cache alone (below)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gankd.distill import ModelConfig

from helpers.runs import tiny_recipe_dict

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the demo tests build Gradio apps: no telemetry calls


@pytest.fixture(autouse=True, scope="session")
def _no_user_cache(tmp_path_factory):
    """serve's runtime-order cache (``$XDG_CACHE_HOME/gankd``) goes to a temporary folder, for this process and the
    subprocesses tests start; real photos fetched by ``make photos`` stay where they are found."""
    from gankd.distill.data.photos import photos_dir

    saved = {key: os.environ.get(key) for key in ("XDG_CACHE_HOME", "GANKD_PHOTOS")}
    os.environ["GANKD_PHOTOS"] = str(photos_dir())
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
