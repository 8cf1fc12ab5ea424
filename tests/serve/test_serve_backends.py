"""Session's runtimes beyond ORT and torch: ncnn (CPU and Vulkan) with its open check, ``auto`` (the measured
runtime order, recorded at export or cached per machine), TensorRT around the engine call (file, profile and shape
choice on CPU, with the engine replaced), and the ONNX Runtime factory serve and gankd-bench share.
(Tests may import distill/export to make artifacts; gankd.serve itself never does.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gankd.distill import ModelConfig, save_model
from gankd.export import exporter
from gankd.serve import ServeError, Session, auto, backends
from gankd.serve.cli import main as demo_main

from helpers.sessions import assert_same_output_under_threads

SRVGG_X4 = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, task="sr", scale=4)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test measures into its own runtime-order cache (never the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A tiny SRVGG exported as onnx, pt2 and ncnn (the export records the runtime order of this machine)."""
    import importlib.util

    if importlib.util.find_spec("pnnx") is None or importlib.util.find_spec("ncnn") is None:
        pytest.skip("the ncnn export needs pnnx and ncnn (gankd[ncnn])")  # not importorskip: serve imports ncnn
    root = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    model = SRVGG_X4.build()
    with torch.no_grad():  # outputs around 0.5 so the [0, 1] clamp hides nothing
        model.body[-1].bias.add_(0.5)
    model_dir = save_model(root / "model", model, SRVGG_X4)
    exporter.export_model(model_dir, root / "art", exporter.ExportSettings(formats=("onnx", "pt2", "ncnn")),
                          log=lambda _msg: None)
    return root / "art"


def _copy(artifact: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(artifact, tmp_path / name))


def _edit_manifest(folder: Path, change) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _photo(height: int = 40, width: int = 36) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:100 + height, 180:180 + width]).astype(np.float32) / 255


# ----------------------------------------------------------------------------------------------- ncnn


def test_ncnn_session_matches_ort_tiled_and_untiled(artifact):
    ort, ncnn = Session(artifact, backend="ort"), Session(artifact, backend="ncnn")
    assert ncnn.backend == "ncnn"
    assert ncnn.backend_note.startswith("checked at open against model.onnx: max_abs ")
    rgb = _photo()
    reference = ort.run_array(rgb)
    assert reference.std() > 0.01
    for tile in (None, 16):
        out = ncnn.run_array(rgb, tile=tile)
        assert out.shape == (160, 144, 3) and np.abs(out - reference).max() <= 2 / 255
    batch = backends.probe_input((3, 3, 20, 24))  # no batch axis in ncnn: the runner loops
    assert np.abs(ncnn.forward(batch) - ort.forward(batch)).max() <= 2 / 255


def test_one_ncnn_session_many_threads(artifact):
    session = Session(artifact, backend="ncnn")
    images = [(_photo(20 + i, 18 + i) * 255).astype(np.uint8) for i in range(4)]
    assert_same_output_under_threads(session, images)


FP16_TAG = (0x01306B47).to_bytes(4, "little")  # before each layer's fp16 weights in a .bin


def _damage_ncnn(artifact: Path, tmp_path: Path) -> Path:
    """A copy whose model.ncnn.bin has its middle half zeroed, with the manifest's sha256 updated: a pair the
    sha256 check passes, as a bad converter or a runtime that computes differently would."""
    folder = _copy(artifact, tmp_path, "damaged")
    weights = folder / "model.ncnn.bin"
    data = bytearray(weights.read_bytes())
    tags = [i for i in range(len(data) - 3) if data[i:i + 4] == FP16_TAG]  # ncnn's per-layer storage tags stay
    for i in range(len(data) // 4, 3 * len(data) // 4):
        if not any(t <= i < t + 4 for t in tags):
            data[i] = 0
    weights.write_bytes(bytes(data))
    digest = hashlib.sha256(bytes(data)).hexdigest()
    _edit_manifest(folder, lambda m: m["files"]["ncnn-bin"].update(sha256=digest))
    return folder


def test_ncnn_open_check_refuses_damaged_weights_in_one_line(artifact, tmp_path):
    damaged = _damage_ncnn(artifact, tmp_path)
    with pytest.raises(ServeError) as info:
        Session(damaged, backend="ncnn")
    line = str(info.value)
    assert "the ncnn backend's output differs from model.onnx's by max_abs" in line and "\n" not in line
    assert "the manifest's ncnn tolerance: max_abs <= 0.00784314" in line
    # negative control: unchecked (verify off), the same pair opens, and its output is really off
    unchecked = Session(damaged, backend="ncnn", verify=False)
    assert unchecked.backend_note == "not checked at open (verify off)"
    rgb = _photo(24, 24)
    assert np.abs(unchecked.run_array(rgb) - Session(artifact, backend="ort").run_array(rgb)).max() > 2 / 255
    # auto serves the next runtime, and says why: from a recorded order with ncnn first, and when measuring
    _edit_manifest(damaged, lambda m: m.update(runtime_order={auto.machine_key(None): {
        "order": ["ncnn", "ort"], "ms": {"ncnn": 1.0, "ort": 2.0}, "shape": [1, 3, 64, 64]}}))
    for _ in ("recorded", "measured"):
        session = Session(damaged, backend="auto")
        assert session.backend == "ort" and "; ncnn refused: " in session.backend_note
        _edit_manifest(damaged, lambda m: m.pop("runtime_order", None))
    assert session.backend_note.startswith("auto: ort, the only verified runtime left here; ncnn refused: ")


def test_ncnn_refusals_are_one_line(artifact, monkeypatch):
    cases = [(lambda: Session(artifact, backend="ncnn", variant="int8"), "not variant 'int8'")]
    monkeypatch.setattr(backends, "vulkan_devices", lambda: 0)
    cases.append((lambda: Session(artifact, backend="ncnn-vulkan"), "the ncnn-vulkan backend needs a Vulkan device"))
    for call, words in cases:
        with pytest.raises(ServeError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)


def test_ncnn_without_the_runtime_is_one_line(artifact, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "ncnn", raising=False)
    monkeypatch.setitem(sys.modules, "ncnn", None)  # import ncnn -> ImportError
    with pytest.raises(ServeError, match="^the ncnn backend needs the ncnn runtime .*: it is missing here$"):
        Session(artifact, backend="ncnn")


def test_ncnn_vulkan_runs_where_a_device_exists(artifact):
    if backends.vulkan_devices() < 1:
        pytest.skip("no Vulkan device here (apt-get install mesa-vulkan-drivers libvulkan1 gives lavapipe)")
    session = Session(artifact, backend="ncnn-vulkan")
    assert session.backend == "ncnn-vulkan" and session.backend_note.startswith("checked at open")
    rgb = _photo(24, 20)
    assert np.abs(session.run_array(rgb, tile=16) - Session(artifact, backend="ort").run_array(rgb)).max() <= 2 / 255


def test_ncnn_imports_with_openmp_threads_that_do_not_spin():
    """libgomp reads its wait policy when ncnn loads: serve imports ncnn with OMP_WAIT_POLICY=PASSIVE, unless the
    user set a policy, and leaves the environment as it was (seen by an audit hook on the import, in a fresh
    interpreter)."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; seen = {}\n"
            "sys.addaudithook(lambda e, a: e == 'import' and a[0] == 'ncnn' and "
            "seen.setdefault('policy', os.environ.get('OMP_WAIT_POLICY')))\n"
            "from gankd.serve.backends import require_ncnn; require_ncnn()\n"
            "print(seen['policy'], os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for extra, expected in (({}, "PASSIVE None"), ({"GOMP_SPINCOUNT": "1000"}, "None None")):
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert " ".join(out[-2:]) == expected, (extra, out)


# ----------------------------------------------------------------------------------------------- auto


def test_export_records_the_runtime_order_of_this_machine(artifact):
    order = json.loads((artifact / "manifest.json").read_text())["runtime_order"]
    entry = order[auto.machine_key(None)]
    assert sorted(entry["order"]) == ["ncnn", "ort"] and set(entry["ms"]) == {"ncnn", "ort"}
    assert entry["rounds"] >= auto.MIN_ROUNDS
    # 256x256 is measured when 64x64 was cheap (a tiny model, unless the machine is very busy); the last one decides
    sizes = ["1x3x64x64", "1x3x256x256"][:len(entry["by_shape"])]
    assert list(entry["by_shape"]) == sizes and auto.shape_text(entry["shape"]) == sizes[-1]
    session = Session(artifact)  # auto reads it: nothing is measured, nothing is cached
    assert session.backend == entry["order"][0]
    assert session.backend_note.startswith(f"auto: {entry['order'][0]}, the fastest verified runtime here (")
    assert "recorded in the manifest" in session.backend_note
    assert not auto.cache_path(session.manifest).exists()


@pytest.mark.parametrize("fastest", ["ncnn", "ort"])
def test_auto_serves_the_recorded_fastest(artifact, tmp_path, fastest):
    folder = _copy(artifact, tmp_path)
    slow = {"ncnn": "ort", "ort": "ncnn"}[fastest]
    _edit_manifest(folder, lambda m: m.update(runtime_order={auto.machine_key(None): {
        "order": [fastest, slow], "ms": {fastest: 1.0, slow: 2.0}, "shape": [1, 3, 64, 64]}}))
    session = Session(folder)
    assert session.backend == fastest
    assert f"({fastest} 1.0 ms < {slow} 2.0 ms at 1x3x64x64; recorded in the manifest)" in session.backend_note


def test_another_machine_measures_once_and_caches(artifact, tmp_path, monkeypatch):
    folder = _copy(artifact, tmp_path)
    monkeypatch.setattr(auto, "cpu_key", lambda cpuinfo=None: "AMD EPYC [avx2 fma] 2 CPUs")  # not the exporter's
    first = Session(folder)
    assert "measured now, cached in " in first.backend_note
    cache = auto.cache_path(first.manifest)
    stored = json.loads(cache.read_text())
    key = "AMD EPYC [avx2 fma] 2 CPUs, default threads"
    assert list(stored) == [key] and stored[key]["order"][0] == first.backend
    assert json.loads((folder / "manifest.json").read_text())["runtime_order"] == \
        json.loads((artifact / "manifest.json").read_text())["runtime_order"]  # the artifact is not written to
    second = Session(folder)
    assert second.backend == first.backend and f"cached in {cache}" in second.backend_note
    threads = Session(folder, threads=1)  # another thread setting is another measurement
    assert "measured now" in threads.backend_note
    assert set(json.loads(cache.read_text())) == {key, "AMD EPYC [avx2 fma] 2 CPUs, 1 threads"}


def test_an_unwritable_cache_measures_every_time(artifact, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.setattr(auto, "cpu_key", lambda cpuinfo=None: "elsewhere")
    session = Session(artifact)
    assert session.backend in ("ort", "ncnn") and "measured now, not cached" in session.backend_note


def test_auto_with_one_candidate_does_not_measure(artifact, tmp_path, monkeypatch):
    folder = _copy(artifact, tmp_path)
    _edit_manifest(folder, lambda m: [m["files"].pop(k) for k in ("ncnn", "ncnn-bin")])
    monkeypatch.setattr(auto, "race", lambda *a, **k: pytest.fail("measured with one candidate"))
    session = Session(folder)
    assert session.backend == "ort"
    assert session.backend_note == "auto: ort, the only verified runtime that can run here"
    ncnn_only = _copy(artifact, tmp_path, "noonnx")
    _edit_manifest(ncnn_only, lambda m: m["files"].pop("onnx"))  # ncnn alone; the open check's reference: pt2
    session = Session(ncnn_only)
    assert session.backend == "ncnn" and "checked at open against model.pt2" in session.backend_note


def test_auto_skips_a_runtime_whose_parity_failed(artifact, tmp_path):
    folder = _copy(artifact, tmp_path)

    def fail_ncnn(manifest):
        for result in manifest["parity"]["results"]:
            if result["artifact"] == "ncnn":
                result["passed"] = False

    manifest = _edit_manifest(folder, fail_ncnn)
    assert auto.candidates(manifest, "onnx", "fp32") == ["ort"]
    assert Session(folder).backend == "ort"
    assert Session(folder, backend="ncnn").backend == "ncnn"  # asked for by name: served (it passes the open check)


def test_machine_key_quotes_the_flags():
    zen3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\n"
    zen4 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: avx2 fma avx512f avx512bw avx512_vnni\n"
    assert auto.machine_key(None, cpuinfo=zen3) == "AMD EPYC 7B13 [avx2 fma] 2 CPUs, default threads"
    assert auto.machine_key(2, "NVIDIA H100", cpuinfo=zen4) == \
        "AMD EPYC 9B14 [avx2 fma avx512f avx512bw avx512_vnni] 1 CPUs, 2 threads + NVIDIA H100"
    assert auto.cpu_key("").startswith("unknown CPU")


def _fake_runtimes(cost_ms: dict, calls: list, now: list):
    """Forwards that advance a fake clock by cost_ms[name][side] (ms) and record their calls."""

    def forward(name):
        def run(x):
            calls.append((name, x.shape[-1]))
            now[0] += cost_ms[name][x.shape[-1]] / 1e3
        return run

    return {name: forward(name) for name in cost_ms}


def test_race_interleaves_and_orders_by_median():
    calls, now = [], [0.0]
    forwards = _fake_runtimes({"ort": {64: 3000.0}, "ncnn": {64: 1000.0}}, calls, now)
    inputs = [np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 256, 256), np.float32)]
    entry = auto.race(forwards, inputs, None, clock=lambda: now[0], budget_s=0.0)
    # one warm-up each, then A B A B; 64x64 took over LARGE_SHAPE_MAX_MS, so 256x256 is not run
    assert calls == [("ort", 64), ("ncnn", 64)] * (1 + auto.MIN_ROUNDS)
    assert entry["order"] == ["ncnn", "ort"] and entry["ms"] == {"ort": 3000.0, "ncnn": 1000.0}
    assert entry["shape"] == [1, 3, 64, 64] and list(entry["by_shape"]) == ["1x3x64x64"]


def test_race_lets_the_tile_size_decide_where_it_is_cheap():
    calls, now = [], [0.0]
    forwards = _fake_runtimes({"ort": {64: 30.0, 256: 600.0}, "ncnn": {64: 20.0, 256: 800.0}}, calls, now)
    inputs = [np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 256, 256), np.float32)]
    entry = auto.race(forwards, inputs, None, clock=lambda: now[0], budget_s=0.0)
    assert entry["order"] == ["ort", "ncnn"] and entry["shape"] == [1, 3, 256, 256]
    assert entry["by_shape"] == {"1x3x64x64": {"ort": 30.0, "ncnn": 20.0}, "1x3x256x256": {"ort": 600.0,
                                                                                         "ncnn": 800.0}}
    assert auto.describe(entry, "ort", "measured now") == (
        "auto: ort, the fastest verified runtime here (ort 600.0 ms < ncnn 800.0 ms at 1x3x256x256; at 1x3x64x64: "
        "ncnn 20.0 ms < ort 30.0 ms; measured now)")


def test_a_malformed_runtime_order_is_refused_and_a_missing_one_is_fine(artifact, tmp_path):
    folder = _copy(artifact, tmp_path)
    _edit_manifest(folder, lambda m: m.update(runtime_order=["ort"]))
    with pytest.raises(ServeError, match="'runtime_order' is not an object of measured orders"):
        Session(folder)
    _edit_manifest(folder, lambda m: m.pop("runtime_order"))  # as manifests before 2026-12
    assert Session(folder).backend in ("ort", "ncnn")


# ----------------------------------------------------------------------------------------------- the tools


def test_upscale_prints_the_backend_it_chose(artifact, tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((_photo(20, 24) * 255).astype(np.uint8)).save(src / "a.png")
    for backend, words in (("ncnn", "backend: ncnn (checked at open against model.onnx: "),
                           ("auto", "the fastest verified runtime here (")):
        assert demo_main(["upscale", str(artifact), str(src), str(tmp_path / backend), "--backend", backend,
                          "--tile", "16"]) == 0
        assert words in capsys.readouterr().err
    ort = np.asarray(Image.open(tmp_path / "auto" / "a.png")).astype(int)
    assert np.abs(np.asarray(Image.open(tmp_path / "ncnn" / "a.png")).astype(int) - ort).max() <= 2


def test_triton_resolves_auto_once_and_passes_the_choice_on(artifact, tmp_path):
    from gankd.serve.triton import TritonServer, TritonSettings, write_repository

    server = TritonServer([artifact], TritonSettings(threads=1))
    chosen = server._choose_backends()
    assert list(chosen) == ["art"] and chosen["art"][0] in ("ort", "ncnn") and chosen["art"][1].startswith("auto: ")
    write_repository([artifact], tmp_path / "repo", server.settings, {"art": chosen["art"][0]})
    config = (tmp_path / "repo" / "art" / "config.pbtxt").read_text()
    assert f'string_value: "{chosen["art"][0]}"' in config
    explicit = TritonServer([artifact], TritonSettings(backend="ncnn"))._choose_backends()
    assert explicit == {"art": ("ncnn", "")}


def test_bench_and_serve_open_onnx_with_one_factory(artifact, tmp_path):
    """gankd-bench, parity and the INT8 gate open ONNX files with serve's one factory (no export-side copy of it):
    one inter-op thread, no spinning, and a bad file is one line."""
    from helpers.paths import REPO_ROOT

    builders = sorted(str(path.relative_to(REPO_ROOT)) for folder in ("distill", "export", "serve", "demos")
                      for path in (REPO_ROOT / folder).rglob("*.py")
                      if "InferenceSession(" in path.read_text(encoding="utf-8"))
    assert builders == ["serve/backends.py"]  # any second place that opens ONNX files would show up here
    options = backends.ort_session(artifact / "model.onnx", 1).get_session_options()
    assert options.inter_op_num_threads == 1 and options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ServeError, match="cannot be loaded by ONNX Runtime"):
        backends.ort_session(tmp_path / "bad.onnx")


def test_export_runs_ncnn_in_serves_runner(artifact):
    from gankd.export.ncnn import ncnn_runner

    x = backends.probe_input((2, 3, 16, 12))
    theirs = ncnn_runner(artifact / "model.ncnn.param", artifact / "model.ncnn.bin")(x)
    ours = backends.ncnn_runner(artifact / "model.ncnn.param", artifact / "model.ncnn.bin", 1)(x)
    assert np.array_equal(theirs, ours)


# ----------------------------------------------------------------------------------------------- TensorRT


GPU, TRT_VERSION = "NVIDIA H100 80GB HBM3", "10.3.0.26"


def test_engine_file_names_and_choice():
    assert backends.engine_filename(GPU, TRT_VERSION) == "model.nvidia-h100-80gb-hbm3.10.3.0.26.plan"
    files = {"onnx": {"path": "model.onnx"},
             "trt": {"path": "model.nvidia-a100-sxm4-40gb.10.3.0.26.plan", "gpu": "NVIDIA A100-SXM4-40GB",
                     "tensorrt": TRT_VERSION},
             "trt.h100": {"path": "model.nvidia-h100-80gb-hbm3.10.3.0.26.plan", "gpu": GPU, "tensorrt": TRT_VERSION}}
    assert backends.choose_engine(files, GPU, TRT_VERSION, "'art'")[0] == "trt.h100"
    assert backends.choose_engine(files, "NVIDIA A100-SXM4-40GB", TRT_VERSION, "'art'")[0] == "trt"
    by_name = {"trt": {"path": "model.nvidia-h100-80gb-hbm3.10.3.0.26.plan"}}  # no gpu/tensorrt recorded
    assert backends.choose_engine(by_name, GPU, TRT_VERSION, "'art'")[0] == "trt"
    with pytest.raises(ServeError) as info:
        backends.choose_engine(files, GPU, "10.5.0", "'art'")
    line = str(info.value)
    assert "'art' has TensorRT engines for NVIDIA A100-SXM4-40GB (TensorRT 10.3.0.26), NVIDIA H100 80GB HBM3" in line
    assert "this machine has NVIDIA H100 80GB HBM3 with TensorRT 10.5.0 (wants " \
           "model.nvidia-h100-80gb-hbm3.10.5.0.plan): rebuild it here" in line and "\n" not in line
    with pytest.raises(ServeError, match="has no TensorRT engine for the trt backend"):
        backends.choose_engine({"onnx": {"path": "model.onnx"}}, GPU, TRT_VERSION, "'art'")


PROFILES = [backends.Profile((1, 3, 16, 16), (1, 3, 64, 64), (4, 3, 128, 128)),
            backends.Profile((1, 3, 128, 128), (1, 3, 256, 256), (1, 3, 512, 512))]


@pytest.mark.parametrize("shape, profile, size, chunk", [
    ((1, 3, 100, 64), 0, (100, 64), 1),     # inside the first
    ((6, 3, 64, 64), 0, (64, 64), 4),       # batch over its max: chunks of 4
    ((1, 3, 8, 20), 0, (16, 20), 1),        # under its min H: extended to 16
    ((1, 3, 300, 140), 1, (300, 140), 1),   # only the second takes it
    ((1, 3, 128, 128), 0, (128, 128), 1),   # both take it: the first
    ((1, 3, 100, 300), 1, (128, 300), 1),   # the second, after extension to its min H
])
def test_profile_choice(shape, profile, size, chunk):
    plan = backends.plan_shape(PROFILES, shape, "model.x.plan")
    assert (plan.profile, (plan.height, plan.width), plan.chunk) == (profile, size, chunk)


def test_a_shape_outside_every_profile_is_one_line():
    for shape in ((1, 3, 600, 64), (1, 1, 64, 64)):
        with pytest.raises(ServeError) as info:
            backends.plan_shape(PROFILES, shape, "model.x.plan")
        line = str(info.value)
        assert line.startswith(f"an input of {'x'.join(map(str, shape))} is outside every shape profile of "
                               "model.x.plan (1x3x16x16 .. 4x3x128x128; 1x3x128x128 .. 1x3x512x512)")
        assert "\n" not in line


def test_run_planned_extends_splits_and_crops():
    seen = []

    def execute(profile, x):  # an "engine" that upscales by 2, nearest
        seen.append((profile, x.shape))
        return x.repeat(2, axis=2).repeat(2, axis=3)

    x = backends.probe_input((6, 3, 10, 12))
    profiles = [backends.Profile((2, 3, 16, 16), (2, 3, 32, 32), (4, 3, 64, 64))]
    out = backends.run_planned(execute, profiles, x, 2, "model.x.plan")
    assert seen == [(0, (4, 3, 16, 16)), (0, (2, 3, 16, 16))]
    assert np.array_equal(out, x.repeat(2, axis=2).repeat(2, axis=3))
    seen.clear()
    backends.run_planned(execute, profiles, x[:1], 2, "model.x.plan")  # under the min batch: repeated, dropped
    assert seen == [(0, (2, 3, 16, 16))]


class _FakeEngine:
    """A "TensorRT engine" that runs the artifact's model.onnx in ONNX Runtime and records every input shape."""

    shapes: list = []
    zeros = False

    def __init__(self, path, input_name, output_name):
        folder = Path(path).parent
        self.run = backends.ort_runner(folder / "model.onnx", (input_name,), 1)

    def execute(self, profile, x):
        _FakeEngine.shapes.append((profile, x.shape))
        y = self.run(x)
        return np.zeros_like(y) if _FakeEngine.zeros else y


@pytest.fixture
def engine_artifact(artifact, tmp_path, monkeypatch) -> Path:
    """A copy with a TensorRT engine entry (profile 1x3x16x16 .. 1x3x48x48) for a mocked H100 / TensorRT 10.3."""
    folder = _copy(artifact, tmp_path, "engine")
    name = backends.engine_filename(GPU, TRT_VERSION)
    (folder / name).write_bytes(b"serialized engine")
    digest = hashlib.sha256(b"serialized engine").hexdigest()
    profile = {"min": [1, 3, 16, 16], "opt": [1, 3, 32, 32], "max": [1, 3, 48, 48]}
    _edit_manifest(folder, lambda m: m["files"].update(trt={"path": name, "sha256": digest, "gpu": GPU,
                                                            "tensorrt": TRT_VERSION, "precision": "fp32",
                                                            "profile": profile}))
    monkeypatch.setattr(backends, "require_trt", lambda: None)
    monkeypatch.setattr(backends, "gpu_and_trt_version", lambda: (GPU, TRT_VERSION))
    monkeypatch.setattr(backends, "TrtEngine", _FakeEngine)
    _FakeEngine.shapes, _FakeEngine.zeros = [], False
    return folder


def test_trt_session_tiles_to_fit_the_profile(engine_artifact, artifact):
    session = Session(engine_artifact, backend="trt")
    assert session.backend == "trt" and session.backend_note.startswith("checked at open against model.onnx")
    assert _FakeEngine.shapes == [(0, (1, 3, 32, 32))]  # the open check ran at the profile's opt shape
    rgb = _photo(40, 36)
    out = session.run_array(rgb)  # whole, it would be 60x56 with the pad: tiles of 48 - 2 * 10 = 28 instead
    assert np.abs(out - Session(artifact, backend="ort").run_array(rgb)).max() < 1e-4
    windows = [shape for _, shape in _FakeEngine.shapes[1:]]
    assert len(windows) == 4 and all(16 <= h <= 48 and 16 <= w <= 48 for _, _, h, w in windows)
    with pytest.raises(ServeError, match="pad 30 leaves no room for a tile in the trt backend's largest input"):
        session.run_array(rgb, pad=30)
    with pytest.raises(ServeError, match="outside every shape profile"):
        session.forward(np.zeros((1, 3, 64, 64), np.float32))


def test_trt_open_check_and_engine_mismatch(engine_artifact, monkeypatch):
    _FakeEngine.zeros = True
    with pytest.raises(ServeError, match="the trt backend's output differs from model.onnx's"):
        Session(engine_artifact, backend="trt")
    monkeypatch.setattr(backends, "gpu_and_trt_version", lambda: ("NVIDIA L4", TRT_VERSION))
    with pytest.raises(ServeError, match="this machine has NVIDIA L4 with TensorRT 10.3.0.26 .*rebuild it here"):
        Session(engine_artifact, backend="trt")


def test_trt_without_tensorrt_is_one_line(artifact):
    if backends.trt_missing() is None:
        pytest.skip("TensorRT runs here")
    with pytest.raises(ServeError) as info:
        Session(artifact, backend="trt")
    assert str(info.value).startswith("the trt backend needs the tensorrt Python package") \
        and str(info.value).endswith(": it is missing here")
