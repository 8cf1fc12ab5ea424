"""Parity: every exported artifact against the PyTorch model, on real photos at two input sizes.

Inputs (:func:`parity_inputs`): the embedded validation photos (astronaut, motorcycle_right), a centre HR crop of
each bicubic-downscaled by the model's scale — LR images like the ones the model is made for — at 32×32 and 48×40
(both multiples of 4, so pixel-unshuffling models take them), as one batch of 2 per size: this also exercises the
dynamic batch, height and width of every artifact.

Measures, on outputs clamped to the output range [0, 1]:

- ``max_abs``: the largest absolute difference to the PyTorch output.
- ``psnr_db``: 10·log10(1 / MSE) on the float outputs (not 8-bit: parity must see differences below 1/255),
  capped at 100 dB.

Tolerances (:data:`TOLERANCES`, stated once in ``gankd.serve.manifest`` as the manifest records them; each holds on any
x86 CPU, AVX2 or AVX-512, with or without VNNI):

- fp32 artifacts (ONNX, pt2): max_abs ≤ 1e-4. Kernels of different ISAs sum in different orders; that moves
  outputs by float rounding, far inside the bound. A wrong weight, op or padding moves them far beyond it (the
  negative controls in the tests).
- fp32 TensorRT engine: max_abs ≤ 1e-3 (GPU kernels sum in another order, TF32 off).
- fp16 (ONNX, TensorRT): PSNR ≥ 40 dB to the fp32 output. A correct fp16 file is far above it; an fp16 overflow
  or a wrong cast falls far below.
- ncnn (``.param``/``.bin`` in the ncnn runtime, fp16 weight storage): max_abs ≤ 2/255, one 8-bit level either way
  after rounding (fp16 weights round the same on any CPU; each export records its figures in the manifest); zeroing
  a run of its .bin weights breaks the bound (tests/export/test_ncnn_export.py).
- pth (the official checkpoint reloaded by spandrel): max_abs ≤ 1e-4, as fp32 artifacts (the same tensors in the
  same ops).
- INT8: PSNR ≥ 40 dB, the bar for an INT8 file worth shipping (its error to fp32 is then small next to a student's
  own distance from its teacher).
  The INT8 recipe (:mod:`gankd.export.int8`) computes exact integer products on every x86 CPU, so the figure does
  not depend on the ISA; a file below the bar is not written at all (``gankd-export --int8`` says why). When the
  export knows the student's teacher, the gate judges by PSNR to the teacher instead (``gankd.export.int8``), and
  this distance to fp32 is recorded, not bounded.
- INT8 of a QAT student: its file is the QAT weights with their learned ranges (:mod:`gankd.distill.train.qat`), so it
  is checked against the fake-quantized PyTorch model it was trained as, **layer by layer**
  (``gankd.export.int8.qat_layer_check``): each quantized layer, cut out of the INT8 graph and fed PyTorch's input to
  it, must agree with PyTorch to within one output step, on all but 5% of its values (``QAT_LAYER_TOLERANCE``).
  Integer products are exact on any x86 CPU; float sums around them break an occasional rounding tie the other way
  (one step, on a small fraction of values: each export records its worst layer,
  ``quantization.qat.layers``; docs/results/issue28_int8.json holds the measured ones). End to
  end those ties compound through a deep network, so the end-to-end PSNR (``onnx-int8-qat``) only has to clear
  30 dB, the level of a graph that is wrong; the same weights calibrated afresh instead of given their learned
  ranges fail the layer check (the negative control in tests/distill/train/test_qat.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gankd.distill.errors import GankdError
from gankd.serve.backends import compare_outputs
from gankd.serve.manifest import TOLERANCES, Tolerance
from gankd.serve.psnr import PSNR_CAP_DB  # noqa: F401 - the cap of compare's PSNR; tests read it here

PARITY_SIZES: tuple[tuple[int, int], ...] = ((32, 32), (48, 40))


def real_lr_batch(shape, scale: int, split: str = "validation") -> torch.Tensor:
    """N×3×H×W LR images from the embedded photos: a centre crop of (H·scale)×(W·scale) bicubic-downscaled by
    ``scale``; a photo too small for the crop is resized to it first. Photos repeat when N exceeds them."""
    from gankd.distill.data.degrade import bicubic_lr
    from gankd.distill.data.images import sample_images

    n, channels, height, width = shape
    if channels != 3:
        raise GankdError(f"real test images have 3 channels; the shape asks for {channels}")
    photos = [img for _, img in sample_images(split)]
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        hr_h, hr_w = height * scale, width * scale
        if photo.shape[-2] < hr_h or photo.shape[-1] < hr_w:
            photo = F.interpolate(photo[None], size=(hr_h, hr_w), mode="bicubic", antialias=True,
                                  align_corners=False)[0].clamp(0, 1)
        top, left = (photo.shape[-2] - hr_h) // 2, (photo.shape[-1] - hr_w) // 2
        crops.append(photo[:, top:top + hr_h, left:left + hr_w])
    hr = torch.stack(crops)
    return bicubic_lr(hr, scale) if scale > 1 else hr.contiguous()


@dataclass(frozen=True)
class Case:
    """One parity input: a batch for every input of the graph, and what identifies it in the manifest (seeds, psi,
    scale; nothing for sr, whose results carry the input shape only)."""

    inputs: tuple[torch.Tensor, ...]
    info: dict


def parity_inputs(scale: int) -> list[torch.Tensor]:
    return [real_lr_batch((2, 3, h, w), scale) for h, w in PARITY_SIZES]


def compare(reference: np.ndarray, candidate: np.ndarray,
            value_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """(max_abs, psnr_db) between two outputs mapped from ``value_range`` to [0, 1] and clamped there, so the
    tolerances mean the same for a [-1, 1] generator as for a [0, 1] SR model: the Session's own comparison
    (``gankd.serve.backends.compare_outputs``), refusing outputs of another shape."""
    if reference.shape != candidate.shape:
        raise GankdError(f"output shape {list(candidate.shape)} differs from the PyTorch model's "
                         f"{list(reference.shape)}")
    return compare_outputs(reference, candidate, value_range)


def check_artifact(kind: str, run: Callable[[np.ndarray], np.ndarray], inputs: list[torch.Tensor],
                   references: list[np.ndarray], tolerance: Tolerance | None = None) -> list[dict]:
    """:func:`check_cases` for a one-input [0, 1] model (sr): one result per input batch."""
    return check_cases(kind, run, [Case((x,), {}) for x in inputs], references, (0.0, 1.0), tolerance)


def check_cases(kind: str, run: Callable[..., np.ndarray], cases: list[Case], references: list[np.ndarray],
                value_range: tuple[float, float], tolerance: Tolerance | None = None) -> list[dict]:
    """One result per :class:`Case` for the artifact ``kind`` (a key of :data:`TOLERANCES`, unless ``tolerance``),
    with the case's info (seeds, psi, scale) and the shape of its first input."""
    tolerance = tolerance or TOLERANCES[kind]
    results = []
    for case, ref in zip(cases, references):
        max_abs, psnr_db = compare(ref, run(*(x.numpy() for x in case.inputs)), value_range)
        finite = math.isfinite(max_abs)  # JSON has no inf: a NaN/inf output is recorded as null
        results.append({"artifact": kind, "input_shape": list(case.inputs[0].shape), **case.info,
                        "max_abs": max_abs if finite else None, "psnr_db": round(psnr_db, 2) if finite else None,
                        "tolerance": tolerance.text(), "passed": tolerance.passes(max_abs, psnr_db)})
    return results


def by_scale(results: list[dict]) -> dict:
    """face_sr parity by scale: {scale: {artifact: {max_abs, psnr_db, passed}}} from the single-scale batches (the
    mixed-scale batch is in the results only)."""
    table: dict = {}
    for r in results:
        if isinstance(r.get("scale"), int):
            table.setdefault(str(r["scale"]), {})[r["artifact"]] = {k: r[k] for k in ("max_abs", "psnr_db", "passed")}
    return table


def failure_message(results: list[dict]) -> str | None:
    failed = [r for r in results if not r["passed"]]
    if not failed:
        return None
    worst = failed[0]
    shape = "x".join(map(str, worst["input_shape"])) + (f" scale {worst['scale']}" if "scale" in worst else "") \
        + (f" psi {worst['psi']}" if worst.get("psi") is not None else "")
    found = ("NaN or inf in its output" if worst["max_abs"] is None
             else f"max_abs {worst['max_abs']:.3g}, PSNR {worst['psnr_db']:.2f} dB")
    return (f"parity failed for {', '.join(dict.fromkeys(r['artifact'] for r in failed))}: {worst['artifact']} at "
            f"{shape} has {found} (needs {worst['tolerance']}); pass --force to keep the artifacts anyway")
