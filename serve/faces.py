"""GCFSR's low-quality input in numpy, for ``Session.restore_face`` (serve imports no distill code).

The same recipe as ``gankd.distill.data.faces.gcfsr_lq`` and GCFSR's inference script: MATLAB-style bicubic ``imresize``
(cubic a = -0.5, kernel widened by the factor when shrinking, symmetric border) down by the factor and back up to
the face size, rounded to 8 bits. The resize is a pair of matrices per axis (float64), applied as H×W matrix
products.
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


def imresize(rgb: np.ndarray, scale: float) -> np.ndarray:
    """H×W×C float by ``scale`` (both axes), not clipped."""
    rows = resize_matrix(rgb.shape[0], float(scale))
    cols = resize_matrix(rgb.shape[1], float(scale))
    return np.einsum("oh,hwc,pw->opc", rows, rgb.astype(np.float64), cols)


def gcfsr_lq(rgb: np.ndarray, factor: float) -> np.ndarray:
    """S×S×3 float in [0, 1] -> the low-quality face, S×S×3 float32 in [0, 1] on the 8-bit grid."""
    size = rgb.shape[0]
    small = imresize(rgb, 1 / factor)
    # back up to exactly S: by the factor when S divides evenly (GCFSR's case), else by S / small side
    up = imresize(small, factor if small.shape[0] * factor == size else size / small.shape[0])
    return (np.clip(np.rint(up * 255), 0, 255) / 255).astype(np.float32)
