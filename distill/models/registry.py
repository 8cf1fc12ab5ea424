"""A visible registry of architectures: a decorator on small factory functions (after timm ``_registry.py``).

Every arch has one frozen dataclass config; ``create_model(name, **kwargs)`` builds it. Unknown and duplicate names
raise. Arch modules are imported explicitly by ``gankd.distill.models.archs`` (no directory scanning).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

from gankd.distill.errors import GankdError

ArchKind = Literal["generator", "discriminator"]
# the task a family's generators serve (config.json "task"); families not listed are super-resolution
FAMILY_TASKS = {"stylegan2": "generate", "stylegan2_d": "generate", "gcfsr": "face_sr"}


def family_task(family: str) -> str:
    return FAMILY_TASKS.get(family, "sr")


@dataclass(frozen=True)
class ArchEntry:
    name: str
    config_cls: type
    build: Callable[..., nn.Module]
    kind: ArchKind
    family: str  # "rrdb", "srvgg", "unet_d": what students of this arch may become


_REGISTRY: dict[str, ArchEntry] = {}


def register_arch(name: str, config_cls: type, kind: ArchKind, family: str):
    """Register ``build(config) -> nn.Module`` under ``name``; a second registration of a name raises."""

    def decorator(build: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise GankdError(f"arch {name!r} is already registered (by {_REGISTRY[name].build.__module__})")
        if not (dataclasses.is_dataclass(config_cls) and config_cls.__dataclass_params__.frozen):
            raise GankdError(f"arch {name!r}: config {config_cls.__name__} must be a frozen dataclass")
        _REGISTRY[name] = ArchEntry(name, config_cls, build, kind, family)
        return build

    return decorator


def get_arch(name: str) -> ArchEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GankdError(f"unknown arch {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def list_archs(kind: ArchKind | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def make_config(name: str, kwargs: dict):
    """Validate ``kwargs`` against the arch's config dataclass; unknown keys and bad types give one line."""
    entry = get_arch(name)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise GankdError(f"arch {name!r} has no option {unknown[0]!r}; its options: {', '.join(sorted(fields))}")
    try:
        return entry.config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise GankdError(f"arch {name!r}: {exc}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered arch from keyword options (its config dataclass fields)."""
    return get_arch(name).build(make_config(name, kwargs))
