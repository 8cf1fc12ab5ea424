"""DiffAugment: differentiable augmentations applied to both real and fake images before the discriminator.

After Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training" (NeurIPS 2020), official code
``mit-han-lab/data-efficient-gans/DiffAugment_pytorch.py``; rewritten here with the same three policies and ranges:

- ``color``       — per image: brightness + U(-0.5, 0.5), saturation ×U(0, 2) around the per-pixel channel mean,
  contrast ×U(0.5, 1.5) around the image mean. The ranges assume images in [-1, 1], as the official code does.
- ``translation`` — per image, an integer shift in [-r·H, r·H] × [-r·W, r·W] (r = 0.125), zero-filled.
- ``cutout``      — per image, a zeroed square of half the image side (r = 0.5) centred anywhere; clipped at borders.

Unlike the official code, every random number comes from an explicit ``torch.Generator``, so a resumed run replays
the same augmentations. Numbers are drawn on the generator's device and then moved, so a CPU generator gives the
same augmentation whatever device the images are on. The caller applies :func:`diff_augment` to real and fake alike
(each with its own draw); everything is differentiable with respect to the images, so G learns through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from gankd.distill.errors import GankdError

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """n draws from U(0, 1), shaped n×1×1×1 to broadcast over an image batch."""
    device = generator.device if generator is not None else torch.device("cpu")
    draws = torch.rand(n, generator=generator, device=device)
    return draws.to(device=like.device, dtype=like.dtype).view(n, 1, 1, 1)


def _randint(low: int, high: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n integers in [low, high)."""
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high, (n,), generator=generator, device=source).to(device)


def _color(x: Tensor, generator: torch.Generator | None) -> Tensor:
    n = x.shape[0]
    x = x + (_uniform(n, generator, x) - 0.5)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * (_uniform(n, generator, x) * 2) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * (_uniform(n, generator, x) + 0.5) + image_mean


def _translation(x: Tensor, generator: torch.Generator | None) -> Tensor:
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * TRANSLATION_RATIO), int(w * TRANSLATION_RATIO)
    dy = _randint(-max_dy, max_dy + 1, n, generator, x.device)
    dx = _randint(-max_dx, max_dx + 1, n, generator, x.device)
    # Output pixel (i, j) reads input (i - dy, j - dx); the zero padding supplies what was shifted in.
    padded = F.pad(x, [max_dx, max_dx, max_dy, max_dy])
    rows = torch.arange(h, device=x.device).view(1, h) - dy.view(n, 1) + max_dy
    cols = torch.arange(w, device=x.device).view(1, w) - dx.view(n, 1) + max_dx
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    shifted = padded[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)]  # advanced indices first: n×h×w×c
    return shifted.permute(0, 3, 1, 2)


def _cutout(x: Tensor, generator: torch.Generator | None) -> Tensor:
    n, _, h, w = x.shape
    size_y, size_x = int(h * CUTOUT_RATIO), int(w * CUTOUT_RATIO)
    # Centres range as in the official code: an odd-sized square may not centre on the last row/column.
    centre_y = _randint(0, h + (1 - size_y % 2), n, generator, x.device)
    centre_x = _randint(0, w + (1 - size_x % 2), n, generator, x.device)
    top, left = (centre_y - size_y // 2).view(n, 1), (centre_x - size_x // 2).view(n, 1)
    rows, cols = torch.arange(h, device=x.device).view(1, h), torch.arange(w, device=x.device).view(1, w)
    inside_y = (rows >= top) & (rows < top + size_y)  # n×h
    inside_x = (cols >= left) & (cols < left + size_x)  # n×w
    keep = ~(inside_y.view(n, 1, h, 1) & inside_x.view(n, 1, 1, w))
    return x * keep.to(x.dtype)


AUGMENTATIONS: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def parse_policy(policy: str) -> list[str]:
    """``"color,translation"`` -> ``["color", "translation"]``; an unknown name raises :class:`GankdError`."""
    names = [name.strip() for name in policy.split(",") if name.strip()]
    for name in names:
        if name not in AUGMENTATIONS:
            raise GankdError(f"unknown DiffAugment policy {name!r}; choose from {', '.join(AUGMENTATIONS)}")
    return names


def diff_augment(x: Tensor, policy: str = "color,translation,cutout",
                 generator: torch.Generator | None = None) -> Tensor:
    """Augment an N×C×H×W batch (values in [-1, 1]) with the comma-separated ``policy``, in the order given.

    Differentiable with respect to ``x``. All randomness is drawn from ``generator`` (the global CPU generator when
    ``None``), so the same generator state gives the same augmentation. An empty policy returns ``x`` unchanged.
    """
    names = parse_policy(policy)
    if x.dim() != 4:
        raise GankdError(f"DiffAugment needs an N×C×H×W batch, got shape {tuple(x.shape)}")
    for name in names:
        x = AUGMENTATIONS[name](x, generator)
    return x
