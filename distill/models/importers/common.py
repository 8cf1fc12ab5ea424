"""What every importer shares: the provenance record of a converted teacher and the config of an SR teacher."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from gankd.distill.models.folder import ModelConfig
from gankd.serve.files import sha256_file


def make_provenance(fmt: str, source: str, files: list[Path], **extra) -> dict:
    """The ``provenance`` of a converted teacher's config.json: format, source, the sha256 of every file read and the
    gankd version, so a model folder can be traced back to the exact files it came from."""
    try:
        version = importlib.metadata.version("gankd")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a plain checkout
        version = "unknown"
    return {
        "format": fmt,
        "source": source,
        "files": {p.name: sha256_file(p) for p in files},
        "gankd_version": version,
        **extra,
    }


def sr_config(arch: str, kwargs: dict, provenance: dict) -> ModelConfig:
    """The ModelConfig of an imported Real-ESRGAN-family model (.pth or ncnn): SR in [0, 1] at the arch's scale."""
    scale = {"rrdbnet": kwargs.get("scale"), "srvgg_compact": kwargs.get("upscale")}.get(arch)
    return ModelConfig(arch=arch, kwargs=kwargs, task="sr", scale=scale, input_range=(0.0, 1.0), width=1.0,
                       provenance=provenance)
