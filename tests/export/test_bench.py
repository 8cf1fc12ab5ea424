"""gankd-bench: statistics on known latency lists and a fake clock, interleaving, the CPU peak formula, the CLI end
to end on tiny artifacts, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gankd.distill import ModelConfig, save_model
from gankd.distill.tools.search import pareto_front
from gankd.export import bench, exporter
from gankd.export.bench import CpuPeak, interleaved_order, parse_cpu_peak
from gankd.export.cli import bench_main
from gankd.export.manifest import read_manifest, write_manifest
from gankd.serve.timing import latency_stats, measure_interleaved, percentile
from helpers.clock import FakeClock

BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------------- statistics


def test_percentile_nearest_rank_on_known_lists():
    ten = [float(v) for v in range(1, 11)]
    assert [percentile(ten, p) for p in (0, 10, 50, 90, 95, 99, 100)] == [1, 1, 5, 9, 10, 10, 10]
    hundred = [float(v) for v in range(1, 101)]
    assert [percentile(hundred, p) for p in (50, 90, 95, 99, 99.5)] == [50, 90, 95, 99, 100]
    assert percentile([7.0], 99) == 7.0
    # trtexec computes (1 - 0.9) * 10 = 0.9999999999999998 in floats and so reports the 10th value here
    assert percentile(ten, 90) == 9
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(ten, 101)


def test_percentile_agrees_with_trtexec_where_floats_are_exact():
    def trtexec(values, p):  # sampleReporting.cpp findPercentile
        exclude = int((1 - p / 100) * len(values))
        return values[max(len(values) - 1 - exclude, 0)]

    for n in (1, 2, 4, 8, 16, 64, 128):
        values = [float(v) for v in range(n)]
        for p in (50, 75, 87.5, 100):
            assert percentile(values, p) == trtexec(values, p), (n, p)


def test_latency_stats_on_a_known_list():
    stats = latency_stats([4.0, 1.0, 3.0, 2.0, 10.0])
    assert stats["runs"] == 5 and stats["min_ms"] == 1.0 and stats["max_ms"] == 10.0
    assert stats["mean_ms"] == 4.0 and stats["median_ms"] == 3.0
    assert stats["p90_ms"] == 10.0 and stats["p95_ms"] == 10.0 and stats["p99_ms"] == 10.0
    assert stats["qps"] == pytest.approx(1000 * 5 / 20)
    assert latency_stats([1.0, 2.0, 3.0, 4.0])["median_ms"] == 2.5  # even count: mean of the middle two


def test_fake_clock_iterations_give_exact_latencies_and_interleave():
    clock = FakeClock()
    a = clock.workload(0, [62.5] * 4 + [10.0, 30.0, 20.0])  # 4 warm-up runs (62.5 ms each until >= 200 ms)
    b = clock.workload(1, [300.0] + [5.0, 5.0, 7.0])  # one warm-up run already exceeds 200 ms
    latencies = measure_interleaved([a, b], warmup_ms=200, duration_s=None, iterations=3, clock=clock)
    assert latencies[0] == pytest.approx([10.0, 30.0, 20.0]) and latencies[1] == pytest.approx([5.0, 5.0, 7.0])
    assert clock.calls == [0, 0, 0, 0, 1] + [0, 1] * 3  # warm-up per row, then A B A B A B
    assert latency_stats(latencies[0])["median_ms"] == pytest.approx(20.0)


def test_fake_clock_duration_stops_after_duration_times_rows():
    clock = FakeClock()
    a = clock.workload(0, [100.0] * 100)
    b = clock.workload(1, [400.0] * 100)
    latencies = measure_interleaved([a, b], warmup_ms=0, duration_s=1.0, iterations=None, clock=clock)
    # rounds take 0.5 s; the timed phase lasts until 2 s (1 s per row) have passed: 4 rounds
    assert [len(row) for row in latencies] == [4, 4]
    assert clock.calls == [0, 1] + [0, 1] * 4  # warm-up 0 ms still runs each row once


def test_interleaved_order():
    assert interleaved_order(3, 2) == [0, 1, 2, 0, 1, 2]
    assert interleaved_order(1, 3) == [0, 0, 0]


def test_measure_needs_duration_or_iterations():
    with pytest.raises(Exception, match="either a duration or a number of iterations"):
        measure_interleaved([lambda: None], warmup_ms=0, duration_s=1.0, iterations=3)


# ----------------------------------------------------------------------------------------------- CPU peak

CPUINFO = """processor\t: {n}
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
physical id\t: 0
core id\t: {core}
cpu MHz\t\t: 2596.140
flags\t\t: fpu sse sse2 avx fma avx2 {extra}
"""


def _cpuinfo(cores: int, threads_per_core: int = 1, extra: str = "avx512f avx512_vnni") -> str:
    blocks = [CPUINFO.format(n=i, core=i // threads_per_core, extra=extra) for i in range(cores * threads_per_core)]
    return "\n".join(blocks)


def test_cpu_peak_formula():
    peak = parse_cpu_peak(_cpuinfo(2))
    assert (peak.cores, peak.lanes, peak.fma_units, peak.isa) == (2, 16, 2, "AVX-512")
    assert peak.flops_per_cycle == 64
    assert peak.gflops == pytest.approx(2 * 2.59614 * 64)
    assert "2 cores x 2.60 GHz (cpu MHz) x 2 FMA units x 16 fp32 lanes (AVX-512) x 2" in peak.formula()


def test_cpu_peak_counts_physical_cores_threads_and_max_freq():
    peak = parse_cpu_peak(_cpuinfo(4, threads_per_core=2, extra=""), max_freq_khz=3_500_000, threads=3)
    assert peak.cores == 3 and peak.lanes == 8 and peak.isa == "AVX2"
    assert peak.clock_ghz == 3.5 and peak.clock_source == "cpuinfo_max_freq"
    assert parse_cpu_peak(_cpuinfo(4, threads_per_core=2, extra="")).cores == 4  # 8 logical CPUs, 4 cores
    assert parse_cpu_peak(_cpuinfo(2), threads=8).cores == 2  # never more than the physical cores
    override = CpuPeak(model="x", cores=1, clock_ghz=1.0, clock_source="-", isa="SSE", lanes=4,
                       override_gflops=123.0)
    assert override.gflops == 123.0 and "--peak-gflops" in override.formula()


def test_pareto_front():
    points = [(10.0, 30.0), (5.0, 28.0), (20.0, 29.0), (5.0, 28.0), (1.0, 20.0)]
    assert pareto_front(points) == [0, 1, 3, 4]


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny 'teacher' (RRDB) with pt2 + onnx + int8, and a tiny SRVGG 'student' with onnx only."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench")
    teacher = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                          scale=4)
    student = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, scale=4)
    x2 = ModelConfig(arch="rrdbnet", kwargs={"scale": 2, "num_feat": 8, "num_block": 1, "num_grow_ch": 4}, scale=2)
    out = {}
    for name, config, settings in (
        ("teacher", teacher, exporter.ExportSettings(int8=True, calib_count=2, opt_shape="1x3x16x16",
                                                                    int8_min_speedup=0.0)),
        ("student", student, exporter.ExportSettings(formats=("onnx",))),
        ("x2", x2, exporter.ExportSettings(formats=("onnx",))),
    ):
        save_model(root / "models" / name, config.build(), config)
        exporter.export_model(root / "models" / name, root / name, settings, log=lambda _m: None)
        out[name] = root / name
    return out


def _bench(*args, timeout=300):
    exe = BIN / "gankd-bench"
    assert exe.exists(), "the gankd-bench console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_end_to_end(artifacts, tmp_path):
    teacher, student = artifacts["teacher"], artifacts["student"]
    proc = _bench(teacher, student, "--backends", "ort", "--shapes", "1x3x16x16,2x3x12x20", "--iterations", "3",
                  "--warmup-ms", "0", "--threads", "1", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png",
                  "--write-manifest")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    assert "| model | backend | shape | runs | qps |" in table and "p99 ms" in table and "% FP32 peak" in table
    assert "| teacher | ort-int8 | 2x3x12x20 | 3 |" in table and "| student | ort | 1x3x16x16 | 3 |" in table
    assert "FP32 peak = 1 cores x" in table and "nearest rank" in table
    result = json.loads((tmp_path / "b.json").read_text())
    rows = result["rows"]
    assert [(r["artifact"], r["backend"]) for r in rows[:3]] == [("teacher", "ort"), ("teacher", "ort-int8"),
                                                                ("student", "ort")]
    assert len(rows) == 6 and all(r["runs"] == 3 for r in rows)
    first = rows[0]
    assert first["speedup"] == 1.0 and first["psnr_to_first_db"] is None
    assert rows[1]["psnr_to_first_db"] > 30 and rows[2]["psnr_to_first_db"] is not None
    # the INT8 row's quality cost next to its speed: float PSNR to its own fp32 row, on the real photo crop
    assert rows[1]["psnr_to_own_fp32_db"] > 40 and rows[0]["psnr_to_own_fp32_db"] is None
    assert rows[2]["psnr_to_own_fp32_db"] is None and "PSNR→own fp32 dB" in table
    for r in rows:
        assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["gflops"] > 0
        assert (r["peak_fraction"] > 0) if r["backend"] == "ort" else r["peak_fraction"] is None  # fp32 rows only
    macs = read_manifest(teacher)["compute"]["macs_per_input_pixel"] * 16 * 16
    assert first["gflops"] == pytest.approx(2 * macs / (first["median_ms"] / 1e3) / 1e9)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = read_manifest(teacher)["bench"]
    assert {(r["backend"], tuple(r["shape"])) for r in stored["results"]} == {
        ("ort", (1, 3, 16, 16)), ("ort-int8", (1, 3, 16, 16)), ("ort", (2, 3, 12, 20)), ("ort-int8", (2, 3, 12, 20))}
    assert "formula" in stored["cpu"]


def test_reference_model_folder_is_exported_and_measured_in_the_same_run(artifacts, tmp_path):
    """--reference takes a model folder (exported to a temporary artifact first) or an artifact folder; its rows
    join the interleaved run, with PSNR and sharpness (VoL) against the first artifact."""
    models = artifacts["teacher"].parent / "models"
    proc = _bench(artifacts["teacher"], "--reference", models / "student", "--reference", artifacts["x2"].parent /
                  "student", "--backends", "ort", "--variants", "fp32", "--shapes", "1x3x16x16", "--iterations", "2",
                  "--warmup-ms", "0", "--threads", "1", "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["artifact"] for r in rows] == ["teacher", "student", "student'"]  # a repeated name is primed
    assert rows[1]["psnr_to_first_db"] == pytest.approx(rows[2]["psnr_to_first_db"], abs=1e-3)  # the same model
    assert rows[1]["vol_to_first"] > 0 and rows[0]["vol_to_first"] is None and "VoL/first" in proc.stdout
    bad = _bench(artifacts["teacher"], "--reference", tmp_path, "--iterations", "1")
    assert bad.returncode == 2 and "neither a model folder" in bad.stderr


def test_truncated_onnx_is_one_line(artifacts, tmp_path):
    """A damaged model.onnx (cut in half) gives one line naming the file, not ONNX Runtime's traceback."""
    import shutil

    copy = tmp_path / "student"
    shutil.copytree(artifacts["student"], copy)
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    proc = _bench(copy, "--backends", "ort", "--shapes", "1x3x16x16", "--iterations", "1", "--warmup-ms", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "model.onnx cannot be loaded" in proc.stderr


def test_torch_backend_and_variants_filter(artifacts):
    result = bench.benchmark([artifacts["teacher"]], bench.BenchSettings(
        backends=("torch", "ort"), shapes=((1, 3, 8, 8),), variants=("fp32",), warmup_ms=0, duration_s=None,
        iterations=2, threads=1), log=lambda _m: None)
    assert [r["backend"] for r in result["rows"]] == ["torch", "ort"]
    assert result["rows"][0]["speedup"] == 1.0 and result["rows"][1]["speedup"] == 1.0


def test_write_manifest_replaces_same_backend_and_shape(artifacts):
    settings = bench.BenchSettings(backends=("ort",), shapes=((1, 3, 8, 8),), variants=("fp32",), warmup_ms=0,
                                   duration_s=None, iterations=1, threads=1)
    for _ in range(2):
        bench.write_to_manifests(bench.benchmark([artifacts["student"]], settings, log=lambda _m: None))
    results = read_manifest(artifacts["student"])["bench"]["results"]
    assert [(r["backend"], r["shape"]) for r in results].count(("ort", [1, 3, 8, 8])) == 1


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["--backends", "ort,tvm"], "error: unknown backend 'tvm'; backends: torch, ort, ort-cuda, trt"),
    (["--shapes", "1x3x64"], "shape must look like NxCxHxW"),
    (["--shapes", "1x1x16x16", "--backends", "ort"], "takes 3 channels, not 1"),
    (["--variants", "int4"], "error: unknown variant 'int4'"),
    (["--iterations", "2", "--duration-s", "1"], "error: give --duration-s or --iterations, not both"),
])
def test_bad_input_one_line(artifacts, capsys, args, message):
    assert bench_main([str(artifacts["teacher"]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    if err.startswith("error: "):
        assert err.count("\n") == 1


def test_missing_artifacts_and_files(artifacts, tmp_path, capsys):
    assert bench_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: artifact folder '{tmp_path / 'nope'}' does not exist\n"
    (tmp_path / "plain").mkdir()
    assert bench_main([str(tmp_path / "plain")]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert bench_main([str(artifacts["student"]), "--backends", "torch", "--iterations", "1"]) == 2
    assert "has no model.pt2: the torch backend needs it" in capsys.readouterr().err
    assert bench_main([str(artifacts["x2"]), "--backends", "ort", "--shapes", "1x3x15x16", "--iterations", "1"]) == 2
    assert "needs H and W to be multiples of 2" in capsys.readouterr().err


def test_deleted_file_is_named(artifacts, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifacts["student"], copy)
    (copy / "model.onnx").unlink()
    assert bench_main([str(copy), "--backends", "ort", "--iterations", "1"]) == 2
    assert "the manifest lists onnx but model.onnx is missing" in capsys.readouterr().err


def test_shape_outside_engine_profile(artifacts, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifacts["student"], copy)
    manifest = read_manifest(copy)
    manifest["files"]["trt"] = {"path": "model.gpu.10.0.plan", "sha256": "0", "bytes": 0, "gpu": "GPU",
                                "tensorrt": "10.0", "precision": "fp32",
                                "profile": {"min": [1, 3, 16, 16], "opt": [1, 3, 64, 64], "max": [1, 3, 128, 128]}}
    write_manifest(copy, manifest)
    art = bench.load_artifacts([copy])[0]
    bench.check_shape(art, (1, 3, 64, 64), ("trt",))
    with pytest.raises(Exception, match="shape 1x3x256x256 is outside the profile of engine model.gpu.10.0.plan"):
        bench.check_shape(art, (1, 3, 256, 256), ("trt",))


def test_cuda_backends_unavailable_say_what_is_missing(artifacts, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert bench_main([str(artifacts["teacher"]), "--backends", "trt", "--iterations", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: the trt backend needs the tensorrt Python package")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available():
        pytest.skip("this machine has ONNX Runtime CUDA: the ort-cuda backend is available")
    assert bench_main([str(artifacts["teacher"]), "--backends", "ort-cuda", "--iterations", "1"]) == 2
    assert "error: the ort-cuda backend needs" in capsys.readouterr().err


# --- --sweep: cost against image size, whole and tiled --------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_artifacts(tmp_path_factory):
    from helpers.models import sr_artifact

    root = tmp_path_factory.mktemp("sweep")
    small = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 2, "upscale": 4}, scale=4)
    large = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 16, "num_conv": 4, "upscale": 4}, scale=4)
    return sr_artifact(root / "large", large), sr_artifact(root / "small", small)


def test_sweep_times_whole_and_tiled_rows_with_memory_and_a_plot(sweep_artifacts, tmp_path, capsys):
    from gankd.export import sweep

    teacher, student = sweep_artifacts
    json_path, plot_path = tmp_path / "s.json", tmp_path / "s.png"
    code = bench_main([str(teacher), str(student), "--sweep", "--sweep-sizes", "24,40x56", "--tile", "16",
                       "--backends", "ort", "--iterations", "2", "--json", str(json_path), "--plot", str(plot_path)])
    out = capsys.readouterr().out
    assert code == 0 and plot_path.stat().st_size > 0 and "tiled / whole" in out
    result = json.loads(json_path.read_text())
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 2  # sizes x artifacts x (whole, tiled)
    for r in rows:
        assert r["median_ms"] > 0 and r["runs"] >= 1 and not r["projected"] and r["peak_rss_mb"] > 0
        out_px = r["input_hw"][0] * r["input_hw"][1] * 16
        assert r["mpx_per_s_out"] == pytest.approx(out_px / 1e6 / (r["median_ms"] / 1e3))
        assert (r["tiling_overhead"] is None) == (r["mode"] == "whole")
    first = next(r for r in rows if r["size"] == "24" and r["mode"] == "tiled")
    assert sweep.median_ms(result, first["artifact"], "ort", "24", "tiled") == first["median_ms"]
    assert first["speedup"] == pytest.approx(1.0)  # the first artifact is the reference of its mode


def test_sweep_projects_runs_over_the_cap_instead_of_running_them(sweep_artifacts):
    from gankd.export import sweep

    teacher, _ = sweep_artifacts
    result = sweep.sweep([teacher], ("ort",), ("16", "32", "64"), tile=16, max_run_s=1e-9, log=lambda _m: None)
    whole = [r for r in result["rows"] if r["mode"] == "whole"]
    assert [r["projected"] for r in whole] == [False, True, True] and whole[0]["runs"] == 1
    # linear in pixels from the measured size
    assert whole[1]["median_ms"] == pytest.approx(whole[0]["median_ms"] * 4)
    assert whole[2]["median_ms"] == pytest.approx(whole[0]["median_ms"] * 16)


@pytest.mark.parametrize("text,message", [("", "is empty"), ("64,3", "'3' is not N, HxW or photo"),
                                          ("64,axb", "'axb' is not")])
def test_sweep_sizes_are_checked(text, message):
    from gankd.distill.errors import GankdError
    from gankd.export import sweep

    with pytest.raises(GankdError, match=message):
        sweep.parse_sizes(text)
