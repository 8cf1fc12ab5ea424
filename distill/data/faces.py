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
  Our resize is a batched matrix form of that function, in float64. Its one home is ``gankd.serve.faces`` (numpy;
  the demo degrades faces with it), of which ``gcfsr_lq`` and ``imresize`` here are torch wrappers.

``DEFAULT_FACTORS`` is the official ``downsample_list`` of ``train_gcfsr_gan.yml`` (512 model, cond_norm 32);
``FACTORS_1024`` is the one of ``train_gcfsr.yml`` (the 1024 model, cond_norm 64). A factor is drawn uniformly from the
list per image, so repeats weight the large factors.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gankd.distill.errors import GankdError
from gankd.serve import faces as serve_faces

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


def imresize(images: Tensor, scale: float) -> Tensor:
    """MATLAB/basicsr bicubic ``imresize`` of N x C x H x W by ``scale`` (same for both axes), not clipped: the
    matrices of ``gankd.serve.faces`` (the one home), computed in float64, returned in ``images``' dtype."""
    planes = images.detach().to("cpu", torch.float64).numpy()
    return torch.from_numpy(serve_faces.imresize_planes(planes, scale)).to(images)


def gcfsr_lq(hr: Tensor, factor: int) -> Tensor:
    """GCFSR's low-quality input: ``hr`` N x 3 x S x S in [-1, 1] -> bicubic down by ``factor`` and back up to S,
    rounded to 8 bits, in [-1, 1] (module docstring; the recipe is ``gankd.serve.faces.lq_planes``, what the demo
    feeds a Session, computed in float64). The model is told ``scale = factor``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise GankdError(f"factor must be a positive integer, got {factor!r}")
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise GankdError(f"hr must be N x 3 x S x S, got {list(hr.shape)}")
    size = hr.shape[-1]
    if hr.shape[-2] != size or size % factor:
        raise GankdError(f"hr must be square with a side divisible by factor {factor}, got {list(hr.shape)}")
    planes = (hr.detach().to("cpu", torch.float64).numpy() + 1) / 2
    return torch.from_numpy(serve_faces.lq_planes(planes, factor) * 2 - 1).to(hr)
