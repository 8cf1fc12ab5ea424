"""``gankd-bench``: trtexec-style latency of artifact folders on one or more backends and input shapes.

Backends (each runs files of the artifact folder; none needs architecture code):

- ``torch``: ``model.pt2`` through ``torch.export.load(...).module()``, CPU.
- ``ort``: ``model.onnx`` with ONNX Runtime's CPUExecutionProvider, and, when present and not filtered out by
  ``variants``, ``model.int8.onnx`` / ``model.fp16.onnx`` as rows ``ort-int8`` / ``ort-fp16``.
- ``ort-cuda``: the same files with CUDAExecutionProvider (needs onnxruntime-gpu and a GPU).
- ``trt``: the folder's TensorRT engine (needs tensorrt and the GPU it was built on; the shape must lie in its
  profile).
- ``ncnn``: ``model.ncnn.param``/``.bin`` in the ncnn runtime (PyPI ``ncnn``) on the CPU, one image at a time, as
  realesrgan-ncnn-vulkan and Upscayl run it without a GPU (sr artifacts exported with ``--formats ncnn``).

Method (per input shape and backend, the rows of all artifacts form one group):

1. every row runs once on a real photo (:func:`gankd.export.parity.real_lr_batch`), whose output gives its
   fidelity: 8-bit PSNR (as BasicSR scores) to the group's reference row, the first artifact's fp32 row;
2. warm-up: each row runs back to back for ``warmup_ms`` (at least once);
3. timed: rounds A B A B …, each row once per round, for ``iterations`` rounds, or until the timed phase has
   lasted ``duration_s`` × (rows in the group) — interleaving makes a slow spell of a shared machine hit every
   row alike, so ratios hold;
4. statistics (:func:`latency_stats`) per row: min, mean, median, p90, p95, p99 (nearest rank, see
   :func:`percentile`), throughput in queries (batches) per second, number of timed runs; on CUDA backends also the
   mean H2D / compute / D2H (CUDA events) and enqueue time.

Derived per row: speed-up = reference median / row median; achieved GFLOP/s = 2 × MACs / median, with MACs from
the manifest (``macs_per_input_pixel`` × N·H·W; for int8/fp16 rows an effective figure); fraction of the CPU's FP32
peak for fp32 rows on CPU backends (:class:`CpuPeak`).

Tasks: one call measures artifacts of one task (the manifest's ``task``); what each row is fed comes from
:data:`gankd.export.tasks.TASKS` (``bench_inputs``), the same for every row. ``sr`` artifacts run at ``shapes``
(N×C×H×W) on a real photo. ``generate`` and ``face_sr`` artifacts have fixed-size inputs, so only a batch size
varies: ``batches`` (``--batch``; default 1). generate rows are fed z of seeds 0..N-1 (the manifest's seeding) and
psi ``tasks.BENCH_PSI`` where psi is an input, and their ``shape`` is [N, style_dim]; face_sr rows get the
astronaut's face degraded by ``tasks.BENCH_FACE_SCALE`` (the manifest's degradation, made by
``gankd.distill.data.faces``), shape [N, 3, S, S]; MACs are ``compute.macs_per_sample`` × N. Both run on the torch and
ort backends (not ort-cuda / trt).
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gankd.distill.errors import GankdError
from gankd.serve.backends import ort_session
from gankd.serve.cpu import cpuinfo_blocks, read_cpuinfo
from gankd.serve.manifest import task_of

# the one timing loop and summary (serve.timing)
from gankd.serve.timing import PERCENTILE_DEFINITION, latency_stats, measure_interleaved

from . import formats, ncnn, trt
from .manifest import artifact_file, read_manifest, write_manifest
from .tasks import TASKS, Task

BACKENDS = ("torch", "ort", "ort-cuda", "trt", "ncnn")
VARIANTS = ("fp32", "int8", "fp16")
_ONNX_FILES = {"fp32": "onnx", "int8": "onnx-int8", "fp16": "onnx-fp16"}
DEFAULT_SHAPES = ((1, 3, 64, 64),)


# ----------------------------------------------------------------------------------------------- timing


def interleaved_order(rows: int, rounds: int) -> list[int]:
    """The order in which rows run in the timed phase: 0 1 … rows-1, ``rounds`` times."""
    return [i for _ in range(rounds) for i in range(rows)]


# ----------------------------------------------------------------------------------------------- CPU peak


@dataclass(frozen=True)
class CpuPeak:
    """FP32 peak of the cores a benchmark uses:

        peak = cores × clock × FMA units × fp32 lanes per vector × 2 (an FMA is two FLOPs)

    cores: physical cores used (``--threads``, at most the physical cores, from /proc/cpuinfo); clock: the maximum
    frequency (``cpufreq/cpuinfo_max_freq`` when the kernel exposes it, else the largest ``cpu MHz`` in
    /proc/cpuinfo — under a hypervisor that is the nominal clock, so turbo can push results past 100%); lanes: 16
    with ``avx512f`` in the CPU flags, 8 with ``avx2``/``avx``, 4 otherwise; 2 FMA units per core (Intel since
    Haswell, AMD since Zen 2). AMD Zen 4 executes a 512-bit FMA as two 256-bit halves, so its real peak is half of
    this figure: pass ``--peak-gflops`` to override."""

    model: str
    cores: int
    clock_ghz: float
    clock_source: str
    isa: str
    lanes: int
    fma_units: int = 2
    override_gflops: float | None = None

    @property
    def flops_per_cycle(self) -> int:
        return self.fma_units * self.lanes * 2

    @property
    def gflops(self) -> float:
        if self.override_gflops:
            return self.override_gflops
        return self.cores * self.clock_ghz * self.flops_per_cycle

    def formula(self) -> str:
        if self.override_gflops:
            return f"FP32 peak {self.override_gflops:g} GFLOP/s (given by --peak-gflops)"
        return (f"FP32 peak = {self.cores} cores x {self.clock_ghz:.2f} GHz ({self.clock_source}) x "
                f"{self.fma_units} FMA units x {self.lanes} fp32 lanes ({self.isa}) x 2 = {self.gflops:.1f} GFLOP/s")

    def to_json(self) -> dict:
        return {**asdict(self), "flops_per_cycle": self.flops_per_cycle, "gflops": self.gflops,
                "formula": self.formula()}


def parse_cpu_peak(cpuinfo: str, max_freq_khz: int | None = None, threads: int | None = None) -> CpuPeak:
    """The :class:`CpuPeak` described by a /proc/cpuinfo text (and cpufreq's ``cpuinfo_max_freq`` in kHz)."""
    blocks = cpuinfo_blocks(cpuinfo)
    if not blocks:
        raise GankdError("cannot read the CPU description (/proc/cpuinfo is empty)")
    cores_seen = {(b.get("physical id", "0"), b.get("core id", str(i))) for i, b in enumerate(blocks)}
    physical = len(cores_seen)
    cores = min(threads, physical) if threads else physical
    if max_freq_khz:
        clock_ghz, source = max_freq_khz / 1e6, "cpuinfo_max_freq"
    else:
        mhz = [float(b["cpu MHz"]) for b in blocks if "cpu MHz" in b]
        if not mhz:
            raise GankdError("cannot read the CPU clock (no cpufreq and no 'cpu MHz' in /proc/cpuinfo)")
        clock_ghz, source = max(mhz) / 1e3, "cpu MHz"
    flags = set(blocks[0].get("flags", "").split())
    isa, lanes = ("AVX-512", 16) if "avx512f" in flags else ("AVX2", 8) if "avx2" in flags else \
        ("AVX", 8) if "avx" in flags else ("SSE", 4)
    fma_units = 2 if "fma" in flags or "avx512f" in flags else 1
    return CpuPeak(model=blocks[0].get("model name", "unknown"), cores=cores, clock_ghz=clock_ghz,
                   clock_source=source, isa=isa, lanes=lanes, fma_units=fma_units)


def read_cpu_peak(threads: int | None = None, override_gflops: float | None = None) -> CpuPeak | None:
    """This machine's :class:`CpuPeak`; None where /proc/cpuinfo does not exist (not Linux)."""
    cpuinfo = read_cpuinfo()
    if cpuinfo is None:
        return None
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    max_khz = int(freq.read_text().strip()) if freq.is_file() else None
    peak = parse_cpu_peak(cpuinfo, max_khz, threads)
    return CpuPeak(**{**asdict(peak), "override_gflops": override_gflops}) if override_gflops else peak


def physical_cores() -> int:
    peak = read_cpu_peak()
    return peak.cores if peak else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Artifact:
    path: Path
    name: str
    manifest: dict

    @property
    def task(self) -> str:
        return task_of(self.manifest)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.get("name", "input") for spec in self.manifest["inputs"])


@dataclass
class Row:
    artifact: Artifact
    backend: str  # torch, ort, ort-cuda, trt
    variant: str  # fp32, int8, fp16
    file: Path
    runner: Callable[[np.ndarray], np.ndarray] | None = None
    timings: list[dict] = field(default_factory=list)  # per-run CUDA breakdown (trt, ort-cuda)

    @property
    def label(self) -> str:
        return self.backend if self.variant == "fp32" else f"{self.backend}-{self.variant}"


@dataclass(frozen=True)
class BenchSettings:
    backends: tuple[str, ...] = ("torch", "ort")
    shapes: tuple[tuple[int, int, int, int], ...] = DEFAULT_SHAPES
    batches: tuple[int, ...] | None = None  # generate / face_sr artifacts: batch sizes (default 1)
    variants: tuple[str, ...] = VARIANTS
    warmup_ms: float = 200.0
    duration_s: float | None = 3.0
    iterations: int | None = None
    threads: int | None = None
    peak_gflops: float | None = None

    def __post_init__(self):
        for backend in self.backends:
            if backend not in BACKENDS:
                raise GankdError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise GankdError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
        if not self.backends or not self.shapes:
            raise GankdError("give at least one backend and one shape")
        if self.iterations is not None and self.iterations < 1:
            raise GankdError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise GankdError(f"--duration-s must be positive, got {self.duration_s}")
        if self.warmup_ms < 0:
            raise GankdError(f"--warmup-ms must be non-negative, got {self.warmup_ms}")
        if self.batches is not None and (not self.batches or any(b < 1 for b in self.batches)):
            raise GankdError(f"--batch takes positive batch sizes, got {list(self.batches)}")


def load_artifacts(paths: Sequence[str | Path]) -> list[Artifact]:
    artifacts, names = [], set()
    for path in map(Path, paths):
        manifest = read_manifest(path)
        name = path.resolve().name
        while name in names:  # two folders of the same name from different parents
            name = f"{name}'"
        names.add(name)
        artifacts.append(Artifact(path, name, manifest))
    return artifacts


def plan_rows(artifacts: Sequence[Artifact], settings: BenchSettings) -> list[Row]:
    """Every (artifact, backend, variant) to measure, checked before anything runs: a missing file is one line."""
    rows = []
    for backend in settings.backends:
        _check_backend_available(backend)
        for art in artifacts:
            rows += _rows_for(art, backend, settings.variants)
    return rows


def _rows_for(art: Artifact, backend: str, variants: Sequence[str]) -> list[Row]:
    files = art.manifest["files"]
    if TASKS[art.task].fixed_size and backend in ("ort-cuda", "trt", "ncnn"):
        raise GankdError(f"{art.path} is a {art.task} artifact: gankd-bench runs those on the torch and ort "
                         f"backends only, not {backend}")
    if backend == "torch":
        if "pt2" not in files:
            raise GankdError(f"{art.path} has no model.pt2: the torch backend needs it (gankd-export --formats pt2)")
        return [Row(art, backend, "fp32", _existing(art, "pt2"))]
    if backend == "ncnn":
        if "ncnn" not in files:
            raise GankdError(f"{art.path} has no ncnn pair: the ncnn backend needs it (gankd-export --formats ncnn)")
        return [Row(art, backend, "fp32", _existing(art, "ncnn"))]
    if backend == "trt":
        if "trt" not in files:
            raise GankdError(f"{art.path} has no TensorRT engine: export it with --formats trt on this GPU")
        _check_engine_matches(art)
        return [Row(art, backend, files["trt"].get("precision", "fp32"), _existing(art, "trt"))]
    if "onnx" not in files:
        raise GankdError(f"{art.path} has no model.onnx: the {backend} backend needs it (gankd-export --formats onnx)")
    return [Row(art, backend, v, _existing(art, _ONNX_FILES[v])) for v in VARIANTS
            if v in variants and _ONNX_FILES[v] in files]


def _existing(art: Artifact, kind: str) -> Path:
    path = artifact_file(art.path, art.manifest, kind)
    if path is None or not path.is_file():
        raise GankdError(f"{art.path}: the manifest lists {kind} but {path.name if path else kind} is missing")
    return path


def _check_backend_available(backend: str) -> None:
    if backend == "trt":
        trt.require("the trt backend")
    elif backend == "ncnn":
        ncnn.require_ncnn()
    elif backend == "ort-cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise GankdError("the ort-cuda backend needs onnxruntime-gpu (CUDAExecutionProvider): it is missing "
                             "here (pip install 'gankd[gpu]')")
        import torch

        if not torch.cuda.is_available():
            raise GankdError("the ort-cuda backend needs an NVIDIA GPU with CUDA: none is visible here")


def _check_engine_matches(art: Artifact) -> None:
    entry = art.manifest["files"]["trt"]
    gpu, version = trt.gpu_and_version()
    if trt.slug(entry.get("gpu", "")) != trt.slug(gpu) or entry.get("tensorrt") != version:
        raise GankdError(f"{art.path}: its engine was built for {entry.get('gpu')} with TensorRT "
                         f"{entry.get('tensorrt')}; this machine has {gpu} with TensorRT {version}: re-export here")


def check_shape(art: Artifact, shape, backends: Sequence[str]) -> None:
    """The shape must fit the artifact's input (channels, pixel-unshuffle multiple) and any engine profile."""
    spec = art.manifest["inputs"][0]
    text = "x".join(map(str, shape))
    if shape[1] != spec["shape"][1]:
        raise GankdError(f"shape {text}: {art.path} takes {spec['shape'][1]} channels, not {shape[1]}")
    multiple = int(spec.get("spatial_multiple", 1))
    if shape[2] % multiple or shape[3] % multiple:
        raise GankdError(f"shape {text}: {art.path} needs H and W to be multiples of {multiple}")
    if "trt" in backends and "trt" in art.manifest["files"]:
        entry = art.manifest["files"]["trt"]
        trt.check_in_profile(shape, trt.ShapeProfile.from_json(entry["profile"]), entry["path"])


# ----------------------------------------------------------------------------------------------- runners


class _Runners:
    """Sessions and modules made once per file and reused across shapes (ONNX and pt2 take any size)."""

    def __init__(self, threads: int):
        self.threads = threads
        self._cache: dict = {}

    def make(self, row: Row, shape) -> Callable[..., np.ndarray]:
        """A callable taking the artifact's inputs in manifest order (one array for sr artifacts)."""
        if row.backend == "torch":
            return self._cached(("torch", row.file), lambda: formats.pt2_runner(row.file))
        if row.backend == "ort":
            return self._cached(("ort", row.file),
                                lambda: formats.ort_runner(row.file, row.artifact.input_names, self.threads))
        if row.backend == "ncnn":
            weights = _existing(row.artifact, "ncnn-bin")
            return self._cached(("ncnn", row.file), lambda: ncnn.ncnn_runner(row.file, weights, self.threads))
        if row.backend == "ort-cuda":
            runner = OrtCudaRunner(row.file, shape, row.artifact.manifest, self.threads)
            row.timings = runner.timings
            return runner
        runner = trt.TrtRunner(row.file, shape)
        row.timings = runner.timings
        return runner

    def _cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


class OrtCudaRunner:
    """ONNX Runtime on CUDA with IO binding to torch CUDA buffers, the compute on our stream (``user_compute_stream``)
    so CUDA events time H2D, compute and D2H. ``run_with_iobinding`` returns when the work is done, so its enqueue
    time is the host time of that call."""

    def __init__(self, path: Path, shape, manifest: dict, threads: int):
        import torch

        self._torch = torch
        self.stream = torch.cuda.Stream()
        session = ort_session(path, threads, providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                                      provider_options=[{"device_id": 0,
                                                         "user_compute_stream": str(self.stream.cuda_stream)}, {}])
        if "CUDAExecutionProvider" not in session.get_providers():
            raise GankdError("the ort-cuda backend could not start CUDAExecutionProvider (CUDA/cuDNN libraries?)")
        scale = manifest["scale"]
        out_shape = (shape[0], manifest["outputs"][0]["shape"][1], shape[2] * scale, shape[3] * scale)
        self.session = session
        self.device_in = torch.empty(tuple(shape), dtype=torch.float32, device="cuda")
        self.device_out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.host_out = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        self.binding = session.io_binding()
        self.binding.bind_input("input", "cuda", 0, np.float32, list(shape), self.device_in.data_ptr())
        self.binding.bind_output("output", "cuda", 0, np.float32, list(out_shape), self.device_out.data_ptr())
        self.timings: list[dict] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return trt.timed_cuda_call(self, x, lambda: self.session.run_with_iobinding(self.binding))


# ----------------------------------------------------------------------------------------------- benchmark


def benchmark(artifact_dirs: Sequence[str | Path], settings: BenchSettings,
              log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Measure every row at every shape (module docstring); returns the JSON-ready result."""
    artifacts = load_artifacts(artifact_dirs)
    task = _common_task(artifacts, settings)
    rows = plan_rows(artifacts, settings)
    shapes = _shapes(TASKS[task], artifacts, settings)
    threads = settings.threads or physical_cores()
    _set_torch_threads(threads, "torch" in settings.backends)
    peak = read_cpu_peak(threads, settings.peak_gflops)
    runners = _Runners(threads)
    results = []
    for shape in shapes:
        named = TASKS[task].bench_inputs(artifacts[0].manifest, shape)  # the same inputs for every row
        for backend in settings.backends:
            group = [r for r in rows if r.backend == backend]
            log(f"{'x'.join(map(str, shape))} {backend}: {', '.join(f'{r.artifact.name}/{r.label}' for r in group)}")
            results += _measure_group(group, shape, named, runners, settings, peak, clock)
    return {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(peak, threads),
            "settings": {"backends": list(settings.backends), "shapes": [list(s) for s in shapes], "task": task,
                         "variants": list(settings.variants), "warmup_ms": settings.warmup_ms,
                         "duration_s": settings.duration_s, "iterations": settings.iterations, "threads": threads},
            "method": {"percentiles": PERCENTILE_DEFINITION, "interleaved": "A B A B per (shape, backend)",
                       "speedup": "median latency of the first artifact's fp32 row on the same backend / this row's",
                       "fidelity": "8-bit PSNR of this row's output to that reference row's output on "
                                   + TASKS[task].bench_text,
                       "gflops": "2 x MACs (manifest compute.macs_per_input_pixel x N*H*W) / median latency",
                       "peak": peak.formula() if peak else None},
            "artifacts": [{"name": a.name, "path": str(a.path)} for a in artifacts],
            "rows": results}


def _common_task(artifacts: Sequence[Artifact], settings: BenchSettings) -> str:
    """The task all artifacts share; the inputs they share (style_dim / size); the shape option that fits it."""
    tasks = {a.task for a in artifacts}
    if len(tasks) > 1:
        found = ", ".join(f"{a.name}: {a.task}" for a in artifacts)
        raise GankdError(f"gankd-bench measures artifacts of one task at a time, got {found}")
    task = tasks.pop()
    if task not in TASKS:
        raise GankdError(f"{artifacts[0].path} has task {task!r}, which gankd-bench does not know")
    if not TASKS[task].fixed_size:
        if settings.batches is not None:
            raise GankdError("--batch is for generate and face_sr artifacts; sr artifacts take --shapes NxCxHxW")
        return task
    if settings.shapes != DEFAULT_SHAPES:
        raise GankdError(f"--shapes is for sr artifacts; {task} artifacts have a fixed input size and take a batch "
                         "size: --batch N[,N...]")
    key = TASKS[task].size_key
    values = {a.manifest.get(key) for a in artifacts}
    if len(values) > 1:
        found = ", ".join(f"{a.name}: {a.manifest.get(key)}" for a in artifacts)
        raise GankdError(f"the {task} artifacts differ in {key} ({found}): they cannot take the same inputs")
    return task


def _shapes(task: Task, artifacts: Sequence[Artifact], settings: BenchSettings) -> tuple[tuple[int, ...], ...]:
    """The first input's shape of every measurement: ``settings.shapes``, checked against every artifact; for a
    fixed-size task, its manifest shape at each of ``settings.batches`` ([N, style_dim] or [N, 3, S, S])."""
    if task.fixed_size:
        return tuple((n, *artifacts[0].manifest["inputs"][0]["shape"][1:]) for n in settings.batches or (1,))
    for shape in settings.shapes:
        for art in artifacts:
            check_shape(art, shape, settings.backends)
    return settings.shapes


def _set_torch_threads(threads: int, needed: bool) -> None:
    if needed:
        import torch

        torch.set_num_threads(threads)


def _measure_group(group: list[Row], shape, named: dict[str, np.ndarray], runners: _Runners,
                   settings: BenchSettings, peak: CpuPeak | None, clock) -> list[dict]:
    """``named``: the inputs by name; each row gets those of its artifact, in manifest order."""
    calls, outputs = [], []
    for row in group:
        run = runners.make(row, shape)
        xs = tuple(named[name] for name in row.artifact.input_names)
        outputs.append(np.asarray(run(*xs)).copy())  # the first run: fidelity, and the start of the warm-up
        row.timings.clear()
        calls.append(lambda run=run, xs=xs: run(*xs))
    latencies = measure_interleaved(calls, warmup_ms=settings.warmup_ms, duration_s=settings.duration_s,
                                    iterations=settings.iterations, clock=clock)
    reference = next((i for i, r in enumerate(group) if r.variant == "fp32"), None)
    reference = reference if reference is not None and group[reference].artifact is group[0].artifact else None
    out = []
    for i, (row, times) in enumerate(zip(group, latencies)):
        stats = latency_stats(times)
        record = {"artifact": row.artifact.name, "path": str(row.artifact.path), "backend": row.label,
                  "shape": list(shape), **stats}
        record["speedup"] = (statistics.median(latencies[reference]) / stats["median_ms"]
                             if reference is not None else None)
        compute = row.artifact.manifest["compute"]
        macs = (compute["macs_per_input_pixel"] * shape[0] * shape[2] * shape[3]
                if compute.get("macs_per_input_pixel") is not None else compute["macs_per_sample"] * shape[0])
        record["gflops"] = 2 * macs / (stats["median_ms"] / 1e3) / 1e9
        # an int8/fp16 row's GFLOP/s is effective (FP32-equivalent work per second); a fraction of the FP32 peak
        # is stated for fp32 rows on the CPU only
        fp32_cpu = row.backend in ("torch", "ort") and row.variant == "fp32"
        record["peak_fraction"] = record["gflops"] / peak.gflops if fp32_cpu and peak else None
        record["psnr_to_first_db"] = (_psnr_8bit(outputs[i], outputs[reference], _output_range(row.artifact))
                                      if reference is not None and i != reference else None)
        record["vol_to_first"] = (_vol_ratio(outputs[i], outputs[reference], _output_range(row.artifact))
                                  if reference is not None and i != reference else None)
        own = next((j for j, r in enumerate(group) if r.artifact is row.artifact and r.variant == "fp32"), None)
        record["psnr_to_own_fp32_db"] = (_psnr_float(outputs[i], outputs[own], _output_range(row.artifact))
                                         if own is not None and row.variant != "fp32" else None)
        record["validation_psnr_teacher"] = (row.artifact.manifest["config"].get("provenance", {})
                                             .get("validation", {}).get("psnr_teacher"))
        if row.timings:
            timed = row.timings[-len(times):]
            for key in ("h2d_ms", "compute_ms", "d2h_ms", "enqueue_ms"):
                record[key] = statistics.fmean(t[key] for t in timed)
        out.append(record)
    return out


def _output_range(art: Artifact) -> tuple[float, float]:
    lo, hi = art.manifest["outputs"][0].get("range") or (0.0, 1.0)
    return float(lo), float(hi)


def _psnr_8bit(a: np.ndarray, b: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0)) -> float | None:
    if a.shape != b.shape:
        return None  # a different scale: no pixel-to-pixel fidelity
    import torch

    from gankd.distill.metrics import mean_psnr

    lo, hi = value_range
    a, b = ((torch.from_numpy(v) - lo) / (hi - lo) for v in (a, b))
    return mean_psnr(a.clamp(0, 1), b.clamp(0, 1))


def _vol_ratio(a: np.ndarray, b: np.ndarray, value_range: tuple[float, float]) -> float | None:
    """Sharpness of this row's image relative to the first artifact's: the ratio of their variances of the
    Laplacian (8-bit luma, as cv2), so a row that wins PSNR by blurring shows it next to its PSNR."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        return None
    import torch

    from gankd.distill.metrics import laplacian_variance

    lo, hi = value_range
    a, b = ((torch.from_numpy(v) - lo) / (hi - lo) for v in (a, b))
    first = laplacian_variance(b.clamp(0, 1))
    return laplacian_variance(a.clamp(0, 1)) / first if first > 0 else None


def _psnr_float(a: np.ndarray, b: np.ndarray, value_range: tuple[float, float]) -> float | None:
    """PSNR of a reduced-precision row to its own fp32 row, on float outputs as the export's INT8 gate measures it."""
    from .parity import compare

    return compare(b, a, value_range)[1] if a.shape == b.shape else None


def _machine(peak: CpuPeak | None, threads: int) -> dict:
    import platform

    versions = {}
    for name in ("torch", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"host": platform.node(), "cpu": peak.to_json() if peak else None, "threads": threads, **versions}


# ----------------------------------------------------------------------------------------------- output


TABLE_COLUMNS = ("model", "backend", "shape", "runs", "qps", "min ms", "mean ms", "median ms", "p90 ms", "p95 ms",
                 "p99 ms", "speed-up", "GFLOP/s", "% FP32 peak", "PSNR→first dB", "VoL/first", "PSNR→own fp32 dB")
CUDA_COLUMNS = ("H2D ms", "compute ms", "D2H ms", "enqueue ms")


def format_table(result: dict) -> str:
    from gankd.distill.report.plots import markdown_table

    rows = []
    for r in result["rows"]:
        row = {"model": r["artifact"], "backend": r["backend"], "shape": "x".join(map(str, r["shape"])),
               "runs": r["runs"], "qps": r["qps"], "min ms": r["min_ms"], "mean ms": r["mean_ms"],
               "median ms": r["median_ms"], "p90 ms": r["p90_ms"], "p95 ms": r["p95_ms"], "p99 ms": r["p99_ms"],
               "speed-up": r["speedup"], "GFLOP/s": r["gflops"],
               "% FP32 peak": 100 * r["peak_fraction"] if r["peak_fraction"] is not None else None,
               "PSNR→first dB": r["psnr_to_first_db"], "VoL/first": r.get("vol_to_first"),
               "PSNR→own fp32 dB": r.get("psnr_to_own_fp32_db")}
        for column in CUDA_COLUMNS:
            key = column.replace(" ", "_").lower()
            if key in r:
                row[column] = r[key]
        rows.append(row)
    columns = list(TABLE_COLUMNS) + [c for c in CUDA_COLUMNS if any(c in row for row in rows)]
    lines = [markdown_table(rows, columns)]
    if result["method"]["peak"]:
        lines.append(f"\n{result['method']['peak']}")
    lines.append(f"percentiles: {PERCENTILE_DEFINITION}; speed-up and PSNR→first are against the first artifact's "
                 "fp32 row on the same backend (8-bit PSNR; VoL/first: sharpness, the ratio of variances of the Laplacian); "
                 "PSNR→own fp32 is an int8/fp16 row against its own "
                 "artifact's fp32 row (float PSNR, as the export's INT8 gate); all on the same real photo crop")
    return "\n".join(lines)


def save_plot(result: dict, path: str | Path) -> Path | None:
    """Latency (median) versus fidelity (PSNR to the first artifact) at the first shape, one point per row that has
    a fidelity figure, the Pareto front drawn; None when no row has one."""
    from gankd.distill.report.plots import save_pareto
    from gankd.distill.tools.search import pareto_front

    first = result["rows"][0]["shape"] if result["rows"] else None
    x_key = f"median latency at {'x'.join(map(str, first or ()))} (ms)"
    y_key = f"PSNR to {result['artifacts'][0]['name'] if result['artifacts'] else 'first'} (dB)"
    points = [{x_key: r["median_ms"], y_key: r["psnr_to_first_db"], "name": f"{r['artifact']} {r['backend']}"}
              for r in result["rows"] if r["shape"] == first and r["psnr_to_first_db"] is not None]
    if not points:
        return None
    front = pareto_front([(p[x_key], p[y_key]) for p in points])
    return save_pareto(path, points, x=x_key, y=y_key, front=front)


def write_to_manifests(result: dict) -> list[Path]:
    """Store each artifact's rows in its manifest's ``bench.results``, replacing earlier results of the same
    backend, shape and host (atomic rewrite)."""
    written = []
    host = result["machine"]["host"]
    for art in result["artifacts"]:
        path = Path(art["path"])
        manifest = read_manifest(path)
        new = [{**{k: v for k, v in r.items() if k not in ("artifact", "path")}, "host": host,
                "measured_at": result["created_at"], "threads": result["machine"]["threads"]}
               for r in result["rows"] if r["path"] == art["path"]]
        keys = {(r["backend"], tuple(r["shape"]), host) for r in new}
        kept = [r for r in manifest["bench"].get("results", [])
                if (r.get("backend"), tuple(r.get("shape", ())), r.get("host")) not in keys]
        manifest["bench"] = {**manifest["bench"], "results": kept + new,
                             "cpu": result["machine"]["cpu"], "method": result["method"]}
        written.append(write_manifest(path, manifest))
    return written
