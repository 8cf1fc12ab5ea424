"""INT8 for ONNX Runtime on any x86 CPU: one recipe per model family, and the gate an INT8 file passes to be written.

Why these settings (ONNX Runtime's quantization guide, and OpenVINO's "saturation issue" note, say the same):
ORT runs a QDQ model's convolutions as u8×s8 integer products. With VNNI (``vpdpbusd``) they accumulate exactly in
int32; without it (AVX2, AVX-512 before Cascade Lake, AMD Zen 2/3) the kernels use ``vpmaddubsw``, which adds two
u8×s8 products into a *saturating* int16. Two products of 255 × 127 overflow it, so the same file computed different
(and worse) numbers on the AMD EPYC than on the Intel Xeon: the quickstart student lost 2.8 dB there. Weights on 7
bits (``reduce_range``, [-64, 64]) keep every pair sum within int16 (2 × 255 × 64 = 32640), so the integer results
are exact, and identical, on every x86 CPU; activations keep their full 8 bits. u8×u8 is also exact but ran no faster
than fp32 on the AVX2 machine (1.04x on animevideov3), so it is not used.

Measured with ``python demos/int8_holdout.py teachers/x4plus MODEL...`` (2026-12, AMD EPYC Zen 3, AVX2 without
VNNI, 2 threads; 16 LR crops of 64² from the ``holdout`` photos, which nothing trains, calibrates or validates on;
calibration: 16 crops of the embedded train photos; speed-ups interleaved, ±25% on this shared machine):

==========================================  ===============  ==================  ========
model, settings                             PSNR→own fp32    Δ PSNR→x4plus       speed-up
==========================================  ===============  ==================  ========
animevideov3 (SRVGG 64×16), 2026-11              34.59 dB     −0.75 dB            1.35x
animevideov3, the ``srvgg`` recipe               36.84 dB     ±0.00 dB            1.31x
quickstart student (RRDB 2 blocks), 2026-11      31.38 dB     −2.77 dB            1.50x
quickstart student, the ``rrdb`` recipe          37.56 dB     −0.73 dB            1.23x
==========================================  ===============  ==================  ========

One-off experiments on animevideov3 (scripts not kept; same machine and crops of the same photos): u8×u8 37.7 dB
at 1.04x; dynamic quantization (ConvInteger) 39.1 dB at 0.89x; percentile calibration 36.7 dB; 64 calibration crops
instead of 16 36.5 dB; quantising one conv at a time costs 44–52 dB each, spread evenly over the 18 convs, so no
small set of fp32 layers lifts the whole model to 40 dB: 8-bit activations after every layer are the limit.

The gate (:func:`judge`): an INT8 file is written only when it reaches ``min_psnr_db`` (the parity tolerance of
``onnx-int8``, 40 dB, unless the user lowers it with ``--int8-min-psnr-db``) to the fp32 model on the parity's real
crops, and runs at least ``min_speedup`` times the fp32 ONNX speed (``--int8-min-speedup``, default 1.0: faster),
measured interleaved on this machine. Otherwise nothing is written and one line gives the measured figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gankd.distill.errors import GankdError

from .manifest import INPUT_NAME


@dataclass(frozen=True)
class Int8Recipe:
    """ONNX Runtime static quantization settings for one model family."""

    format: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = True  # 7-bit weights: no int16 saturation without VNNI (module docstring)
    per_channel: bool = True
    method: str = "MinMax"
    keep_first_convs: int = 1  # convs kept in fp32 at the start (the input image is not re-quantised)
    keep_last_convs: int = 1  # and at the end (the output's last rounding steps stay fp32)


# By measurement (module docstring). A family not listed gets the default recipe.
FAMILY_RECIPES: dict[str, Int8Recipe] = {
    "srvgg": Int8Recipe(keep_first_convs=1, keep_last_convs=1),
    "rrdb": Int8Recipe(keep_first_convs=1, keep_last_convs=3),  # conv_up2, conv_hr, conv_last
}
DEFAULT_RECIPE = Int8Recipe()
SPEED_ROUNDS = (5, 200)  # interleaved rounds for the speed gate: at least 5, and about 2 s of work
CPU_INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def recipe_for(family: str) -> Int8Recipe:
    return FAMILY_RECIPES.get(family, DEFAULT_RECIPE)


def excluded_convs(onnx_path: Path, recipe: Int8Recipe) -> list[str]:
    """Names of the Conv nodes the recipe keeps in fp32, by position in the (topologically ordered) graph."""
    import onnx

    convs = [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type == "Conv"]
    if len(convs) <= recipe.keep_first_convs + recipe.keep_last_convs:
        return []  # keeping them all would leave nothing to quantise: quantise everything instead
    return convs[:recipe.keep_first_convs] + (convs[-recipe.keep_last_convs:] if recipe.keep_last_convs else [])


def quantize(src: Path, dst: Path, batches: list, recipe: Int8Recipe) -> dict:
    """Static QDQ quantization of ``src`` into ``dst`` with ``recipe``; ranges from ``batches`` of real inputs (arrays
    for an SR model's ``input``, or {input name: array} feeds). Returns what the manifest records."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from .formats import check_onnx, quiet_root_logger

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            if batch is None:
                return None
            return batch if isinstance(batch, dict) else {INPUT_NAME: batch}

    excluded = excluded_convs(src, recipe)
    with quiet_root_logger():  # the quantizer logs "consider pre-processing" through the root logger
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat[recipe.format],
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=types[recipe.activations], weight_type=types[recipe.weights],
                        calibrate_method=CalibrationMethod[recipe.method], nodes_to_exclude=excluded)
    check_onnx(dst, dst.name)
    return {**asdict(recipe), "weight_bits": 7 if recipe.reduce_range else 8, "fp32_convs": excluded,
            "calibration_cpu": cpu_features()}


def cpu_features(cpuinfo: str | None = None) -> dict:
    """The CPU model and the flags that decide how ORT runs int8 (VNNI or not), from /proc/cpuinfo."""
    from .bench import cpuinfo_blocks, read_cpuinfo

    blocks = cpuinfo_blocks(cpuinfo if cpuinfo is not None else read_cpuinfo() or "")
    if not blocks:
        return {"model": None, "flags": None}
    flags = set(blocks[0].get("flags", "").split())
    return {"model": blocks[0].get("model name"), "flags": [f for f in CPU_INT8_FLAGS if f in flags]}


@dataclass(frozen=True)
class Verdict:
    psnr_db: float  # the worst parity batch, int8 against the PyTorch fp32 output
    speedup: float  # fp32 ONNX median / int8 median
    fp32_ms: float
    int8_ms: float
    shape: list
    min_psnr_db: float
    min_speedup: float
    inputs_text: str = "real crops"

    @property
    def passed(self) -> bool:
        return self.psnr_db >= self.min_psnr_db and self.speedup >= self.min_speedup

    def reason(self) -> str:
        worse = []
        if not self.psnr_db >= self.min_psnr_db:
            worse.append(f"{self.psnr_db:.2f} dB PSNR to fp32 on {self.inputs_text} (needs >= {self.min_psnr_db:g} dB)")
        if not self.speedup >= self.min_speedup:
            worse.append(f"{self.speedup:.2f}x the fp32 speed (needs >= {self.min_speedup:g}x)")
        return "; ".join(worse)

    def to_json(self) -> dict:
        return {"psnr_db": round(self.psnr_db, 2) if math.isfinite(self.psnr_db) else None,
                "speedup": round(self.speedup, 3), "fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3),
                "shape": self.shape, "min_psnr_db": self.min_psnr_db, "min_speedup": self.min_speedup,
                "inputs": self.inputs_text, "passed": self.passed}


def judge(psnrs: list[float | None], run_fp32: Callable[[], object], run_int8: Callable[[], object], shape,
          min_psnr_db: float, min_speedup: float, inputs_text: str = "real crops") -> Verdict:
    """The gate: the worst parity PSNR (None, as parity records a NaN/inf output, counts as -inf), and the speed-up
    measured interleaved (about 2 s, at least 5 rounds)."""
    from gankd.distill.profile import measure_interleaved

    if not psnrs:
        raise GankdError("the INT8 gate got no parity results to judge")
    for run in (run_fp32, run_int8):  # warm-up, and a first timing to size the rounds
        run()
    first = measure_interleaved([run_fp32, run_int8], warmup_ms=0, duration_s=None, iterations=1)
    per_round_s = (first[0][0] + first[1][0]) / 1e3
    rounds = int(min(max(SPEED_ROUNDS[0], math.ceil(2.0 / max(per_round_s, 1e-6))), SPEED_ROUNDS[1]))
    fp32_ms, int8_ms = (statistics.median(t) for t in
                        measure_interleaved([run_fp32, run_int8], warmup_ms=0, duration_s=None, iterations=rounds))
    worst = min(-math.inf if p is None else p for p in psnrs)
    return Verdict(psnr_db=float(worst), speedup=fp32_ms / int8_ms, fp32_ms=fp32_ms, int8_ms=int8_ms,
                   shape=list(shape), min_psnr_db=float(min_psnr_db), min_speedup=float(min_speedup),
                   inputs_text=inputs_text)
