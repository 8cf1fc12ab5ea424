"""PSNR, the one formula: ``10 · log10(peak² / MSE)`` dB, ``inf`` for identical inputs.

Every PSNR of gankd is computed here: gankd-distill's metrics (8-bit, BasicSR's way) and surgery, parity and the
Session's open check (float outputs mapped to [0, 1], capped), gankd-bench's fidelity columns, the demo's comparison
line, and the tests. What differs between them (8-bit quantisation, a cap for identical pairs, the display text)
stays in their wrappers. Works on Python floats, numpy arrays and torch tensors (duck-typed: serve imports no torch).

A bottom-layer module: it imports only numpy and nothing of gankd, so gankd.distill and gankd.export import it.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # what an identical pair scores where a finite figure is needed (a mean, a JSON number)


def psnr_db(mse, peak: float = 1.0):
    """PSNR in dB of a mean squared error (a float, a numpy array or a torch tensor: the same kind out) for signals
    whose full range is ``peak`` (1 for [0, 1] floats, 255 for 8-bit values); ``inf`` where the MSE is 0."""
    if hasattr(mse, "log10"):  # a torch tensor: stays one, on its device, with its autograd graph
        return 10.0 * (peak**2 / mse).log10()
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(peak**2 / np.asarray(mse, dtype=np.float64))
    return float(out) if np.ndim(out) == 0 else out


def psnr(a, b, peak: float = 1.0) -> float:
    """PSNR in dB of ``b`` to ``a`` over all their elements, as a float (numpy arrays or torch tensors, compared in
    float64; no quantisation, no cap): :func:`psnr_db` of their mean squared difference."""
    if hasattr(a, "log10"):  # torch tensors
        return psnr_db(((a.double() - b.double()) ** 2).mean().item(), peak)
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return psnr_db(float(np.mean(diff * diff)), peak)
