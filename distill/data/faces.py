"""Face data: the embedded face sets (no download) and GCFSR's low-quality inputs.

- ``lfw_faces(size)``: scikit-image's ``lfw_subset`` faces, a genuine 100-shot face set (100 grey 25x25 crops of
  Labeled Faces in the Wild; the file's other 100 images are non-faces and are left out), repeated to RGB and
  resized. Used for StyleGAN2 data-limited training (at 32x32 too) and, upsampled, for face SR.
- ``face_images(split, size)``: a tiny face-SR set: validation = the astronaut's face (``skimage.data.astronaut``,
  a 200x200 square around the face) + the last 16 LFW faces; train = the other 84 LFW faces. Tiny, and the LFW faces
  are 25 px originals upsampled: good for tests, demos and smoke runs of distillation, not for judging quality.
- ``gcfsr_lq(hr, factor)``: GCFSR's input, made the way its ``FFHQ_control_Dataset`` makes it: MATLAB-style bicubic
  ``imresize`` down by ``factor`` then back up by ``factor`` (basicsr's ``matlab_functions.imresize``: cubic
  a = -0.5, kernel widened by the factor when shrinking, symmetric border), then rounded to 8 bits and clipped.
  Our resize is a batched matrix form of that function (same weights, float32 rounding differences only).

``DEFAULT_FACTORS`` is the official ``downsample_list`` of ``train_gcfsr_gan.yml`` (512 model, cond_norm 32);
``FACTORS_1024`` is the one of ``train_gcfsr.yml`` (the 1024 model, cond_norm 64). A factor is drawn uniformly from the
list per image, so repeats weight the large factors.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gankd.distill.errors import GankdError

DEFAULT_FACTORS = (32, 32, 32, 32, 16, 16, 8, 8, 4)
FACTORS_1024 = (64, 64, 64, 64, 32, 32, 16, 16, 8, 4)
NUM_LFW_FACES = 100
NUM_VALIDATION_LFW = 16
ASTRONAUT_FACE = (slice(10, 210), slice(125, 325))  # rows, cols of skimage.data.astronaut(): a square on the face
FACE_SPLITS = ("train", "validation")


def _skimage_data():
    try:
        from skimage import data
    except ImportError:
        raise GankdError("the embedded face images need scikit-image: pip install 'gankd[all]'") from None
    return data


def _resize(images: Tensor, size: int) -> Tensor:
    """N x C x H x W in [0, 1] -> N x C x size x size, bicubic with antialiasing, clipped to [0, 1]."""
    if not isinstance(size, int) or size < 1:
        raise GankdError(f"size must be a positive integer, got {size!r}")
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.clone()
    out = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0, 1)


@functools.cache
def _lfw_array() -> np.ndarray:
    return np.asarray(_skimage_data().lfw_subset()[:NUM_LFW_FACES], dtype=np.float32)  # the first 100 are faces


def lfw_faces(size: int) -> Tensor:
    """The 100 LFW faces of ``skimage.data.lfw_subset()`` as 100 x 3 x size x size float32 in [0, 1]."""
    grey = torch.from_numpy(_lfw_array().copy())[:, None]
    return _resize(grey.expand(-1, 3, -1, -1).contiguous(), size)


def astronaut_face(size: int) -> Tensor:
    """The face of ``skimage.data.astronaut()`` as 3 x size x size float32 in [0, 1]."""
    rows, cols = ASTRONAUT_FACE
    crop = np.asarray(_skimage_data().astronaut()[rows, cols], dtype=np.float32) / 255.0
    return _resize(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None], size)[0]


def face_images(split: str, size: int) -> list[Tensor]:
    """The faces of one split (module docstring), each 3 x size x size float32 in [0, 1] (``gcfsr_lq`` wants them
    mapped to [-1, 1]: ``x * 2 - 1``). The split is fixed, so runs are comparable."""
    if split not in FACE_SPLITS:
        raise GankdError(f"unknown face split {split!r}; expected one of {', '.join(FACE_SPLITS)}")
    faces = lfw_faces(size)
    cut = NUM_LFW_FACES - NUM_VALIDATION_LFW
    if split == "train":
        return list(faces[:cut])
    return [astronaut_face(size)] + list(faces[cut:])


# ----------------------------------------------------------------------------------------------- GCFSR inputs


def _cubic(x: Tensor) -> Tensor:
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def _imresize_matrix(in_len: int, scale: float) -> Tensor:
    """The out x in matrix of MATLAB ``imresize(..., scale, 'bicubic')`` along one axis (antialiased when shrinking,
    symmetric border), float64."""
    out_len = math.ceil(in_len * scale)
    shrink = scale < 1
    width = 4.0 / scale if shrink else 4.0
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    centre = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output pixel
    taps = torch.floor(centre - width / 2)[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    dist = centre[:, None] - taps
    weights = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    weights = weights / weights.sum(1, keepdim=True)
    # symmetric padding (edge pixel repeated), any number of reflections
    index = (taps.long() - 1) % (2 * in_len)
    index = torch.where(index >= in_len, 2 * in_len - 1 - index, index)
    return torch.zeros(out_len, in_len, dtype=torch.float64).scatter_add_(1, index, weights)


def imresize(images: Tensor, scale: float) -> Tensor:
    """MATLAB/basicsr bicubic ``imresize`` of N x C x H x W by ``scale`` (same for both axes), not clipped."""
    rows = _imresize_matrix(images.shape[-2], float(scale)).to(images)
    cols = _imresize_matrix(images.shape[-1], float(scale)).to(images)
    return torch.einsum("oh,nchw,pw->ncop", rows, images, cols)


def gcfsr_lq(hr: Tensor, factor: int) -> Tensor:
    """GCFSR's low-quality input: ``hr`` N x 3 x S x S in [-1, 1] -> bicubic down by ``factor`` and back up to S,
    rounded to 8 bits, in [-1, 1] (module docstring). The model is told ``scale = factor``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise GankdError(f"factor must be a positive integer, got {factor!r}")
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise GankdError(f"hr must be N x 3 x S x S, got {list(hr.shape)}")
    size = hr.shape[-1]
    if hr.shape[-2] != size or size % factor:
        raise GankdError(f"hr must be square with a side divisible by factor {factor}, got {list(hr.shape)}")
    with torch.no_grad():
        image = (hr.float() + 1) / 2
        lq = imresize(imresize(image, 1 / factor), factor)
        lq = torch.clamp(torch.round(lq * 255), 0, 255) / 255
    return (lq * 2 - 1).to(hr.dtype)
