"""Students: width- and depth-scaled copies of a teacher's arch, or a wide-shallow SRVGG for the same scale.

``width`` is the fraction C of the teacher's channels (SDAKD): every internal channel count is scaled by C and
rounded (RRDB num_feat and num_grow_ch; SRVGG num_feat; U-Net D num_feat). ``depth`` keeps that many RRDB blocks
(or SRVGG body convs). Weights are randomly initialised here (the SDAKD paper's setting).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

from torch import nn

from .errors import GankdError
from .modelio import ModelConfig
from .registry import get_arch, make_config

FAMILIES = ("rrdb", "srvgg")


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def width_label(width: float) -> str:
    """1/4 for 0.25, 0.3 for 0.3: how a width is written in tables and folder names."""
    frac = Fraction(width).limit_denominator(64)
    exact = abs(float(frac) - width) < 1e-9
    return f"1/{frac.denominator}" if exact and frac.numerator == 1 and frac.denominator > 1 else f"{width:g}"


def student_config(teacher: ModelConfig, width: float = 1.0, depth: int | None = None, family: str | None = None,
                   num_feat: int | None = None) -> ModelConfig:
    """The ModelConfig of a student of ``teacher`` (see module doc). ``num_feat`` overrides the scaled width."""
    if not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise GankdError(f"width must be a fraction in (0, 1], got {width!r}")
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise GankdError(f"depth must be a non-negative integer, got {depth!r}")
    entry = get_arch(teacher.arch)
    family = family or entry.family
    teacher_kw = dataclasses.asdict(make_config(teacher.arch, teacher.kwargs))  # every option, defaults filled in
    kw = dict(teacher_kw)
    if entry.kind == "discriminator":
        if family != entry.family:
            raise GankdError(f"a {teacher.arch} discriminator has {entry.family} students only, not {family!r}")
        kw["num_feat"] = num_feat or _scaled(kw["num_feat"], width)
        arch = teacher.arch
    elif family == "rrdb":
        if teacher.arch != "rrdbnet":
            raise GankdError(f"family 'rrdb' needs an RRDBNet teacher, not {teacher.arch!r}")
        if depth is not None and not 1 <= depth <= kw["num_block"]:
            raise GankdError(f"depth must be between 1 and the teacher's {kw['num_block']} RRDB blocks, got {depth}")
        kw["num_feat"] = num_feat or _scaled(kw["num_feat"], width)
        kw["num_grow_ch"] = _scaled(kw["num_grow_ch"], width)
        kw["num_block"] = depth or kw["num_block"]
        arch = "rrdbnet"
    elif family == "srvgg":
        if teacher.task != "sr" or teacher.scale is None:
            raise GankdError(f"an SRVGG student needs an SR teacher with a scale, not {teacher.arch!r}")
        base = kw if teacher.arch == "srvgg_compact" else {"num_feat": 64, "num_conv": 16}
        kw = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": num_feat or _scaled(base["num_feat"], width),
              "num_conv": base["num_conv"] if depth is None else depth, "upscale": teacher.scale,
              "act_type": "prelu"}
        arch = "srvgg_compact"
    else:
        raise GankdError(f"unknown student family {family!r}; families: {', '.join(FAMILIES)}")
    provenance = {"student_of": teacher.provenance.get("source", teacher.arch), "teacher_arch": teacher.arch,
                  "teacher_kwargs": teacher.kwargs, "width": width, "depth": depth, "family": family,
                  "init": "random"}
    actual_width = float(width) if num_feat is None else num_feat / teacher_kw["num_feat"]
    return dataclasses.replace(teacher, arch=arch, kwargs=kw, width=actual_width, provenance=provenance)


def build_student(teacher: ModelConfig, width: float = 1.0, depth: int | None = None, family: str | None = None,
                  num_feat: int | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build a randomly initialised student of ``teacher``; returns ``(model, config)`` ready for ``save_model``."""
    config = student_config(teacher, width=width, depth=depth, family=family, num_feat=num_feat)
    return config.build(), config
