"""GCFSR's low-quality input, the one home of its recipe: ``Session.restore_face`` degrades a face here, and
gankd.distill's ``data.faces.gcfsr_lq`` (training pairs, validation, export parity) is a torch wrapper of
:func:`lq_planes`, so what a student is trained and checked on is what the demo feeds it.

The recipe of GCFSR's ``FFHQ_control_Dataset`` and inference script: MATLAB-style bicubic ``imresize`` (basicsr's
``matlab_functions.imresize``: cubic a = -0.5, kernel widened by the factor when shrinking, symmetric border) down by
the factor and back up to the face size, rounded to 8 bits. The resize is a pair of matrices per axis (float64),
applied as matrix products over the last two axes.

A bottom-layer module: it imports only numpy and nothing of gankd, so gankd.distill imports it (serve imports no
distill code).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def resize_matrix(in_len: int, scale: float) -> np.ndarray:
    """The out×in matrix of MATLAB ``imresize(..., scale, 'bicubic')`` along one axis; out = ceil(in·scale)."""
    out_len = math.ceil(in_len * scale - 1e-9)
    shrink = scale < 1
    width = 4.0 / scale if shrink else 4.0
    centre = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coords
    taps = np.floor(centre - width / 2)[:, None] + np.arange(math.ceil(width) + 2, dtype=np.float64)
    dist = centre[:, None] - taps
    weights = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    weights = weights / weights.sum(1, keepdims=True)
    index = (taps.astype(np.int64) - 1) % (2 * in_len)  # symmetric border: the edge pixel repeats
    index = np.where(index >= in_len, 2 * in_len - 1 - index, index)
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps.shape[1]), index.ravel()), weights.ravel())
    return matrix


def imresize_planes(planes: np.ndarray, scale: float) -> np.ndarray:
    """``…×H×W`` (C×H×W, N×C×H×W) float by ``scale`` (both axes), float64, not clipped."""
    rows = resize_matrix(planes.shape[-2], float(scale))
    cols = resize_matrix(planes.shape[-1], float(scale))
    return rows @ planes.astype(np.float64) @ cols.T


def imresize(rgb: np.ndarray, scale: float) -> np.ndarray:
    """H×W×C float by ``scale`` (both axes), float64, not clipped."""
    return imresize_planes(np.moveaxis(rgb, -1, 0), scale).transpose(1, 2, 0)


def lq_planes(planes: np.ndarray, factor: float) -> np.ndarray:
    """``…×S×S`` float in [0, 1] -> the low-quality faces, the same shape, float64 in [0, 1] on the 8-bit grid."""
    size = planes.shape[-1]
    small = imresize_planes(planes, 1 / factor)
    # back up to exactly S: by the factor when S divides evenly (GCFSR's case), else by S / small side
    up = imresize_planes(small, factor if small.shape[-1] * factor == size else size / small.shape[-1])
    return np.clip(np.rint(up * 255), 0, 255) / 255


def gcfsr_lq(rgb: np.ndarray, factor: float) -> np.ndarray:
    """S×S×3 float in [0, 1] -> the low-quality face, S×S×3 float32 in [0, 1] on the 8-bit grid."""
    return lq_planes(np.moveaxis(rgb, -1, 0), factor).transpose(1, 2, 0).astype(np.float32)
