"""Writing ``manifest.json`` of an artifact dir (DESIGN.md "Directory contracts"): what a runtime needs to use the
files without our architecture code.

The schema (keys per task, ``format_version``), its checks and the one reader live in ``gankd.serve.manifest``,
which serve reads without importing export; this module writes what that one describes.

Files are written atomically (tmp + rename), so a reader never sees half a manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from gankd.distill.errors import GankdError
from gankd.serve import manifest as schema
from gankd.serve.errors import ServeError
from gankd.serve.manifest import FORMAT, FORMAT_VERSION, MANIFEST_FILE, REQUIRED_KEYS  # noqa: F401  (the writer's)

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
    with _as_gankd_error():
        schema.check_manifest(manifest, target)
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
    """The manifest of an artifact dir, read and checked by ``gankd.serve.manifest.read_manifest``; its one-line
    refusal comes as the GankdError that gankd-export and gankd-bench print."""
    with _as_gankd_error():
        return schema.read_manifest(artifact_dir)


@contextlib.contextmanager
def _as_gankd_error():
    """The schema's ServeError as the GankdError of gankd.export, with the same one-line message."""
    try:
        yield
    except ServeError as exc:
        raise GankdError(str(exc)) from None


def artifact_file(artifact_dir: str | Path, manifest: dict, kind: str) -> Path | None:
    """The path of one format's file (``onnx``, ``onnx-int8``, ``pt2``, ...), or None when it was not exported."""
    entry = manifest["files"].get(kind)
    return Path(artifact_dir) / entry["path"] if entry else None
