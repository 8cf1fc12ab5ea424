"""``gankd-distill inspect``: arch, params, GMACs of a model folder and of its candidate students."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .modelio import ModelConfig
from .profile import count_macs, count_params
from .registry import get_arch
from .students import student_config, width_label

STUDENT_WIDTHS = (0.5, 0.25, 0.125)
SRVGG_STUDENT = {"num_feat": 32, "num_conv": 16}


@dataclass(frozen=True)
class ProfileRow:
    name: str
    arch: str
    options: str
    params: int
    macs: int


def _options(config: ModelConfig) -> str:
    keys = ("num_feat", "num_grow_ch", "num_block", "num_conv", "scale", "upscale")
    return " ".join(f"{k}={config.kwargs[k]}" for k in keys if k in config.kwargs)


def profile_config(name: str, config: ModelConfig, input_shape: tuple[int, ...]) -> ProfileRow:
    with torch.device("meta"):
        model = config.build()
    return ProfileRow(name, config.arch, _options(config), count_params(model), count_macs(model, input_shape))


def student_table(config: ModelConfig, input_shape: tuple[int, ...]) -> list[ProfileRow]:
    rows = [profile_config("model", config, input_shape)]
    for width in STUDENT_WIDTHS:
        rows.append(profile_config(f"C={width_label(width)}", student_config(config, width=width), input_shape))
    if get_arch(config.arch).kind == "generator" and config.task == "sr":
        srvgg = student_config(config, family="srvgg", num_feat=SRVGG_STUDENT["num_feat"],
                               depth=SRVGG_STUDENT["num_conv"])
        rows.append(profile_config(f"SRVGG-{SRVGG_STUDENT['num_feat']}", srvgg, input_shape))
    return rows


def format_table(rows: list[ProfileRow]) -> str:
    base = rows[0]
    header = f"{'model':<10} {'arch':<22} {'options':<52} {'params':>10} {'GMACs':>9} {'MACs/teacher':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name:<10} {row.arch:<22} {row.options:<52} {row.params / 1e6:>9.3f}M "
                     f"{row.macs / 1e9:>9.2f} {row.macs / base.macs:>12.4f}")
    return "\n".join(lines)
