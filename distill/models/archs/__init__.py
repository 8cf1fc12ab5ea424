"""Architectures. Each module registers its archs on import; they are listed here explicitly (no directory scan)."""

from . import foreign, gcfsr, stylegan2  # noqa: F401  (register their archs)
from .discriminator import UNetDiscriminatorSN, UNetDiscriminatorSNConfig
from .rrdbnet import RRDBNet, RRDBNetConfig
from .span import SPAN, SPANConfig
from .srvgg import SRVGGNetCompact, SRVGGNetCompactConfig

__all__ = [
    "RRDBNet",
    "RRDBNetConfig",
    "SPAN",
    "SPANConfig",
    "SRVGGNetCompact",
    "SRVGGNetCompactConfig",
    "UNetDiscriminatorSN",
    "UNetDiscriminatorSNConfig",
]
