"""``manifest.json`` of an artifact dir (DESIGN.md "Directory contracts"): what a runtime needs to use the files
without our architecture code.

Schema (``format_version`` 1); every key is always present, ``None`` where it does not apply::

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
    files      {kind: {path, sha256, bytes, ...}}          kind: onnx, onnx-fp16, onnx-int8, pt2, trt
    int8       {written, gate, quantization[, reason]} | None   the --int8 outcome, also when the file was left out:
                                                           gate {psnr_db, speedup, min_psnr_db, min_speedup, ...},
                                                           quantization {recipe, fp32_convs, calibration,
                                                           calibration_cpu {model, flags}} (absent before 2026-12)
    parity     {passed, forced, tolerances, inputs, results}   each artifact against the PyTorch model
    bench      {results: [...]}                            filled in by ``gankd-bench --write-manifest``
    task       "sr" | "generate" | "face_sr"               (absent in older manifests: read config.task)

The tasks beyond sr (``gankd.export.tasks``) have fixed-size inputs with a symbolic batch only, ``scale: None`` and
``compute {macs_per_input_pixel: None, macs_per_sample, params}``, and add keys of their own::

    generate   inputs  [{name: z, shape: [N, style_dim], range: None, distribution, seeding}]
                       (+ {name: psi, shape: [N], range: [0, 1]} when exported with --psi)
               outputs [{name: image, shape: [N, 3, S, S], range: [-1, 1], clamp: True}]
               style_dim, size, truncation {psi_input, latent_avg {samples, seed, by, norm}, formula} | None
               parity.results carry seeds (and psi) per z batch
    face_sr    inputs  [{name: image, shape: [N, 3, S, S], range: [-1, 1]}, {name: scale, shape: [N], range: [4, 64]}]
               outputs [{name: restored, shape: [N, 3, S, S], range: [-1, 1], clamp: True}]
               size, scales (the parity scales), degradation (how the low-quality input is made)
               parity.results carry scale; parity.by_scale {scale: {artifact: {max_abs, psnr_db, passed}}}

Files are written atomically (tmp + rename), so a reader never sees half a manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gankd.distill.errors import GankdError

MANIFEST_FILE = "manifest.json"
FORMAT = "gankd-artifact"
FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAME = "output"
REQUIRED_KEYS = ("format", "format_version", "created_by", "created_at", "source", "config", "scale", "inputs",
                 "outputs", "opset", "exporter", "compute", "files", "parity", "bench")


def io_specs(config, spatial_multiple: int) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an image-to-image generator: N×C×H×W float32 in the config's input range, the output
    ``scale`` times larger."""
    scale = config.scale
    in_ch = int(config.kwargs.get("num_in_ch", 3))
    out_ch = int(config.kwargs.get("num_out_ch", 3))
    value_range = [float(v) for v in config.input_range]
    out_h, out_w = ("H", "W") if scale == 1 else (f"H*{scale}", f"W*{scale}")
    inputs = [{"name": INPUT_NAME, "shape": ["N", in_ch, "H", "W"], "dtype": "float32", "range": value_range,
               "spatial_multiple": spatial_multiple}]
    outputs = [{"name": OUTPUT_NAME, "shape": ["N", out_ch, out_h, out_w], "dtype": "float32",
                "range": value_range, "clamp": True}]
    return inputs, outputs


def write_manifest(artifact_dir: str | Path, manifest: dict) -> Path:
    target = Path(artifact_dir) / MANIFEST_FILE
    text = json.dumps(manifest, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; a manifest is as readable as the model files
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_manifest(artifact_dir: str | Path) -> dict:
    """The manifest of an artifact dir, checked for the keys every reader relies on (one-line errors)."""
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.exists():
        raise GankdError(f"artifact folder {str(artifact_dir)!r} does not exist")
    if not artifact_dir.is_dir():
        raise GankdError(f"{str(artifact_dir)!r} is a file, not an artifact folder")
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise GankdError(f"{str(artifact_dir)!r} is not a gankd artifact folder: {MANIFEST_FILE} is missing "
                         "(make one with gankd-export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GankdError(f"{path} is not a gankd artifact manifest (format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GankdError(f"{path} has format_version {manifest.get('format_version')!r}; this gankd reads "
                         f"version {FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise GankdError(f"{path} lacks the key {missing[0]!r}")
    return manifest


def artifact_file(artifact_dir: str | Path, manifest: dict, kind: str) -> Path | None:
    """The path of one format's file (``onnx``, ``onnx-int8``, ``pt2``, ...), or None when it was not exported."""
    entry = manifest["files"].get(kind)
    return Path(artifact_dir) / entry["path"] if entry else None
