"""``manifest.json`` of an artifact dir (DESIGN.md "Directory contracts"): its schema, its checks and the one reader.

What a runtime needs to use the files without our architecture code. ``gankd.export.manifest`` writes it;
everything that reads it (sessions, the demo, ``gankd-bench``, ``gankd-export``) reads it through
:func:`read_manifest`, so a manifest is accepted or refused with the same one-line message everywhere. A bottom-layer
module: it imports only ``serve.errors``, so gankd.export imports it (serve imports neither distill nor export).

Schema (``format_version`` 1); every key of :data:`REQUIRED_KEYS` is always present, ``None`` where it does not
apply::

    format, format_version, created_by, created_at
    source     {model_dir, weights_sha256}                 the model folder exported and its model.safetensors
    config     {arch, kwargs, task, scale, input_range, width, provenance}   the folder's ModelConfig
    scale      int                                         output size = input size x scale
    inputs     [{name, shape, dtype, range, spatial_multiple}]   shape symbolic: ["N", 3, "H", "W"]
    outputs    [{name, shape, dtype, range, clamp}]        ["N", 3, "H*4", "W*4"]; clamp the raw output to range
    opset      int
    exporter   {onnx, pt2, simplify}                       which exporter wrote each format, and whether the graph
                                                           was simplified
    compute    {macs_per_input_pixel, params}              GMACs at any size = N*H*W*macs_per_input_pixel / 1e9
    files      {kind: {path, sha256, bytes, ...}}          kind: onnx, onnx-fp16, onnx-int8, pt2, trt, ncnn (the
                                                           .param), ncnn-bin, pth
    int8       {written, gate, quantization[, reason]} | None   the --int8 outcome, also when the file was left out:
                                                           gate {psnr_db, speedup, min_psnr_db, min_speedup, ...},
                                                           quantization {recipe, fp32_convs, calibration,
                                                           calibration_cpu {model, flags}} (absent before 2026-12)
    parity     {passed, forced, tolerances, inputs, results}   each artifact against the PyTorch model
    bench      {results: [...]}                            filled in by ``gankd-bench --write-manifest``
    runtime_order {machine key: {order, ms, shape, by_shape, threads, measured_at, rounds}}   optional (absent
                                                           before 2026-12, and where fewer than two runtimes can
                                                           run): the verified runtimes, fastest first at ``shape``,
                                                           measured on the export machine; what Session's ``auto``
                                                           serves (``serve.auto``; other machines measure again)
    task       "sr" | "generate" | "face_sr"               absent in older manifests: config.task (:func:`task_of`)

The tasks beyond sr (``gankd.export.tasks``) have fixed-size inputs with a symbolic batch only, ``scale: None`` and
``compute {macs_per_input_pixel: None, macs_per_sample, params}``, and add keys of their own (:data:`TASK_KEYS`)::

    generate   inputs  [{name: z, shape: [N, style_dim], range: None, distribution, seeding}]
                       (+ {name: psi, shape: [N], range: [0, 1]} when exported with --psi)
               outputs [{name: image, shape: [N, 3, S, S], range: [-1, 1], clamp: True}]
               style_dim, size, truncation {psi_input, latent_avg {samples, seed, by, norm}, formula} | None
               parity.results carry seeds (and psi) per z batch
    face_sr    inputs  [{name: image, shape: [N, 3, S, S], range: [-1, 1]}, {name: scale, shape: [N], range: [4, 64]}]
               outputs [{name: restored, shape: [N, 3, S, S], range: [-1, 1], clamp: True}]
               size, scales (the parity scales), degradation (how the low-quality input is made)
               parity.results carry scale; parity.by_scale {scale: {artifact: {max_abs, psnr_db, passed}}}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ServeError, first_line

MANIFEST_FILE = "manifest.json"
FORMAT = "gankd-artifact"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "created_by", "created_at", "source", "config", "scale", "inputs",
                 "outputs", "opset", "exporter", "compute", "files", "parity", "bench")
TASK_KEYS = {"sr": (), "generate": ("style_dim", "size", "truncation"), "face_sr": ("size", "scales", "degradation")}
TASKS = tuple(TASK_KEYS)


def task_of(manifest: dict) -> str:
    """The manifest's task; older manifests have it in ``config`` only, and the oldest are sr."""
    return manifest.get("task") or manifest.get("config", {}).get("task", "sr")


def check_manifest(manifest, path: Path) -> dict:
    """``manifest`` (parsed from ``path``) when it is one this gankd reads, else ServeError in one line."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ServeError(f"{path} is not a gankd artifact manifest (format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ServeError(f"{path} has format_version {manifest.get('format_version')!r}; this gankd reads version "
                         f"{FORMAT_VERSION} (re-export the model with this gankd-export)")
    task = task_of(manifest)
    if task not in TASK_KEYS:
        raise ServeError(f"{path} has task {task!r}; this gankd runs {', '.join(TASKS)}")
    missing = [key for key in (*REQUIRED_KEYS, *TASK_KEYS[task]) if key not in manifest]
    if missing:
        raise ServeError(f"{path} lacks the key {missing[0]!r}")
    if not isinstance(manifest["files"], dict):
        raise ServeError(f"{path}: 'files' is not an object of file entries")
    if not isinstance(manifest.get("runtime_order", {}), dict):
        raise ServeError(f"{path}: 'runtime_order' is not an object of measured orders")
    for key in ("inputs", "outputs"):
        specs = manifest[key]
        if not isinstance(specs, list) or not specs or not all(isinstance(spec, dict) for spec in specs):
            raise ServeError(f"{path}: {key!r} is not a non-empty list of tensor entries")
    return manifest


def read_manifest(artifact_dir: str | Path) -> dict:
    """The checked manifest of an artifact dir (:func:`check_manifest`); ServeError in one line otherwise."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.exists():
        raise ServeError(f"artifact folder {str(artifact_dir)!r} does not exist")
    if not artifact_dir.is_dir():
        raise ServeError(f"{str(artifact_dir)!r} is a file, not an artifact folder")
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise ServeError(f"{str(artifact_dir)!r} is not a gankd artifact folder: {MANIFEST_FILE} is missing "
                         "(make one with gankd-export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServeError(f"{path} is not valid JSON ({first_line(exc)})") from None
    return check_manifest(manifest, path)


def is_artifact_folder(folder: str | Path) -> bool:
    """A folder gankd-export wrote: its manifest.json is gankd's format (what ``--force`` may replace)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def input_names(manifest: dict) -> tuple[str, ...]:
    """The names of the model's inputs, in the order the graph takes them."""
    return tuple(spec.get("name", "input") for spec in manifest["inputs"])


# ------------------------------------------------------------------------------------------------ parity tolerances


@dataclass(frozen=True)
class Tolerance:
    """A parity tolerance as the manifest states it (``max_abs <= 0.00784314`` or ``PSNR >= 40 dB``): what
    gankd-export's parity check and a Session's check at open both apply."""

    max_abs: float | None = None
    min_psnr_db: float | None = None

    @classmethod
    def parse(cls, text) -> "Tolerance | None":
        if not isinstance(text, str):
            return None
        if match := re.fullmatch(r"\s*max_abs\s*<=\s*([0-9.eE+-]+)\s*", text):
            return cls(max_abs=float(match.group(1)))
        if match := re.fullmatch(r"\s*PSNR\s*>=\s*([0-9.eE+-]+)\s*dB\s*", text):
            return cls(min_psnr_db=float(match.group(1)))
        return None

    def text(self) -> str:
        if self.max_abs is None and self.min_psnr_db is None:
            return "recorded, not bounded"
        return f"max_abs <= {self.max_abs:g}" if self.max_abs is not None else f"PSNR >= {self.min_psnr_db:g} dB"

    def passes(self, max_abs: float, psnr_db: float, slack: float = 0.0) -> bool:
        """``slack`` widens ``max_abs`` (a check against a reference that has its own error, as at open)."""
        if not math.isfinite(max_abs) or math.isnan(psnr_db):
            return False
        if self.max_abs is not None and max_abs > self.max_abs + slack:
            return False
        return self.min_psnr_db is None or psnr_db >= self.min_psnr_db


# each artifact kind's bound against the PyTorch model; gankd.export.parity says why each is what it is
TOLERANCES: dict[str, Tolerance] = {
    "onnx": Tolerance(max_abs=1e-4),
    "pt2": Tolerance(max_abs=1e-4),
    "onnx-fp16": Tolerance(min_psnr_db=40.0),
    "onnx-int8": Tolerance(min_psnr_db=40.0),
    "onnx-int8-qat": Tolerance(min_psnr_db=30.0),
    "trt": Tolerance(max_abs=1e-3),
    "trt-fp16": Tolerance(min_psnr_db=40.0),
    "ncnn": Tolerance(max_abs=2 / 255),
    "pth": Tolerance(max_abs=1e-4),
}
