"""Tiled inference that equals the untiled result.

The image is first reflect-padded by ``pad`` px on every side (as ncnn and Real-ESRGAN's ``pre_pad`` do, so the
borders do not see the network's zero padding), both untiled and tiled. A tile then runs on its core plus ``pad`` px
of real context on each side, always inside the padded image, and only the core of its output is kept. When the
network's receptive-field radius is at most ``pad`` LR px, every kept output pixel sees exactly the pixels it sees in
the untiled run, so tiles join without seams (equal up to float rounding).

Everything here works on per-call arrays: no state is shared between calls, so concurrent requests cannot mix tiles.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .errors import OverBudget

Forward = Callable[[np.ndarray], np.ndarray]  # 1xCxhxw float32 -> 1xC'x(h*scale)x(w*scale)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def reflect_pad(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Reflect padding of a 1xCxHxW array; an axis of one pixel (nothing to reflect) repeats its edge."""
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    mode = "reflect" if min(x.shape[2:]) > 1 else "edge"
    return np.pad(x, widths, mode=mode)


def upscale(forward: Forward, x: np.ndarray, scale: int, *, tile: int | None = None, pad: int = 10,
            multiple: int = 1, budget_s: float | None = None) -> np.ndarray:
    """Run ``forward`` over a 1xCxHxW float32 array, whole (``tile`` None or 0) or in ``tile`` x ``tile`` LR tiles.

    ``multiple``: the spatial multiple the network needs (pixel-unshuffle inputs); pad and tile are rounded up to it
    and the padded image is extended at the bottom/right to a multiple, then cropped back. ``budget_s``:
    raise :class:`OverBudget` before a tile that would start once the call has run that long (a running forward is
    never interrupted: one tile is the unit of work)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected a 1xCxHxW array, got shape {x.shape}")
    if tile is not None and tile < 0 or pad < 0:
        raise ValueError("tile and pad must be >= 0")
    height, width = x.shape[2:]
    pad = round_up(pad, multiple)
    extra_h, extra_w = round_up(height, multiple) - height, round_up(width, multiple) - width
    padded = reflect_pad(x, pad, pad + extra_h, pad, pad + extra_w)
    if not tile or (height <= tile and width <= tile):
        out = forward(np.ascontiguousarray(padded))
        return out[:, :, pad * scale:(pad + height) * scale, pad * scale:(pad + width) * scale]

    tile = round_up(tile, multiple)
    full_h, full_w = height + extra_h, width + extra_w
    out = None
    total, done = -(-full_h // tile) * -(-full_w // tile), 0
    deadline = None if budget_s is None else time.monotonic() + budget_s
    for top in range(0, full_h, tile):
        core_h = min(tile, full_h - top)
        for left in range(0, full_w, tile):
            core_w = min(tile, full_w - left)
            if deadline is not None and time.monotonic() > deadline:
                raise OverBudget(f"stopped after {done} of {total} tiles: over the time budget of {budget_s:.3g} s "
                                 "(use a smaller image or a larger tile)", done, total)
            done += 1
            # padded coords: core starts at top + pad; the window adds pad px of context each side
            window = padded[:, :, top:top + core_h + 2 * pad, left:left + core_w + 2 * pad]
            result = forward(np.ascontiguousarray(window))
            if out is None:
                out = np.empty((1, result.shape[1], full_h * scale, full_w * scale), dtype=result.dtype)
            out[:, :, top * scale:(top + core_h) * scale, left * scale:(left + core_w) * scale] = \
                result[:, :, pad * scale:(pad + core_h) * scale, pad * scale:(pad + core_w) * scale]
    return out[:, :, :height * scale, :width * scale]
