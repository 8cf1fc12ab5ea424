"""``gankd-distill inspect``: arch, params, GMACs of a model folder and of its candidate students."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from gankd.distill.models.cost import build_for_counting, count_macs, count_params, example_inputs, model_input_shapes
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.registry import get_arch
from gankd.distill.models.students import student_config, width_label
from gankd.serve.timing import measure_interleaved

STUDENT_WIDTHS = (0.5, 0.25, 0.125)
SRVGG_STUDENT = {"num_feat": 32, "num_conv": 16}


@dataclass(frozen=True)
class ProfileRow:
    name: str
    arch: str
    options: str
    params: int
    macs: int
    latency_ms: float | None = None


def _options(config: ModelConfig) -> str:
    keys = ("architecture", "num_feat", "num_grow_ch", "num_block", "num_conv", "scale", "upscale", "size", "out_size",
            "style_dim", "n_mlp", "narrow")
    return " ".join(f"{k}={config.kwargs[k]}" for k in keys if k in config.kwargs)


def _macs(config: ModelConfig, input_shape: tuple[int, ...]) -> tuple[int, int]:
    model = build_for_counting(config)
    return count_params(model), count_macs(model, model_input_shapes(config, input_shape))


def measure_latency_ms(config: ModelConfig, input_shape: tuple[int, ...], runs: int) -> float:
    """Median PyTorch CPU latency of one forward at ``input_shape`` after one warm-up run (random weights)."""
    model = config.build().eval()
    x = example_inputs(config, input_shape)
    with torch.inference_mode():
        times = measure_interleaved([lambda: model(*x)], warmup_ms=0, duration_s=None, iterations=runs)[0]
    return statistics.median(times)


def profile_config(name: str, config: ModelConfig, input_shape: tuple[int, ...],
                   latency_runs: int = 0) -> ProfileRow:
    params, macs = _macs(config, input_shape)
    latency = measure_latency_ms(config, input_shape, latency_runs) if latency_runs else None
    return ProfileRow(name, config.arch, _options(config), params, macs, latency)


def srvgg_at_macs(config: ModelConfig, target_macs: int, input_shape: tuple[int, ...]) -> ModelConfig:
    """The SRVGG student (num_conv 16) whose num_feat gives the MACs closest to ``target_macs``."""
    lo, hi = 1, 512
    while lo < hi:  # MACs grow monotonically with num_feat
        mid = (lo + hi) // 2
        cfg = student_config(config, family="srvgg", num_feat=mid, depth=SRVGG_STUDENT["num_conv"])
        lo, hi = (mid + 1, hi) if _macs(cfg, input_shape)[1] < target_macs else (lo, mid)
    candidates = [student_config(config, family="srvgg", num_feat=f, depth=SRVGG_STUDENT["num_conv"])
                  for f in (max(1, lo - 1), lo)]
    return min(candidates, key=lambda c: abs(_macs(c, input_shape)[1] - target_macs))


def student_table(config: ModelConfig, input_shape: tuple[int, ...], latency_runs: int = 0) -> list[ProfileRow]:
    """The model, its RRDB/D students at C = 1/2, 1/4, 1/8, and for SR generators SRVGG-32 and the SRVGG whose
    MACs equal the C=1/4 student's (wide-shallow students are faster on CPU at equal MACs: compare them)."""
    rows = [profile_config("model", config, input_shape, latency_runs)]
    for width in STUDENT_WIDTHS:
        rows.append(profile_config(f"C={width_label(width)}", student_config(config, width=width), input_shape,
                                   latency_runs))
    if get_arch(config.arch).kind == "generator" and config.task == "sr" and config.scale:
        srvgg = student_config(config, family="srvgg", num_feat=SRVGG_STUDENT["num_feat"],
                               depth=SRVGG_STUDENT["num_conv"])
        rows.append(profile_config(f"SRVGG-{SRVGG_STUDENT['num_feat']}", srvgg, input_shape, latency_runs))
        quarter = next(r for r in rows if r.name == "C=1/4")
        equal = srvgg_at_macs(config, quarter.macs, input_shape)
        rows.append(profile_config(f"SRVGG-{equal.kwargs['num_feat']}", equal, input_shape, latency_runs))
    return rows


def format_table(rows: list[ProfileRow]) -> str:
    base = rows[0]
    timed = base.latency_ms is not None
    header = f"{'model':<10} {'arch':<15} {'options':<50} {'params':>10} {'GMACs':>8} {'MACs/model':>10}"
    header += f" {'CPU ms':>9} {'speed-up':>8}" if timed else ""
    lines = [header, "-" * len(header)]
    for row in rows:
        line = (f"{row.name:<10} {row.arch:<15} {row.options:<50} {row.params / 1e6:>9.3f}M "
                f"{row.macs / 1e9:>8.2f} {row.macs / base.macs:>10.4f}")
        if timed:
            line += f" {row.latency_ms:>9.1f} {base.latency_ms / row.latency_ms:>7.2f}x"
        lines.append(line)
    return "\n".join(lines)
