"""Crop pools: a fixed set of HR crops and their LR counterparts (made once, degraded from each crop's own seed),
the validation pool, and the seeded epoch batches a resumed run replays."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gankd.distill.errors import GankdError

from .degrade import DEGRADATIONS, Degradation, PhotoMix, RealESRGANDegradation, _make_lr, degrade_lr

log = logging.getLogger(__name__)


TEXTURE_TRIES = 20

# ----------------------------------------------------------------------------------------------- crop pools


@dataclass(frozen=True, eq=False)
class CropPool:
    """A fixed set of HR crops (N×3×S×S) and their LR counterparts (N×3×S/scale×S/scale), made once.

    Distillation only needs the teacher's answers on a fixed set of inputs, so the pool is built (and degraded) once
    and the teacher's outputs on it can be cached exactly (``cache_teacher``). ``skipped`` counts the source images
    smaller than the crop size.
    """

    hr: torch.Tensor
    lr: torch.Tensor
    scale: int
    degradation: str
    skipped: int = 0
    kinds: tuple[str, ...] = ()  # each crop's degradation kind (degrade.KINDS), e.g. to score clean and degraded

    def __post_init__(self):
        n, _, size, _ = self.hr.shape
        if self.lr.shape != (n, 3, size // self.scale, size // self.scale):
            raise GankdError(f"LR crops {list(self.lr.shape)} do not match HR crops {list(self.hr.shape)} "
                             f"at scale {self.scale}")

    @classmethod
    def build(cls, images: Sequence[torch.Tensor], count: int, hr_size: int, scale: int,
              degradation: Degradation = "bicubic", seed: int = 0,
              opts: RealESRGANDegradation | None = None, augment: bool = False, mix=None,
              min_texture: float = 0.0) -> "CropPool":
        """``count`` crops at uniformly random positions; images are used round-robin (each image equally often,
        so one large image cannot crowd out the rest). Crop i (its image, position and degradation seed) depends
        only on ``seed`` and i, so a larger pool extends a smaller one. ``augment`` turns each HR crop by one of
        the 8 flips/rotations (seeded per crop) before it is degraded, so the cached teacher outputs are the
        teacher's answers to the turned crops, not turned answers."""
        fitting, skipped = _fitting_images(images, hr_size, scale)
        if count < 1:
            raise GankdError(f"crop count must be at least 1, got {count}")
        generator = torch.Generator().manual_seed(seed)
        crops, seeds = [], []
        for i in range(count):
            image = fitting[i % len(fitting)]
            for _ in range(TEXTURE_TRIES if min_texture > 0 else 1):  # sky, fog and bokeh teach nothing: redraw
                top = int(torch.randint(0, image.shape[-2] - hr_size + 1, (1,), generator=generator))
                left = int(torch.randint(0, image.shape[-1] - hr_size + 1, (1,), generator=generator))
                crop = image[:, top:top + hr_size, left:left + hr_size]
                if min_texture <= 0 or texture(crop) >= min_texture:
                    break
            crops.append(crop)
            seeds.append(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if augment:  # drawn from its own generator, so the positions match the pool built without augment
            turns = torch.Generator().manual_seed(seed + 7919)
            crops = [dihedral(crop, int(torch.randint(0, 8, (1,), generator=turns))) for crop in crops]
        return cls._degrade(crops, seeds, scale, degradation, skipped, opts, mix)

    @classmethod
    def _degrade(cls, crops, seeds, scale, degradation, skipped, opts, mix=None) -> "CropPool":
        """One LR per crop with its own seed, so each crop gets its own resize factors (Real-ESRGAN needs a
        180-pair queue to get that diversity from batched degradation) and, for ``photo``, its own kind."""
        if degradation not in DEGRADATIONS:
            raise GankdError(f"unknown degradation {degradation!r}; expected one of {', '.join(DEGRADATIONS)}")
        hr = torch.stack(crops).float().contiguous()
        made = [_make_lr(hr[i:i + 1], scale, degradation, seeds[i], opts, mix)
                for i in _progress(len(crops), f"{degradation} LR")]
        return cls(hr=hr, lr=torch.cat([lr for lr, _ in made]), scale=scale, degradation=degradation,
                   skipped=skipped, kinds=tuple(k for _, kinds in made for k in kinds))

    def __len__(self) -> int:
        return self.hr.shape[0]

    def batch(self, indices: torch.Tensor | Sequence[int],
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(HR, LR) crops at ``indices``, optionally moved to ``device``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        hr, lr = self.hr[indices], self.lr[indices]
        return (hr.to(device), lr.to(device)) if device is not None else (hr, lr)

    def memory_bytes(self) -> int:
        return self.hr.nbytes + self.lr.nbytes


def texture(crop: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels, in 8-bit levels: near 0 on sky, fog and bokeh, a few
    levels on fur, foliage and fabric. ``min_texture`` redraws a crop's position (up to ``TEXTURE_TRIES`` times)
    while its texture is below the bar."""
    return 255 * 0.5 * float((crop[..., 1:, :] - crop[..., :-1, :]).abs().mean()
                             + (crop[..., :, 1:] - crop[..., :, :-1]).abs().mean())


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: a horizontal flip when ``k >= 4``, then ``k % 4`` quarter turns."""
    image = image.flip(-1) if k >= 4 else image
    return torch.rot90(image, k % 4, dims=(-2, -1)).contiguous()


def validation_pool(images: Sequence[torch.Tensor], hr_size: int, scale: int, degradation: Degradation = "bicubic",
                    seed: int = 0, per_image: int = 1, opts: RealESRGANDegradation | None = None,
                    mix=None) -> CropPool:
    """Fixed crops for validation: each image's centre, then an evenly spaced grid (row by row), up to
    ``per_image`` distinct crops. Nothing depends on a random position, so scores compare across runs."""
    fitting, skipped = _fitting_images(images, hr_size, scale)
    if per_image < 1:
        raise GankdError(f"per_image must be at least 1, got {per_image}")
    generator = torch.Generator().manual_seed(seed)
    crops, seeds = [], []
    for image in fitting:
        for top, left in _grid_positions(image.shape[-2], image.shape[-1], hr_size, per_image):
            crops.append(image[:, top:top + hr_size, left:left + hr_size])
            seeds.append(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if degradation == "photo":
        return _every_kind(crops, seeds, scale, skipped, mix)
    return CropPool._degrade(crops, seeds, scale, degradation, skipped, opts, mix)


def _every_kind(crops, seeds, scale, skipped, mix) -> CropPool:
    """Validation of a photo mix: every crop clean and in each of the mix's kinds, so clean and degraded inputs
    are scored on the same crops and neither share depends on a draw."""
    mix = mix or PhotoMix()
    kinds = ("clean", *mix.kinds)
    hr = torch.stack(crops).float().contiguous()
    lr = torch.cat([degrade_lr(hr[i:i + 1], scale, kind, seeds[i] + j, mix)
                    for kind, j in zip(kinds, range(len(kinds))) for i in range(len(crops))])
    return CropPool(hr=hr.repeat(len(kinds), 1, 1, 1), lr=lr, scale=scale, degradation="photo", skipped=skipped,
                    kinds=tuple(kind for kind in kinds for _ in crops))


def _grid_positions(height: int, width: int, size: int, count: int) -> list[tuple[int, int]]:
    positions = [((height - size) // 2, (width - size) // 2)]
    side = max(2, math.ceil(math.sqrt(count - 1))) if count > 1 else 1
    tops = np.linspace(0, height - size, side).round().astype(int)
    lefts = np.linspace(0, width - size, side).round().astype(int)
    positions += [(int(t), int(le)) for t in tops for le in lefts]
    return list(dict.fromkeys(positions))[:count]  # distinct, in order


def _fitting_images(images: Sequence[torch.Tensor], hr_size: int, scale: int) -> tuple[list[torch.Tensor], int]:
    """Check the crop size and keep the images at least that large (3×H×W each)."""
    if not isinstance(scale, int) or scale < 1:
        raise GankdError(f"scale must be a positive integer, got {scale!r}")
    if hr_size < 8 or hr_size % scale or hr_size % 8:
        raise GankdError(f"hr_size {hr_size} must be a multiple of scale {scale} and of 8 (the U-Net discriminator "
                         "halves it three times)")
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise GankdError(f"images must be 3×H×W, got shape {list(image.shape)}")
    fitting = [img for img in images if min(img.shape[-2:]) >= hr_size]
    skipped = len(images) - len(fitting)
    if not fitting:
        largest = max(images, key=lambda img: img.shape[-2] * img.shape[-1], default=None)
        largest = "none" if largest is None else f"{largest.shape[-2]}x{largest.shape[-1]}"
        raise GankdError(f"no image is at least hr_size={hr_size} px on each side ({len(images)} images, "
                         f"largest {largest}); lower hr_size")
    if skipped:
        log.warning("skipped %d of %d images smaller than hr_size=%d", skipped, len(images), hr_size)
    return fitting, skipped


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(range(total), desc=desc, unit="crop", disable=not sys.stderr.isatty(), leave=False)


# ----------------------------------------------------------------------------------------------- batches


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of index batches from a random permutation. The incomplete last batch is dropped (every step sees
    a full batch) unless the pool is smaller than one batch, when the whole pool is the batch. Deterministic given
    the generator's state, which a checkpoint saves so a resumed run replays the same order."""
    if n < 1 or batch_size < 1:
        raise GankdError(f"need at least one sample and a batch size of at least 1, got n={n}, "
                         f"batch_size={batch_size}")
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return [order]
    return list(order[: n - n % batch_size].split(batch_size))
