"""TensorRT engines from the exported ONNX, with the tensorrt Python API (written against TensorRT 10; the
``EXPLICIT_BATCH`` flag is set where the installed version still has it).

TensorRT cannot be installed on the machines gankd is developed on (DESIGN.md "Facts"), so everything around the
build is plain Python tested on CPU: shape profiles, the engine's file name, the availability check. ``tensorrt``
imports on first use, inside :func:`missing_requirement` and the functions that need it.

Engine file: ``model.<gpu-name-slug>.<tensorrt-version>.plan`` (an engine only runs on the GPU model and TensorRT
version that built it). Timing cache: ``~/.cache/gankd/trt/<gpu>.<version>.timing-cache`` by default, shared by
exports on the same machine so the second build skips most tactic timing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gankd.distill.errors import GankdError
from gankd.distill.models.cost import parse_shape
from gankd.serve.backends import engine_filename, slug, trt_missing  # their one home: serve picks engines by name
from gankd.serve.files import atomic_write
from gankd.serve.timing import timed_ms

from .manifest import INPUT_NAME, OUTPUT_NAME

Shape = tuple[int, int, int, int]
WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class ShapeProfile:
    """A TensorRT optimization profile for the input: min ≤ opt ≤ max in every dimension."""

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def parse(cls, min_shape: str | None, opt_shape: str, max_shape: str | None, channels: int = 3,
              multiple: int = 1) -> "ShapeProfile":
        """From ``NxCxHxW`` texts; a missing min or max is the opt shape (what trtexec does)."""
        shapes = []
        for flag, text in (("--min-shape", min_shape or opt_shape), ("--opt-shape", opt_shape),
                           ("--max-shape", max_shape or opt_shape)):
            try:
                shape = parse_shape(text)
            except ValueError as exc:
                raise GankdError(f"{flag}: {exc}") from None
            if shape[1] != channels:
                raise GankdError(f"{flag} {text}: the model takes {channels} channels, not {shape[1]}")
            if shape[2] % multiple or shape[3] % multiple:
                raise GankdError(f"{flag} {text}: H and W must be multiples of {multiple} for this model")
            shapes.append(shape)
        profile = cls(*shapes)
        if not all(lo <= mid <= hi for lo, mid, hi in zip(profile.min, profile.opt, profile.max)):
            raise GankdError(f"shape profile must satisfy min <= opt <= max in every dimension, got min "
                             f"{_text(profile.min)}, opt {_text(profile.opt)}, max {_text(profile.max)}")
        return profile

    def contains(self, shape) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> "ShapeProfile":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def check_in_profile(shape, profile: ShapeProfile, engine: str) -> None:
    if not profile.contains(shape):
        raise GankdError(f"shape {_text(shape)} is outside the profile of engine {engine} (min {_text(profile.min)}, "
                         f"max {_text(profile.max)}); re-export with --min-shape/--max-shape covering it")


def _text(shape) -> str:
    return "x".join(str(v) for v in shape)


def default_timing_cache(gpu_name: str, trt_version: str) -> Path:
    return Path.home() / ".cache" / "gankd" / "trt" / f"{slug(gpu_name)}.{trt_version}.timing-cache"


# ----------------------------------------------------------------------------------------------- availability


def missing_requirement() -> str | None:
    """None when TensorRT can run here, else what is missing (serve's one check: export builds what serve runs)."""
    return trt_missing()


def require(what: str) -> None:
    missing = missing_requirement()
    if missing:
        raise GankdError(f"{what} needs {missing}: it is missing here")


def gpu_and_version() -> tuple[str, str]:
    import tensorrt as trt
    import torch

    return torch.cuda.get_device_name(0), trt.__version__


# ----------------------------------------------------------------------------------------------- build


def build_engine(onnx_path: Path, out_dir: Path, profile: ShapeProfile, fp16: bool,
                 timing_cache: Path | None = None, log=print) -> dict:
    """Parse ``onnx_path``, build a serialized engine for ``profile`` and write it into ``out_dir``.

    fp32 builds clear the TF32 flag, so that an fp32 engine computes what the ONNX model computes (parity);
    ``fp16`` lets TensorRT pick fp16 kernels. Returns the manifest's ``files.trt`` entry (less the sha256)."""
    import tensorrt as trt

    gpu, version = gpu_and_version()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10, required before
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise GankdError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    optimization = builder.create_optimization_profile()
    optimization.set_shape(INPUT_NAME, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimization)

    timing_cache = timing_cache or default_timing_cache(gpu, version)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building TensorRT {version} engine for {gpu} ({'fp16' if fp16 else 'fp32'}, profile "
        f"{_text(profile.min)} .. {_text(profile.max)})")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GankdError("TensorRT failed to build the engine (see its log above)")
    path = out_dir / engine_filename(gpu, version)
    path.write_bytes(bytes(serialized))  # into the export's staging folder, published whole
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()), fsync=False)  # shared by builds
    return {"path": path.name, "gpu": gpu, "tensorrt": version, "precision": "fp16" if fp16 else "fp32",
            "profile": profile.to_json(), "timing_cache": str(timing_cache),
            "build_s": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------------------------- run


class TrtRunner:
    """Runs an engine on one input shape with device buffers allocated once (torch CUDA tensors).

    Each call copies the host input to the GPU, enqueues the engine and copies the output back, on one stream with
    CUDA events between the steps: ``timings`` collects H2D / compute / D2H (GPU time, ms) and the host time spent
    in ``execute_async_v3`` (enqueue), as trtexec reports them."""

    def __init__(self, engine_path: Path, shape):
        import tensorrt as trt
        import torch

        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise GankdError(f"{engine_path.name} cannot be loaded by this TensorRT / GPU (rebuild it here)")
        self.context = self.engine.create_execution_context()
        self.context.set_input_shape(INPUT_NAME, tuple(shape))
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        self.stream = torch.cuda.Stream()
        self.device_in = torch.empty(tuple(shape), dtype=torch.float32, device="cuda")
        self.device_out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.host_out = torch.empty(out_shape, dtype=torch.float32, pin_memory=True)
        self.context.set_tensor_address(INPUT_NAME, self.device_in.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, self.device_out.data_ptr())
        self.timings: list[dict] = []

    def __call__(self, x):
        return timed_cuda_call(self, x, self._enqueue)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise GankdError("TensorRT execute_async_v3 failed")


def timed_cuda_call(runner, x, enqueue):
    """One timed run of a CUDA runner (the TensorRT and ORT-CUDA ones): H2D copy, ``enqueue()``, D2H copy on the
    runner's stream, with CUDA events around each part; appends h2d/compute/d2h/enqueue ms to ``runner.timings``.

    The runner holds ``_torch``, ``stream``, ``device_in``, ``device_out`` and pinned ``host_out``.
    """
    torch = runner._torch
    host_in = torch.from_numpy(x).pin_memory()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    with torch.cuda.stream(runner.stream):
        events[0].record()
        runner.device_in.copy_(host_in, non_blocking=True)
        events[1].record()
        _, enqueue_ms = timed_ms(enqueue)
        events[2].record()
        runner.host_out.copy_(runner.device_out, non_blocking=True)
        events[3].record()
    runner.stream.synchronize()
    runner.timings.append({"h2d_ms": events[0].elapsed_time(events[1]),
                           "compute_ms": events[1].elapsed_time(events[2]),
                           "d2h_ms": events[2].elapsed_time(events[3]), "enqueue_ms": enqueue_ms})
    return runner.host_out.numpy()
