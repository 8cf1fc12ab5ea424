"""``gankd-bench --sweep``: how an SR model's cost grows with the image, whole and tiled, on each backend.

Users upscale whole photos (0.3–2 Mpx in) and video frames, not 64² crops. The sweep runs every artifact at
:data:`SIZES` (LR input sizes; ``photo`` is a real held-out photo at its full size, :data:`PHOTO`), each way
``gankd.serve`` runs an image:

- ``whole``: the image reflect-padded by ``pad`` px and run as one input (``Session.run(tile=0)``);
- ``tiled``: the same through ``tile`` × ``tile`` LR tiles with ``pad`` px of context (``Session.run(tile=256)``,
  the demo's and ``upscale``'s default), the path :mod:`gankd.serve.tiling` runs; its overhead is the ratio of the
  two medians at the same size.

Per row: median ms (interleaved with the other rows of the same size and backend, as gankd-bench times), output
Mpx/s, and ``+RSS``: how much the process's resident memory grew during the row's first run (sampled every ~2 ms
from ``/proc/self/statm``), on sessions opened afresh for each size and backend, so it is that row's working memory
for that image (what a server needs on top of what it holds already). The process's absolute peak is in the JSON.

A run that would take longer than ``max_run_s`` (projected linearly in pixels from the row's previous size: the cost
of a conv net is linear in pixels, which the measured sizes show) is not run: the row is recorded as projected, so
the teacher's cost at 720p is stated without spending minutes per run on it.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gankd.distill.errors import GankdError
from gankd.serve.timing import latency_stats, measure_interleaved, timed_ms

SIZES: tuple[str, ...] = ("64", "128", "256", "512", "720x1280")  # LR inputs; "720x1280" is a 720p frame
PHOTO = ("holdout", "motorcycle_left")  # "photo": a held-out photo (500 x 741) at its full size
DEFAULT_TILE, DEFAULT_PAD = 256, 10  # gankd-demo / upscale's default tile, serve.session.DEFAULT_PAD
DEFAULT_MAX_RUN_S = 20.0
MODES = ("whole", "tiled")


def parse_sizes(text: str) -> tuple[str, ...]:
    """"64,256,720x1280,photo" -> the sizes, checked: N (square), HxW, or photo."""
    sizes = tuple(s.strip() for s in text.split(",") if s.strip())
    if not sizes:
        raise GankdError("--sweep-sizes is empty; e.g. 64,128,256,512,720x1280,photo")
    for size in sizes:
        if size != "photo" and _hw(size) is None:
            raise GankdError(f"--sweep-sizes: {size!r} is not N, HxW or photo")
    return sizes


def _hw(size: str) -> tuple[int, int] | None:
    parts = size.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) >= 8 for p in parts):
        return None
    return (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def size_input(size: str, scale: int) -> np.ndarray:
    """1×3×H×W float32 LR input of ``size``: a real photo's crop (bicubic-downscaled, as the bench's inputs) or the
    held-out photo at its full size."""
    from gankd.export.parity import real_lr_batch

    if size == "photo":
        from gankd.distill.data.images import sample_images

        photo = dict(sample_images(PHOTO[0]))[PHOTO[1]]
        return np.ascontiguousarray(photo[None].numpy().astype(np.float32))
    h, w = _hw(size)
    return np.ascontiguousarray(real_lr_batch((1, 3, h, w), scale).numpy())


class PeakRss:
    """Peak resident set size of this process while the block runs (a sampling thread, ~2 ms)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak, self.before = interval_s, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.before = self.peak = self.rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())


def sweep(artifact_dirs: Sequence[str | Path], backends: Sequence[str] = ("ort",), sizes: Sequence[str] = SIZES,
          tile: int = DEFAULT_TILE, pad: int = DEFAULT_PAD, max_run_s: float = DEFAULT_MAX_RUN_S,
          duration_s: float = 2.0, threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Every fp32 artifact on every backend at every size, whole and tiled (module docstring); JSON-ready."""
    from gankd.serve.tiling import upscale

    from .bench import (
        BenchSettings,
        _common_task,
        _machine,
        _Runners,
        load_artifacts,
        physical_cores,
        plan_rows,
        read_cpu_peak,
    )

    if tile < 16 or pad < 0:
        raise GankdError(f"--tile must be >= 16 and --pad >= 0, got {tile} and {pad}")
    if max_run_s <= 0:
        raise GankdError(f"--max-run-s must be positive, got {max_run_s:g}")
    artifacts = load_artifacts(artifact_dirs)
    settings = BenchSettings(backends=tuple(backends), variants=("fp32",))
    if _common_task(artifacts, settings) != "sr":
        raise GankdError("--sweep measures sr artifacts (image in, image out)")
    rows = plan_rows(artifacts, settings)
    threads = threads or physical_cores()
    if "torch" in backends:
        import torch

        torch.set_num_threads(threads)
    last: dict[tuple, tuple[int, float]] = {}  # (artifact, backend, mode) -> (input pixels, median ms)
    results = []
    for size in sizes:
        scale = artifacts[0].manifest["scale"]
        x = size_input(size, scale)
        pixels = x.shape[2] * x.shape[3]
        for backend in backends:
            # fresh sessions per (size, backend): a session's memory arena keeps its largest run, so reused ones
            # would hold every size's peak at once and hide each row's own growth (+RSS)
            runners = _Runners(threads)
            calls, records = [], []
            for row in (r for r in rows if r.backend == backend):
                run = runners.make(row, x.shape)
                multiple = int(row.artifact.manifest["inputs"][0].get("spatial_multiple") or 1)
                for mode in MODES:
                    key = (row.artifact.name, backend, mode)
                    record = {"artifact": row.artifact.name, "backend": backend, "size": size,
                              "input_hw": list(x.shape[2:]), "mode": mode, "tile": tile if mode == "tiled" else None,
                              "pad": pad}
                    records.append(record)
                    projected = last[key][1] * pixels / last[key][0] if key in last else None
                    if projected is not None and projected / 1e3 > max_run_s:
                        record.update(projected=True, median_ms=projected, runs=0)
                        last[key] = (pixels, projected)
                        continue
                    call = (lambda run=run, m=multiple, t=(tile if mode == "tiled" else 0):
                            upscale(run, x, scale, tile=t, pad=pad, multiple=m))
                    with PeakRss() as rss:
                        _, first_ms = timed_ms(call)
                    record.update(projected=False, peak_rss_mb=rss.peak / 2**20,
                                  extra_rss_mb=(rss.peak - rss.before) / 2**20, first_ms=first_ms)
                    if first_ms / 1e3 > max_run_s:  # no second run of one that slow: its first run is the figure
                        record.update(median_ms=first_ms, runs=1)
                        last[key] = (pixels, first_ms)
                        continue
                    calls.append((record, call, key))
            log(f"sweep {size} ({x.shape[2]}x{x.shape[3]}) {backend}: "
                + ", ".join(f"{r['artifact']}/{r['mode']}" + (" (projected)" if r.get("projected") else "")
                            for r in records))
            if calls:
                per_call = max(sum(r["first_ms"] for r, _, _ in calls) / 1e3 / len(calls), 1e-3)
                rounds = max(1, min(20, int(duration_s / per_call)))
                latencies = measure_interleaved([c for _, c, _ in calls], warmup_ms=0, duration_s=None,
                                                iterations=rounds)
                for (record, _, key), times in zip(calls, latencies):
                    stats = latency_stats(times)
                    record.update(median_ms=stats["median_ms"], runs=stats["runs"])
                    last[key] = (pixels, stats["median_ms"])
            for record in records:
                out_px = pixels * scale * scale
                record["mpx_per_s_out"] = out_px / 1e6 / (record["median_ms"] / 1e3)
            _overheads(records)
            results += records
            del calls, runners
            gc.collect()
    return {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(read_cpu_peak(threads), threads),
            "settings": {"backends": list(backends), "sizes": list(sizes), "tile": tile, "pad": pad,
                         "max_run_s": max_run_s, "duration_s": duration_s, "threads": threads,
                         "photo": "/".join(PHOTO)},
            "method": {"whole": "reflect-pad by pad, one run (Session.run tile=0)",
                       "tiled": "serve.tiling: tile x tile LR tiles with pad px of context",
                       "timing": "median of interleaved rounds per (size, backend), after one untimed run",
                       "peak_rss": "process RSS sampled every ~2 ms during the row's first run",
                       "projected": "median ms of the previous size x pixel ratio, not run (over max_run_s)"},
            "artifacts": [{"name": a.name, "path": str(a.path)} for a in artifacts],
            "rows": results}


def _overheads(records: list[dict]) -> None:
    """tiled / whole median of each artifact at this size; the first artifact's whole row is each row's
    speed-up reference (same backend, same mode)."""
    by = {(r["artifact"], r["mode"]): r for r in records}
    first = records[0]["artifact"] if records else None
    for r in records:
        whole = by.get((r["artifact"], "whole"))
        r["tiling_overhead"] = r["median_ms"] / whole["median_ms"] if r["mode"] == "tiled" and whole else None
        ref = by.get((first, r["mode"]))
        r["speedup"] = ref["median_ms"] / r["median_ms"] if ref else None


def format_table(result: dict) -> str:
    from gankd.distill.report.plots import markdown_table

    rows = [{"model": r["artifact"], "backend": r["backend"], "LR in": "x".join(map(str, r["input_hw"])),
             "mode": r["mode"] + (" (projected)" if r.get("projected") else ""), "median ms": r["median_ms"],
             "Mpx/s out": r["mpx_per_s_out"], "+RSS MB": r.get("extra_rss_mb"),
             "tiled / whole": r["tiling_overhead"], "speed-up": r["speedup"]} for r in result["rows"]]
    columns = ["model", "backend", "LR in", "mode", "median ms", "Mpx/s out", "+RSS MB", "tiled / whole", "speed-up"]
    settings = result["settings"]
    return "\n".join([markdown_table(rows, columns),
                      f"\ntiled: {settings['tile']}² LR tiles, {settings['pad']} px context; speed-up against the "
                      f"first model, same backend and mode; projected rows were not run (longer than "
                      f"{settings['max_run_s']:g} s), their ms is the previous size's scaled by pixels; "
                      f"CPU: {(result['machine'].get('cpu') or {}).get('model')}, {result['machine']['threads']} threads"])


def save_plot(result: dict, path: str | Path) -> Path:
    """Median ms against input pixels (log-log), one panel per backend; a line per model, whole solid and tiled
    dashed; projected points hollow."""
    from gankd.distill.report.plots import _figure, _save

    backends = result["settings"]["backends"]
    names = [a["name"] for a in result["artifacts"]]
    figure = _figure(5.0 * len(backends), 4.2)
    axes = figure.subplots(1, len(backends), squeeze=False)[0]
    for ax, backend in zip(axes, backends):
        for i, name in enumerate(names):
            for mode, style in (("whole", "-"), ("tiled", "--")):
                pts = sorted((r for r in result["rows"] if r["artifact"] == name and r["backend"] == backend
                              and r["mode"] == mode), key=lambda r: r["input_hw"][0] * r["input_hw"][1])
                if not pts:
                    continue
                xs = [r["input_hw"][0] * r["input_hw"][1] / 1e6 for r in pts]
                ys = [r["median_ms"] for r in pts]
                ax.plot(xs, ys, style, color=f"C{i}", label=f"{name} {mode}")
                for xv, yv, r in zip(xs, ys, pts):
                    ax.plot([xv], [yv], "o", color=f"C{i}", markerfacecolor="none" if r.get("projected") else f"C{i}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("LR input (Mpx)")
        ax.set_ylabel("median ms")
        ax.set_title(f"{backend} (hollow: projected)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return _save(figure, path)


def median_ms(result: dict, artifact: str, backend: str, size: str, mode: str = "whole") -> float | None:
    """One row's median, for scripts that print ratios."""
    return next((r["median_ms"] for r in result["rows"] if (r["artifact"], r["backend"], r["size"], r["mode"])
                 == (artifact, backend, size, mode)), None)



