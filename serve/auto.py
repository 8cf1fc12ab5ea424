"""What ``backend="auto"`` serves: the fastest verified runtime on this machine.

- **Candidates** (:func:`candidates`): the runtimes of :data:`RACE` whose files the artifact has, whose parity
  passed at export (no failed ``parity.results`` entry for that file) and that can run here (the package is
  installed; TensorRT and ORT-CUDA need a GPU). ncnn and TensorRT serve sr artifacts only; torch (``model.pt2``) is
  the fallback when none of them can run, not a candidate (torch.export on the CPU is the slowest of them, and
  its thread count is process-wide).
- **Order**: each candidate runs the same seeded 1×3×64×64 input, interleaved, for at least :data:`MIN_ROUNDS`
  rounds, then 1×3×256×256 (the windows of a tiled run) where 64×64 was cheap (:data:`MEASURE_SHAPES`,
  :func:`race`); the medians at the last size decide. The result is keyed by the machine
  (:func:`machine_key`: the CPU's model name, the flags that decide ORT's and ncnn's kernels, the logical CPUs and
  the thread setting; plus the GPU's name where a GPU runtime races), so another machine measures again.
- **Where it is kept**: ``gankd-export`` measures on the export machine and records it in the manifest's
  ``runtime_order`` ({machine key: {order, ms, shape, by_shape, threads, measured_at, rounds}}). A Session that finds no
  entry for its machine measures on first open and keeps the result in a per-user cache file,
  ``$XDG_CACHE_HOME/gankd/runtime-order/<artifact id>.json`` (``~/.cache`` by default), not in the manifest: an
  artifact folder may be read-only, shared by several servers at once, or copied from a checksummed release, and
  serving must not write into it. The artifact id is a sha256 over the manifest's file hashes, so a re-export
  measures again. An unwritable cache only means measuring at every open.

``auto`` prints what it chose and why (``Session.backend_note``): every tool shows that line. gankd-export measures
through ``serve.session.measure_artifact``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cpu import cpu_description
from .files import atomic_write
from .manifest import task_of
from .timing import measure_interleaved

RACE = ("trt", "ort-cuda", "ncnn", "ort")  # what auto measures, in the order ties (and the loaded-order) break
GPU_BACKENDS = ("trt", "ort-cuda")
# the race's inputs: a small one, and the size a tiled run's windows have (tile 256, the default of upscale and the
# demo; the order of runtimes can flip between them: ncnn's Winograd wins at 64x64 and lost at 256x256 on the Intel
# Xeon of 2026-12-07). The second runs only where the first is cheap, so an x4plus-sized model does not spend a
# minute at first open; the last size measured decides.
MEASURE_SHAPES = ((1, 3, 64, 64), (1, 3, 256, 256))
LARGE_SHAPE_MAX_MS = 50.0  # the 256x256 round (about 16x the work) only when every runtime ran 64x64 within this
MIN_ROUNDS, MAX_ROUNDS, BUDGET_S = 3, 15, 1.0
MANIFEST_KEY = "runtime_order"


# ----------------------------------------------------------------------------------------------- the machine


def cpu_key(cpuinfo: str | None = None) -> str:
    """``<model name> [<speed flags>] <n> CPUs`` from /proc/cpuinfo (``unknown CPU`` where there is none)."""
    cpu = cpu_description(cpuinfo)
    if not cpu["model"]:
        return f"unknown CPU, {os.cpu_count() or 1} CPUs"
    return f"{cpu['model']} [{' '.join(cpu['flags'])}] {cpu['logical_cpus']} CPUs"


def machine_key(threads: int | None, gpu: str | None = None, cpuinfo: str | None = None) -> str:
    """The key of a measured order: :func:`cpu_key`, the thread setting, and the GPU where one raced."""
    key = f"{cpu_key(cpuinfo)}, {f'{threads} threads' if threads else 'default threads'}"
    return f"{key} + {gpu}" if gpu else key


# ----------------------------------------------------------------------------------------------- candidates


def verified(manifest: dict, kind: str) -> bool:
    """The manifest has the file ``kind`` and no failed parity result for it."""
    if kind not in manifest["files"]:
        return False
    results = manifest.get("parity", {}).get("results") or []
    names = {kind, "trt-fp16"} if kind == "trt" else {kind}  # parity names an fp16 engine trt-fp16
    return not any(isinstance(r, dict) and r.get("artifact") in names and r.get("passed") is False for r in results)


def candidates(manifest: dict, onnx_kind: str, variant: str) -> list[str]:
    """The runtimes of :data:`RACE` that auto measures for this artifact and variant on this machine."""
    import importlib.util

    from .backends import has_onnxruntime, trt_missing

    out = []
    sr = task_of(manifest) == "sr"
    for backend in RACE:
        if backend == "trt" and sr and variant == "fp32" and verified(manifest, "trt"):
            if trt_missing() is None:
                out.append(backend)
        elif backend == "ncnn" and sr and variant == "fp32" and "ncnn-bin" in manifest["files"]:
            if verified(manifest, "ncnn") and importlib.util.find_spec("ncnn") is not None:
                out.append(backend)
        elif backend in ("ort", "ort-cuda") and verified(manifest, onnx_kind) and has_onnxruntime():
            if backend == "ort" or (sr and _cuda_provider()):  # generate / face_sr: ort, as before the race
                out.append(backend)
    return out


def _cuda_provider() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    import torch

    return torch.cuda.is_available()


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


# ----------------------------------------------------------------------------------------------- measuring


def measure_inputs(channels: int, value_range: tuple[float, float]) -> list[np.ndarray]:
    """The seeded inputs of the race, one per :data:`MEASURE_SHAPES`."""
    from .backends import probe_input

    return [probe_input((1, channels, *shape[2:]), value_range, seed=1) for shape in MEASURE_SHAPES]


def race(forwards: dict[str, Callable[[np.ndarray], np.ndarray]], inputs: list[np.ndarray], threads: int | None,
         clock: Callable[[], float] = time.perf_counter, budget_s: float = BUDGET_S) -> dict:
    """Time each forward on each input in turn (:func:`time_interleaved`); an input after the first only while the
    slowest forward ran the one before within :data:`LARGE_SHAPE_MAX_MS`. The last input measured decides the
    order (fastest first): the manifest's ``runtime_order`` entry, with the medians of every input in
    ``by_shape``."""
    by_shape: dict[str, dict[str, float]] = {}
    shape, rounds = inputs[0].shape, 0
    for x in inputs:
        if by_shape and max(by_shape[shape_text(shape)].values()) > LARGE_SHAPE_MAX_MS:
            break
        shape = x.shape
        by_shape[shape_text(shape)], rounds = time_interleaved(forwards, x, clock, budget_s)
    ms = by_shape[shape_text(shape)]
    order = sorted(forwards, key=lambda name: (ms[name], RACE.index(name) if name in RACE else len(RACE)))
    return {"order": order, "ms": ms, "shape": list(shape), "by_shape": by_shape, "threads": threads,
            "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "rounds": rounds}


def shape_text(shape) -> str:
    return "x".join(str(v) for v in shape)


def time_interleaved(forwards: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray,
                     clock: Callable[[], float], budget_s: float) -> tuple[dict[str, float], int]:
    """({name: median ms}, rounds): one warm-up run each, then rounds A B A B ... (a slow spell of a shared machine
    hits all alike), at least :data:`MIN_ROUNDS`, more while under ``budget_s`` (at most :data:`MAX_ROUNDS`)."""
    calls = [lambda forward=forward: forward(x) for forward in forwards.values()]
    times = measure_interleaved(calls, warmup_ms=0, duration_s=budget_s / len(calls), iterations=None,
                                min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS, clock=clock)
    return {name: round(statistics.median(values), 3) for name, values in zip(forwards, times)}, len(times[0])


def valid_entry(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("order"), list) \
        and all(isinstance(name, str) for name in entry["order"]) and isinstance(entry.get("ms", {}), dict)


# ----------------------------------------------------------------------------------------------- keeping it


def artifact_id(manifest: dict) -> str:
    """sha256 over the manifest's (kind, sha256) file pairs: the same files, the same id."""
    pairs = sorted((kind, entry.get("sha256") or "") for kind, entry in manifest["files"].items()
                   if isinstance(entry, dict))
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def cache_path(manifest: dict) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "gankd" / "runtime-order" / f"{artifact_id(manifest)}.json"


def recorded(manifest: dict, key: str) -> tuple[dict | None, str]:
    """This machine's entry: from the manifest (written at export), else from the cache; (None, "") if neither."""
    entry = (manifest.get(MANIFEST_KEY) or {}).get(key)
    if valid_entry(entry):
        return entry, "recorded in the manifest"
    try:
        entry = json.loads(cache_path(manifest).read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None, ""
    return (entry, f"cached in {cache_path(manifest)}") if valid_entry(entry) else (None, "")


def remember(manifest: dict, key: str, entry: dict) -> Path | None:
    """Add this machine's entry to the artifact's cache file (atomic rewrite); None when it cannot be written."""
    path = cache_path(manifest)
    try:
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
            known = known if isinstance(known, dict) else {}
        except (OSError, ValueError):
            known = {}
        known[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(known, indent=2), fsync=False)  # a cache: a lost one is measured again
    except OSError:
        return None
    return path


def describe(entry: dict, chosen: str, where: str) -> str:
    """``auto: ort, the fastest verified runtime here (ort A ms < ncnn B ms at 1x3x256x256; at 1x3x64x64:
    ncnn C ms < ort D ms; measured now, cached in ...)``, with the medians just measured."""
    shape = shape_text(entry.get("shape") or MEASURE_SHAPES[0])
    parts = [f"{_ranking(entry.get('ms') or {}, entry['order'])} at {shape}"]
    for other, ms in (entry.get("by_shape") or {}).items():
        if other != shape and isinstance(ms, dict):
            parts.append(f"at {other}: {_ranking(ms, sorted(ms, key=ms.get))}")
    return f"auto: {chosen}, the fastest verified runtime here ({'; '.join([*parts, where])})"


def _ranking(ms: dict, order: list[str]) -> str:
    return " < ".join(f"{name} {ms[name]:.1f} ms" for name in order if name in ms)
