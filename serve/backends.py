"""The runtimes an artifact's files run in, one home for each: ONNX Runtime (``model*.onnx``), torch.export
(``model.pt2``), ncnn (``model.ncnn.param``/``.bin``, on CPU threads or a Vulkan device) and TensorRT
(``model.<gpu>.<trt-version>.plan``).

Each ``*_runner`` returns a forward: float32 arrays in (the manifest's inputs, in order), the output array out.
:class:`gankd.serve.Session` serves them, and gankd-export (parity) and gankd-bench open their files through the same
functions (:func:`ort_session` directly; ``gankd.export.ncnn.ncnn_runner`` adds the export's blob names to
:func:`ncnn_runner`), so a benchmark times what serve runs, with the same session options. gankd.export may import this
module; it imports nothing of gankd but the bottom layer (``serve.errors``, ``serve.psnr``, ``serve.manifest``).

Heavy packages (onnxruntime, torch, ncnn, tensorrt) import inside the functions that need them. Errors are
:class:`ServeError` in one line.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ServeError, first_line
from .manifest import TOLERANCES
from .psnr import PSNR_CAP_DB, psnr

Forward = Callable[..., np.ndarray]
NCNN_INPUT_BLOB, NCNN_OUTPUT_BLOB = "data", "output"  # realesrgan-ncnn-vulkan's names, what gankd-export writes


# ----------------------------------------------------------------------------------------------- ONNX Runtime


def ort_session(path: Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",),
                provider_options: list[dict] | None = None):
    """An ONNX Runtime session with quiet logs, one inter-op thread, and intra-op threads that do not spin between
    runs (so sessions measured in turn, as gankd-bench interleaves them, or serving beside other work, do not
    steal each other's cores). The one factory of gankd: Session, parity and gankd-bench all open ONNX files here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers), provider_options=provider_options)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...); one line
        raise ServeError(f"{path} cannot be loaded by ONNX Runtime (corrupted or not an ONNX model?): "
                         f"{first_line(exc)}") from None


def ort_runner(path: Path, names: Sequence[str], threads: int | None = None, cuda: bool = False) -> Forward:
    """``path`` in ONNX Runtime on the CPU (or CUDA first with ``cuda``): a call taking the inputs in ``names``
    order."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ServeError("the ort-cuda backend needs onnxruntime-gpu (CUDAExecutionProvider): it is missing here")
        providers.insert(0, "CUDAExecutionProvider")
    session = ort_session(path, threads, providers)
    if cuda and "CUDAExecutionProvider" not in session.get_providers():
        raise ServeError("the ort-cuda backend could not start CUDAExecutionProvider (CUDA/cuDNN libraries?)")
    names = tuple(names)
    return lambda *xs: session.run(None, dict(zip(names, xs)))[0]


def has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


# ----------------------------------------------------------------------------------------------- torch.export


def torch_runner(path: Path, threads: int | None = None) -> Forward:
    """A saved ``.pt2`` (``torch.export.load(...).module()``) on the CPU."""
    import torch

    if threads:
        torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - a corrupt or incompatible file, reported in one line
        raise ServeError(f"cannot load {path}: {first_line(exc)}") from None

    def forward(*xs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(*(torch.from_numpy(x) for x in xs)).numpy()

    return forward


# ----------------------------------------------------------------------------------------------- ncnn


# ncnn's wheel bundles its own libgomp, whose threads spin at every barrier (up to 300,000 iterations) before they
# sleep. On a CPU shared with other work a spinning thread holds the core another ncnn thread needs, and a small model
# becomes many times slower (demos/bench_serve.py shows it on a loaded machine). Not spinning is what the ORT sessions
# here do too (allow_spinning 0). libgomp reads the policy when it loads, so it is set for the import of ncnn only (a
# user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT win). And ncnn is imported with RTLD_DEEPBIND: once torch is imported, its
# libgomp is in the process's global symbol scope (torch loads it RTLD_GLOBAL) and ncnn's OpenMP calls would run on
# torch's spinning threads instead of ncnn's own libgomp; gankd-bench imports torch first, Session does not, and both
# must time the same runtime.
NCNN_OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
_IMPORT_LOCK = threading.Lock()


def require_ncnn():
    """The ncnn module, imported the first time with :data:`NCNN_OPENMP_ENV` and its own symbols first (see above);
    ServeError in one line where it is not installed."""
    import os
    import sys

    if sys.modules.get("ncnn") is not None:
        return sys.modules["ncnn"]
    with _IMPORT_LOCK:
        added = {} if {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ) else NCNN_OPENMP_ENV
        flags = sys.getdlopenflags()
        os.environ.update(added)
        if hasattr(os, "RTLD_DEEPBIND"):  # glibc; elsewhere there is no torch-first interposition to avoid
            sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            import ncnn
        except ImportError:
            raise ServeError("the ncnn backend needs the ncnn runtime (pip install ncnn; part of gankd[all]): it is "
                             "missing here") from None
        finally:
            sys.setdlopenflags(flags)
            for name in added:
                os.environ.pop(name, None)
    return ncnn


def vulkan_devices() -> int:
    """Vulkan devices ncnn sees (0 without a Vulkan loader or driver; Mesa's lavapipe counts as one)."""
    return int(require_ncnn().get_gpu_count())


def ncnn_runner(param: Path, weights: Path, threads: int | None = None, vulkan: bool = False,
                input_blob: str = NCNN_INPUT_BLOB, output_blob: str = NCNN_OUTPUT_BLOB) -> Forward:
    """callable(N×C×H×W float32) → N×C'×(H·s)×(W·s): the pair in the ``ncnn`` Python runtime, one image at a time
    (ncnn has no batch axis), on ``threads`` CPU threads (None: ncnn's default, the physical big cores) or on the
    first Vulkan device with ``vulkan``.

    One ``ncnn.Net`` serves concurrent calls: each call makes its own extractor, and ncnn's layers keep no
    per-call state on the CPU. Vulkan calls are serialised (one queue and one set of device allocators)."""
    ncnn = require_ncnn()
    if vulkan and vulkan_devices() < 1:
        raise ServeError("the ncnn-vulkan backend needs a Vulkan device: ncnn sees none here (install a Vulkan "
                         "driver, e.g. mesa-vulkan-drivers, or use the ncnn backend on the CPU)")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = vulkan
    if threads:
        net.opt.num_threads = threads
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ServeError(f"ncnn could not load {Path(param).name} / {Path(weights).name}")
    lock = threading.Lock() if vulkan else None

    def run_one(image: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(image, dtype=np.float32)  # ncnn.Mat reads this buffer: alive until extract
        extractor = net.create_extractor()
        extractor.input(input_blob, ncnn.Mat(image))
        status, out = extractor.extract(output_blob)
        if status != 0:
            raise ServeError(f"ncnn could not run {Path(param).name} (extract returned {status})")
        return np.array(out, copy=True)

    def forward(x: np.ndarray) -> np.ndarray:
        outputs = []
        for image in np.asarray(x, dtype=np.float32):
            if lock is None:
                outputs.append(run_one(image))
            else:
                with lock:
                    outputs.append(run_one(image))
        return np.stack(outputs)

    forward.net = net  # keeps the net alive with the forward (and lets tests look at its options)
    return forward


# ----------------------------------------------------------------------------------------------- TensorRT
#
# Written against TensorRT 10's Python API (``tensorrt``) with torch for the CUDA buffers; TensorRT cannot be
# installed where gankd is developed (DESIGN.md "Facts"), so everything around the engine call (file choice,
# profile choice, shapes) is plain Python, tested on CPU with the engine call replaced.

Shape = tuple[int, ...]


def slug(text: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def trt_version_tag(trt_version: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "-", trt_version).strip("-.") or "unknown"


def engine_filename(gpu_name: str, trt_version: str) -> str:
    """``model.<gpu-name-slug>.<tensorrt-version>.plan``: an engine runs only on the GPU model and TensorRT version
    that built it."""
    return f"model.{slug(gpu_name)}.{trt_version_tag(trt_version)}.plan"


def trt_missing() -> str | None:
    """None when TensorRT can run here, else what is missing: the tensorrt package, or a CUDA GPU."""
    import importlib

    try:
        importlib.import_module("tensorrt")
    except ImportError:
        return "the tensorrt Python package (pip install 'gankd[trt]'; NVIDIA's wheels)"
    import torch

    if not torch.cuda.is_available():
        return "an NVIDIA GPU with CUDA (torch.cuda.is_available() is False)"
    return None


def require_trt() -> None:
    """The one-line availability check of the trt backend."""
    missing = trt_missing()
    if missing:
        raise ServeError(f"the trt backend needs {missing}: it is missing here")


def gpu_and_trt_version() -> tuple[str, str]:
    import tensorrt as trt
    import torch

    return torch.cuda.get_device_name(0), trt.__version__


@dataclass(frozen=True)
class Profile:
    """One optimization profile of an engine's input: min <= opt <= max in every dimension (N, C, H, W)."""

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        return cls(tuple(int(v) for v in data["min"]), tuple(int(v) for v in data["opt"]),
                   tuple(int(v) for v in data["max"]))

    def contains(self, shape: Shape) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, shape, self.max))

    def text(self) -> str:
        return f"{_dims(self.min)} .. {_dims(self.max)}"


def _dims(shape) -> str:
    return "x".join(str(v) for v in shape)


def engine_profiles(entry: dict) -> list[Profile]:
    """The profiles a manifest's engine entry records (``profiles``: a list, in the engine's order; or the one
    ``profile`` gankd-export writes)."""
    raw = entry.get("profiles") or ([entry["profile"]] if entry.get("profile") else [])
    try:
        return [Profile.from_json(p) for p in raw]
    except (KeyError, TypeError, ValueError):
        raise ServeError(f"the manifest's entry for {entry.get('path')} has a malformed shape profile") from None


def choose_engine(files: dict, gpu_name: str, trt_version: str, artifact: str) -> tuple[str, dict]:
    """The (kind, entry) of the engine built for this GPU and TensorRT version among the manifest's ``trt*`` files
    (matched by the recorded gpu/tensorrt, or by the file name :func:`engine_filename`); ServeError in one line
    naming what was built for what, otherwise."""
    engines = {kind: entry for kind, entry in files.items()
               if (kind == "trt" or kind.startswith("trt.")) and isinstance(entry, dict) and entry.get("path")}
    if not engines:
        raise ServeError(f"{artifact} has no TensorRT engine for the trt backend (export one on this GPU: "
                         "gankd-export --formats trt)")
    wanted = engine_filename(gpu_name, trt_version)
    for kind, entry in engines.items():
        recorded = entry.get("gpu") is not None and entry.get("tensorrt") is not None
        if (recorded and slug(entry["gpu"]) == slug(gpu_name) and str(entry["tensorrt"]) == trt_version) \
                or (not recorded and Path(entry["path"]).name == wanted):
            return kind, entry
    built = ", ".join(f"{e.get('gpu') or Path(e['path']).name} (TensorRT {e.get('tensorrt', '?')})"
                      for e in engines.values())
    raise ServeError(f"{artifact} has TensorRT engines for {built} only; this machine has {gpu_name} with TensorRT "
                     f"{trt_version} (wants {wanted}): rebuild it here with gankd-export --formats trt")


@dataclass(frozen=True)
class Plan:
    """How one input shape runs on an engine: the profile, the spatial size the input is extended to (its min,
    where the input is smaller), and the batch chunk (at most the profile's max batch, at least its min)."""

    profile: int
    height: int
    width: int
    chunk: int
    min_batch: int


def plan_shape(profiles: Sequence[Profile], shape: Shape, engine: str) -> Plan:
    """The profile that takes a N×C×H×W input: the first that contains it (batch split into chunks that fit);
    else the first that does after the input is extended to its min H/W; else ServeError in one line."""
    n, c, h, w = shape
    fits = []
    for index, p in enumerate(profiles):
        if not p.min[1] <= c <= p.max[1]:
            continue
        height, width = max(h, p.min[2]), max(w, p.min[3])
        if height <= p.max[2] and width <= p.max[3]:
            fits.append((height != h or width != w, index, height, width))
    if not fits:
        largest = max(profiles, key=lambda p: p.max[2] * p.max[3]) if profiles else None
        raise ServeError(f"an input of {_dims(shape)} is outside every shape profile of {engine} ("
                         + "; ".join(p.text() for p in profiles) + ")"
                         + (f": use tiles whose padded size fits {largest.max[2]}x{largest.max[3]}, or re-export "
                            "with --max-shape covering it" if largest else ""))
    _, index, height, width = min(fits)
    p = profiles[index]
    return Plan(index, height, width, chunk=max(1, min(n, p.max[0])), min_batch=max(1, p.min[0]))


def max_spatial(profiles: Sequence[Profile]) -> tuple[int, int] | None:
    """The largest H×W any profile takes (by area): what a tiled run's windows must fit."""
    if not profiles:
        return None
    largest = max(profiles, key=lambda p: p.max[2] * p.max[3])
    return largest.max[2], largest.max[3]


def run_planned(execute: Callable[[int, np.ndarray], np.ndarray], profiles: Sequence[Profile], x: np.ndarray,
                scale: int, engine: str) -> np.ndarray:
    """``x`` through ``execute(profile_index, batch)`` (the engine call): split into batches of the chosen profile,
    each extended at the bottom/right by reflection to its min H/W (a batch under its min batch repeats its last
    image) and cropped back. Inside a tiled run the extension only touches the window's context margin, which the
    tiling discards; a direct call at a size under the profile's min differs from an exact-size run within the
    network's receptive field of those two edges."""
    n, _, h, w = x.shape
    plan = plan_shape(profiles, x.shape, engine)
    if (plan.height, plan.width) != (h, w):
        mode = "reflect" if min(h, w) > 1 else "edge"  # numpy reflects again where the extension is wider
        x = np.pad(x, ((0, 0), (0, 0), (0, plan.height - h), (0, plan.width - w)), mode=mode)
    outputs = []
    for start in range(0, n, plan.chunk):
        batch = x[start:start + plan.chunk]
        real = len(batch)
        if real < plan.min_batch:
            batch = np.concatenate([batch, np.repeat(batch[-1:], plan.min_batch - real, axis=0)])
        outputs.append(execute(plan.profile, np.ascontiguousarray(batch, dtype=np.float32))[:real])
    out = np.concatenate(outputs)
    return out[:, :, :h * scale, :w * scale]


class TrtEngine:
    """A deserialized engine with one execution context per optimization profile, on one CUDA stream, with torch
    CUDA tensors as buffers; ``execute(profile, x)`` runs one batch (thread-safe: one lock per context)."""

    def __init__(self, path: Path, input_name: str, output_name: str):
        import tensorrt as trt
        import torch

        self._torch, self._trt = torch, trt
        self.input_name, self.output_name = input_name, output_name
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ServeError(f"{Path(path).name} cannot be loaded by this TensorRT / GPU (rebuild it here)")
        self.stream = torch.cuda.Stream()
        self.contexts, self.locks = [], []
        for index in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.contexts.append(context)
            self.locks.append(threading.Lock())
        self.stream.synchronize()
        self.in_dtype = self._torch_dtype(input_name)
        self.out_dtype = self._torch_dtype(output_name)

    def _torch_dtype(self, name: str):
        return {self._trt.DataType.HALF: self._torch.float16}.get(self.engine.get_tensor_dtype(name),
                                                                   self._torch.float32)

    def execute(self, profile: int, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self.locks[profile]:
            context = self.contexts[profile]
            if not context.set_input_shape(self.input_name, tuple(x.shape)):
                raise ServeError(f"TensorRT refused the input shape {_dims(x.shape)}")
            out_shape = tuple(context.get_tensor_shape(self.output_name))
            with torch.cuda.stream(self.stream):
                device_in = torch.from_numpy(x).to("cuda", non_blocking=False).to(self.in_dtype)
                device_out = torch.empty(out_shape, dtype=self.out_dtype, device="cuda")
                context.set_tensor_address(self.input_name, device_in.data_ptr())
                context.set_tensor_address(self.output_name, device_out.data_ptr())
                if not context.execute_async_v3(self.stream.cuda_stream):
                    raise ServeError("TensorRT execute_async_v3 failed")
                host = device_out.float().cpu()
            self.stream.synchronize()
            return host.numpy()


def trt_runner(path: Path, entry: dict, input_name: str, output_name: str, scale: int,
               execute: Callable[[int, np.ndarray], np.ndarray] | None = None) -> Forward:
    """The engine at ``path`` (its manifest ``entry`` gives the profiles) as a forward over any N×C×H×W inside its
    profiles (:func:`run_planned`); ``execute`` replaces the engine call (tests on CPU)."""
    profiles = engine_profiles(entry)
    if not profiles:
        raise ServeError(f"the manifest's entry for {Path(path).name} records no shape profile")
    if execute is None:
        require_trt()
        execute = TrtEngine(path, input_name, output_name).execute
    name = Path(path).name

    def forward(x: np.ndarray) -> np.ndarray:
        return run_planned(execute, profiles, np.asarray(x, dtype=np.float32), scale, name)

    forward.max_spatial = max_spatial(profiles)
    forward.profiles = profiles
    return forward


# ----------------------------------------------------------------------------------------------- the open check
#
# A runtime that computes differently from the one export checked (another ncnn build, a Vulkan driver, an engine
# rebuilt by hand) is caught when the Session opens: it runs a seeded input beside the artifact's fp32 reference
# file (model.onnx in ONNX Runtime, else model.pt2), which parity held to 1e-4 of the PyTorch model, and must stay
# within the tolerance the manifest's parity states for its file.

REFERENCE_SLACK = TOLERANCES["onnx"].max_abs  # the fp32 reference's own parity bound (onnx / pt2)


def probe_input(shape: Shape, value_range: tuple[float, float] = (0.0, 1.0), seed: int = 0) -> np.ndarray:
    """A seeded N×C×H×W float32 image, smooth like a photo (5×5 random colours, bilinear) with a little noise:
    random pixels would drive a network far from the images its fp16 weights were checked on."""
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, c, 5, 5))

    def axis(size: int) -> tuple[np.ndarray, np.ndarray]:
        at = np.linspace(0.0, 4.0, size)
        low = np.minimum(np.floor(at).astype(int), 3)
        return low, (at - low)

    y0, fy = axis(h)
    x0, fx = axis(w)
    rows = coarse[:, :, y0, :] * (1 - fy)[:, None] + coarse[:, :, y0 + 1, :] * fy[:, None]
    image = rows[..., x0] * (1 - fx) + rows[..., x0 + 1] * fx
    image = np.clip(image + 0.03 * rng.standard_normal(image.shape), 0.0, 1.0)
    lo, hi = value_range
    return (image * (hi - lo) + lo).astype(np.float32)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray,
                    value_range: tuple[float, float]) -> tuple[float, float]:
    """(max_abs, PSNR dB) of two outputs mapped from ``value_range`` to [0, 1] and clamped (the PSNR capped at
    :data:`PSNR_CAP_DB`); the one comparison of parity (``gankd.export.parity.compare``) and the open check."""
    if reference.shape != candidate.shape:
        return float("inf"), float("-inf")
    if not np.isfinite(candidate).all():
        return float("inf"), float("-inf")
    lo, hi = value_range
    ref = np.clip((reference.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    out = np.clip((candidate.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return float(np.abs(ref - out).max()), min(PSNR_CAP_DB, psnr(ref, out))
