"""Writing ``manifest.json`` of an artifact dir (DESIGN.md "Directory contracts"): what a runtime needs to use the
files without our architecture code.

The schema (keys per task, ``format_version``), its checks and the one reader live in ``gankd.serve.manifest``,
which serve reads without importing export; this module writes what that one describes.

Files are written atomically (``gankd.serve.files.atomic_write``: tmp + fsync + rename), so a reader never sees
half a manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

from gankd.serve import manifest as schema
from gankd.serve.files import atomic_write

# the one reader; its one-line ServeError is a GankdError, which gankd-export and gankd-bench print
from gankd.serve.manifest import (  # noqa: F401  (the writer's)
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    REQUIRED_KEYS,
    read_manifest,  # noqa: F401
)

INPUT_NAME = "input"
OUTPUT_NAME = "output"


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
    """Write ``manifest`` atomically, after the reader's checks: gankd never writes a manifest it would refuse."""
    target = Path(artifact_dir) / MANIFEST_FILE
    schema.check_manifest(manifest, target)
    return atomic_write(target, json.dumps(manifest, indent=2) + "\n")


def artifact_file(artifact_dir: str | Path, manifest: dict, kind: str) -> Path | None:
    """The path of one format's file (``onnx``, ``onnx-int8``, ``pt2``, ...), or None when it was not exported."""
    entry = manifest["files"].get(kind)
    return Path(artifact_dir) / entry["path"] if entry else None
