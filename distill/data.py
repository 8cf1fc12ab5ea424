"""Data for distilling SR GANs (SDAKD on Real-ESRGAN): images in, a fixed pool of HR/LR crops and the frozen
teacher's outputs out.

Pipeline: ``list_images`` / ``load_image`` (or the embedded ``sample_images``) -> ``CropPool.build`` (random HR crops
and their LR counterparts, made once) -> ``cache_teacher`` (the frozen teacher run once over the pool) ->
``epoch_batches`` (a seeded permutation, so a resumed run restores the generator and sees the same batches).

Degradations (``make_lr``):

- ``bicubic``: bicubic downscale with antialiasing (classic SR, PSNR-oriented teachers).
- ``realesrgan``: Real-ESRGAN's second-order degradation (blur, resize, Gaussian/Poisson noise, JPEG, twice, then the
  final sinc filter + resize + JPEG in random order), built from basicsr's own kernel, noise, filter and DiffJPEG
  functions with the Real-ESRGAN x4plus training values (``RealESRGANDegradation``). Deterministic given a seed.

Embedded sample set (``sample_images``), real photos bundled with scikit-image (offline); grayscale ones are
repeated to 3 channels:

- train: ``coffee``, ``chelsea``, ``rocket``, ``immunohistochemistry``, ``retina``, ``camera`` (gray), ``coins``
  (gray).
- train_large: train plus every other real photo installed offline that no other split uses: scikit-image's
  ``brick``, ``grass``, ``cell``, ``moon``, ``page``, ``text`` (gray) and two JPEGs that ship inside gradio
  (``cheetah_cub``: fur; ``groot``: a film still, bark texture). For runs longer than the quickstart.
- validation: ``astronaut`` (a face), ``motorcycle_right`` (the right view of ``stereo_motorcycle``).
- holdout: ``hubble_deep_field``, ``motorcycle_left``, ``gravel`` (gray), ``clock`` (gray): never trained,
  calibrated, validated or selected on; benchmarks report on them (``demos/int8_holdout.py``). Not a clean test of
  generalisation: ``motorcycle_left`` shows the scene of a validation photo from the other eye, and hubble is 72%
  black sky; they are what scikit-image has offline beyond the other splits.
- holdout_photos: three colour JPEG photos from other installed packages, nothing like any train photo:
  ``grace_hopper`` (matplotlib's sample portrait), ``eiffel`` (gradio's tower) and ``cheetah`` (gradio's running
  cheetah, motion blur). With ``holdout`` they are the held-out set students are reported on
  (``demos/compact_holdout.py``).
- left out on purpose: ``cat`` (the same photo as ``chelsea``) and the synthetic images (``colorwheel``, ``logo``,
  ...).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gankd.serve.errors import first_line

from .errors import GankdError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_PIXELS = 64_000_000  # below PIL's own decompression-bomb limit (~89 MP), so our check speaks first
DEGRADATIONS = ("bicubic", "realesrgan")
Degradation = Literal["bicubic", "realesrgan"]

SAMPLE_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins"),
    "validation": ("astronaut", "motorcycle_right"),
    "holdout": ("hubble_deep_field", "motorcycle_left", "gravel", "clock"),
    "train_large": ("coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins", "brick",
                    "grass", "cell", "moon", "page", "text", "cheetah_cub", "groot"),
    "holdout_photos": ("grace_hopper", "eiffel", "cheetah"),
}
# photos that ship inside other installed packages (name -> package, file inside it)
PACKAGE_PHOTOS = {"cheetah_cub": ("gradio", "test_data/cheetah2.jpg"),
                  "groot": ("gradio", "media_assets/images/groot.jpeg"),
                  "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                  "eiffel": ("gradio", "media_assets/images/tower.jpg"),
                  "cheetah": ("gradio", "media_assets/images/cheetah.jpg")}


# ----------------------------------------------------------------------------------------------- images on disk


def list_images(folder: str | Path) -> list[Path]:
    """All images under ``folder`` (recursive), sorted so that crop pools built from a folder are reproducible."""
    folder = Path(folder)
    if not folder.exists():
        raise GankdError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise GankdError(f"image folder {str(folder)!r} is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise GankdError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {str(folder)!r}")
    return found


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read an image as float32 3xHxW RGB in [0, 1]; the size is checked from the header before decoding so a
    huge or malicious file fails fast instead of filling memory. Alpha is dropped (as basicsr's cv2 reader does)."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise GankdError(f"image {str(path)!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our max_pixels check replaces it
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise GankdError(f"image {str(path)!r} is {width}x{height} = {width * height / 1e6:.1f} MP, "
                                     f"over the limit of {max_pixels / 1e6:.1f} MP (max_pixels)")
                img.load()
                return _to_tensor(ImageOps.exif_transpose(img))
        except Image.DecompressionBombError as exc:
            raise GankdError(f"image {str(path)!r} is too large to decode safely ({first_line(exc)})") from None
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying truncated / not an image
            raise GankdError(f"image {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None


def _to_tensor(img) -> torch.Tensor:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: PIL's RGB convert would clip
        gray = np.asarray(img, dtype=np.float32)
        gray = gray / 65535.0 if img.mode != "F" else gray
        return torch.from_numpy(np.clip(gray, 0, 1)).expand(3, -1, -1).contiguous()
    return _array_to_tensor(np.asarray(img.convert("RGB")))


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8/bool/float HxW or HxWxC (C = 1, 3, 4) -> float32 3xHxW in [0, 1]."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).clamp_(0, 1)


# ----------------------------------------------------------------------------------------------- embedded samples


def sample_images(split: str) -> list[tuple[str, torch.Tensor]]:
    """The embedded photos of one split (module docstring), as (name, 3xHxW) pairs: a real dataset that needs no
    download, for the quickstart and tests."""
    if split not in SAMPLE_SPLITS:
        raise GankdError(f"unknown sample split {split!r}; expected one of {', '.join(SAMPLE_SPLITS)}")
    try:
        from skimage import data
    except ImportError:
        raise GankdError("the sample images need scikit-image: pip install 'gankd[all]'") from None
    return [(name, _package_photo(name) if name in PACKAGE_PHOTOS else _array_to_tensor(_skimage_photo(data, name)))
            for name in SAMPLE_SPLITS[split]]


def _package_photo(name: str) -> torch.Tensor:
    import importlib.util

    package, relative = PACKAGE_PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GankdError(f"the sample photo {name!r} ships inside {package}, which is not installed: "
                         "pip install 'gankd[all]'")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise GankdError(f"the sample photo {name!r} is missing from this {package} install ({path.name})")
    return load_image(path)


def _skimage_photo(data, name: str) -> np.ndarray:
    try:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            return left if name == "motorcycle_left" else right
        return getattr(data, name)()
    except Exception as exc:  # noqa: BLE001 - a photo missing from this scikit-image build
        raise GankdError(f"scikit-image has no usable sample photo {name!r} ({first_line(exc)})") from None


# ----------------------------------------------------------------------------------------------- degradations


@dataclass(frozen=True)
class RealESRGANDegradation:
    """Real-ESRGAN's degradation options, named as in its ``train_realesrgan_x4plus.yml``; defaults are that file's
    values. ``usm_sharpen`` degrades the USM-sharpened HR, as ``RealESRGANModel.feed_data`` does."""

    # the first degradation
    kernel_list: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                                    "plateau_aniso")
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # the second degradation
    second_blur_prob: float = 0.8
    kernel_list2: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso",
                                     "plateau_aniso")
    kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    # the final sinc filter
    final_sinc_prob: float = 0.8
    usm_sharpen: bool = True

    def __post_init__(self):
        for names, probs in ((self.kernel_list, self.kernel_prob), (self.kernel_list2, self.kernel_prob2)):
            if len(names) != len(probs):
                raise GankdError(f"kernel list {list(names)} and its probabilities {list(probs)} differ in length")
        if len(self.resize_prob) != 3 or len(self.resize_prob2) != 3:
            raise GankdError("resize_prob and resize_prob2 must be three probabilities: up, down, keep")


_KERNEL_SIZES = tuple(2 * v + 1 for v in range(3, 11))  # 7..21, hard-coded in basicsr's RealESRGANDataset
_KERNEL_PAD_TO = 21
_RESIZE_MODES = ("area", "bilinear", "bicubic")


def bicubic_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic downscale by 1/scale with antialiasing (the classic SR degradation), clamped to [0, 1]."""
    _check_hr(hr, scale)
    h, w = hr.shape[-2:]
    lr = F.interpolate(hr.float(), size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp_(0, 1)


def realesrgan_lr(hr: torch.Tensor, scale: int, generator: torch.Generator | int,
                  opts: RealESRGANDegradation | None = None) -> torch.Tensor:
    """Real-ESRGAN's second-order degradation: N×3×H×W HR in [0, 1] to N×3×(H/scale)×(W/scale), rounded to 1/255.

    Follows basicsr ``RealESRGANDataset.__getitem__`` (kernels, per image) and ``RealESRGANModel.feed_data`` (the
    rest; resize factors and modes are shared by the batch, as there). basicsr draws from the global
    ``random``/``np.random``/torch RNGs, so those are seeded from ``generator`` (a seed, or a torch.Generator that
    is advanced by one draw) for the call and restored afterwards: the same seed gives the same LR, bit-exact with
    basicsr's own pipeline run from that seed (tests). One deviation: images smaller than a filter's reflect padding
    are replicate-padded first, where basicsr (made for 400 px crops) would fail.
    """
    _check_hr(hr, scale)
    opts = opts or RealESRGANDegradation()
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    else:
        seed = int(generator)
    tools = _basicsr_tools()
    with _seeded_global_rngs(seed, hr.device), torch.no_grad():  # DiffJPEG holds its tables as Parameters
        return _second_order(hr.float(), scale, opts, tools, hr.device)


def make_lr(hr: torch.Tensor, scale: int, kind: Degradation, seed: int | torch.Generator = 0,
            opts: RealESRGANDegradation | None = None) -> torch.Tensor:
    """The LR counterpart of ``hr`` by the named degradation (``seed`` is ignored by ``bicubic``)."""
    if kind == "bicubic":
        return bicubic_lr(hr, scale)
    if kind == "realesrgan":
        return realesrgan_lr(hr, scale, seed, opts)
    raise GankdError(f"unknown degradation {kind!r}; expected one of {', '.join(DEGRADATIONS)}")


def _check_hr(hr: torch.Tensor, scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise GankdError(f"scale must be a positive integer, got {scale!r}")
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise GankdError(f"HR images must be N×3×H×W, got shape {list(hr.shape)}")
    if hr.shape[-2] % scale or hr.shape[-1] % scale:
        raise GankdError(f"HR size {hr.shape[-2]}x{hr.shape[-1]} is not a multiple of scale {scale}")


@functools.cache
def _basicsr_tools():
    """basicsr's degradation module, filter2D and a DiffJPEG/USMSharp pair, imported on first use (heavy). basicsr
    calls ``np.seterr(divide='ignore', invalid='ignore')`` at import: put numpy's error state back afterwards."""
    saved = np.geterr()
    try:
        from basicsr.data import degradations
        from basicsr.utils.diffjpeg import DiffJPEG
        from basicsr.utils.img_process_util import USMSharp, filter2D
    except ImportError:
        raise GankdError("the realesrgan degradation needs basicsr: pip install 'gankd[all]'") from None
    finally:
        np.seterr(**saved)
    return degradations, filter2D, DiffJPEG(differentiable=False), USMSharp()


@contextlib.contextmanager
def _seeded_global_rngs(seed: int, device: torch.device):
    """Seed random, np.random and torch's default generator (and the CUDA one of ``device``); restore all after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _second_order(hr, scale, opts, tools, device) -> torch.Tensor:
    degradations, filter2D, jpeger, usm = tools
    jpeger, usm = jpeger.to(device), usm.to(device)
    n, _, h, w = hr.shape
    kernels = [_draw_kernels(opts, degradations) for _ in range(n)]  # per image, in the dataset's draw order
    kernel1, kernel2, sinc = (torch.from_numpy(np.stack(k)).float().to(device) for k in zip(*kernels))

    out = _padded(usm, hr, usm.radius // 2) if opts.usm_sharpen else hr
    # the first degradation
    out = _padded(functools.partial(filter2D, kernel=kernel1), out, _KERNEL_PAD_TO // 2)
    factor = _random_resize_factor(opts.resize_prob, opts.resize_range)
    out = _resize(out, (int(out.shape[-2] * factor), int(out.shape[-1] * factor)), random.choice(_RESIZE_MODES),
                  factor)
    out = _noise(out, degradations, opts.gaussian_noise_prob, opts.noise_range, opts.poisson_scale_range,
                 opts.gray_noise_prob)
    out = _jpeg(out, jpeger, opts.jpeg_range)
    # the second degradation
    if np.random.uniform() < opts.second_blur_prob:
        out = _padded(functools.partial(filter2D, kernel=kernel2), out, _KERNEL_PAD_TO // 2)
    factor = _random_resize_factor(opts.resize_prob2, opts.resize_range2)
    out = _resize(out, (int(h / scale * factor), int(w / scale * factor)), random.choice(_RESIZE_MODES))
    out = _noise(out, degradations, opts.gaussian_noise_prob2, opts.noise_range2, opts.poisson_scale_range2,
                 opts.gray_noise_prob2)
    # resize back + final sinc, and JPEG, in random order (other orders give twisted lines, says Real-ESRGAN)
    final = functools.partial(_resize_and_sinc, size=(h // scale, w // scale), sinc=sinc, filter2D=filter2D)
    if np.random.uniform() < 0.5:
        out = _jpeg(final(out), jpeger, opts.jpeg_range2)
    else:
        out = final(_jpeg(out, jpeger, opts.jpeg_range2))
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


def _draw_kernels(opts: RealESRGANDegradation, degradations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three 21×21 kernels ``RealESRGANDataset.__getitem__`` draws for one image, with the same RNG calls."""
    first = _blur_kernel(degradations, opts.sinc_prob, opts.kernel_list, opts.kernel_prob, opts.blur_sigma,
                         opts.betag_range, opts.betap_range)
    second = _blur_kernel(degradations, opts.sinc_prob2, opts.kernel_list2, opts.kernel_prob2, opts.blur_sigma2,
                          opts.betag_range2, opts.betap_range2)
    if np.random.uniform() < opts.final_sinc_prob:
        size = random.choice(_KERNEL_SIZES)
        with np.errstate(divide="ignore", invalid="ignore"):  # the sinc's centre is 0/0 before basicsr fixes it
            sinc = degradations.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=21)
    else:
        sinc = np.zeros((_KERNEL_PAD_TO, _KERNEL_PAD_TO))
        sinc[_KERNEL_PAD_TO // 2, _KERNEL_PAD_TO // 2] = 1  # a pulse: no final filtering
    return first, second, sinc


def _blur_kernel(degradations, sinc_prob, kernel_list, kernel_prob, sigma, betag, betap) -> np.ndarray:
    size = random.choice(_KERNEL_SIZES)
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.random.uniform() < sinc_prob:
            omega_c = np.random.uniform(np.pi / 3 if size < 13 else np.pi / 5, np.pi)
            kernel = degradations.circular_lowpass_kernel(omega_c, size, pad_to=False)
        else:
            kernel = degradations.random_mixed_kernels(list(kernel_list), list(kernel_prob), size, sigma, sigma,
                                                       [-math.pi, math.pi], betag, betap, noise_range=None)
    pad = (_KERNEL_PAD_TO - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def _random_resize_factor(resize_prob, resize_range) -> float:
    updown = random.choices(["up", "down", "keep"], resize_prob)[0]
    if updown == "up":
        return np.random.uniform(1, resize_range[1])
    if updown == "down":
        return np.random.uniform(resize_range[0], 1)
    return 1.0


def _resize(img: torch.Tensor, size: tuple[int, int], mode: str, factor: float | None = None) -> torch.Tensor:
    """``F.interpolate`` as basicsr calls it (by factor in stage 1, by size in stage 2), never below 1 pixel."""
    if factor is not None and min(size) >= 1:
        return F.interpolate(img, scale_factor=factor, mode=mode)
    return F.interpolate(img, size=(max(1, size[0]), max(1, size[1])), mode=mode)


def _padded(fn, img: torch.Tensor, pad: int) -> torch.Tensor:
    """Apply a reflect-padding filter to images smaller than its padding by replicate-padding them first.
    Contiguous input: basicsr's filter2D ``view``s it, which fails on DiffJPEG's cropped output."""
    if min(img.shape[-2:]) > pad:
        return fn(img.contiguous())
    return fn(F.pad(img, (pad, pad, pad, pad), mode="replicate").contiguous())[..., pad:-pad, pad:-pad]


def _noise(img, degradations, gaussian_prob, sigma_range, poisson_range, gray_prob) -> torch.Tensor:
    if np.random.uniform() < gaussian_prob:
        return degradations.random_add_gaussian_noise_pt(img, sigma_range=sigma_range, clip=True, rounds=False,
                                                         gray_prob=gray_prob)
    return degradations.random_add_poisson_noise_pt(img, scale_range=poisson_range, gray_prob=gray_prob, clip=True,
                                                    rounds=False)


def _jpeg(img: torch.Tensor, jpeger: nn.Module, quality_range) -> torch.Tensor:
    quality = img.new_zeros(img.size(0)).uniform_(*quality_range)
    return jpeger(torch.clamp(img, 0, 1), quality=quality)  # unclamped input gives JPEG artifacts (basicsr)


def _resize_and_sinc(img, size, sinc, filter2D) -> torch.Tensor:
    img = F.interpolate(img, size=size, mode=random.choice(_RESIZE_MODES))
    return _padded(functools.partial(filter2D, kernel=sinc), img, _KERNEL_PAD_TO // 2)


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

    def __post_init__(self):
        n, _, size, _ = self.hr.shape
        if self.lr.shape != (n, 3, size // self.scale, size // self.scale):
            raise GankdError(f"LR crops {list(self.lr.shape)} do not match HR crops {list(self.hr.shape)} "
                             f"at scale {self.scale}")

    @classmethod
    def build(cls, images: Sequence[torch.Tensor], count: int, hr_size: int, scale: int,
              degradation: Degradation = "bicubic", seed: int = 0,
              opts: RealESRGANDegradation | None = None, augment: bool = False) -> "CropPool":
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
            top = int(torch.randint(0, image.shape[-2] - hr_size + 1, (1,), generator=generator))
            left = int(torch.randint(0, image.shape[-1] - hr_size + 1, (1,), generator=generator))
            crops.append(image[:, top:top + hr_size, left:left + hr_size])
            seeds.append(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if augment:  # drawn from its own generator, so the positions match the pool built without augment
            turns = torch.Generator().manual_seed(seed + 7919)
            crops = [dihedral(crop, int(torch.randint(0, 8, (1,), generator=turns))) for crop in crops]
        return cls._degrade(crops, seeds, scale, degradation, skipped, opts)

    @classmethod
    def _degrade(cls, crops, seeds, scale, degradation, skipped, opts) -> "CropPool":
        """One LR per crop with its own seed, so each crop gets its own resize factors (Real-ESRGAN needs a
        180-pair queue to get that diversity from batched degradation)."""
        if degradation not in DEGRADATIONS:
            raise GankdError(f"unknown degradation {degradation!r}; expected one of {', '.join(DEGRADATIONS)}")
        hr = torch.stack(crops).float().contiguous()
        lr = torch.cat([make_lr(hr[i:i + 1], scale, degradation, seeds[i], opts)
                        for i in _progress(len(crops), f"{degradation} LR")])
        return cls(hr=hr, lr=lr, scale=scale, degradation=degradation, skipped=skipped)

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


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: a horizontal flip when ``k >= 4``, then ``k % 4`` quarter turns."""
    image = image.flip(-1) if k >= 4 else image
    return torch.rot90(image, k % 4, dims=(-2, -1)).contiguous()


def validation_pool(images: Sequence[torch.Tensor], hr_size: int, scale: int, degradation: Degradation = "bicubic",
                    seed: int = 0, per_image: int = 1, opts: RealESRGANDegradation | None = None) -> CropPool:
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
    return CropPool._degrade(crops, seeds, scale, degradation, skipped, opts)


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


# ----------------------------------------------------------------------------------------------- teacher cache


def cache_teacher(teacher: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int,
                  max_cache_mb: float, folder: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher once over the pool: (raw outputs, last feature maps), stored where the inputs are.

    ``inputs`` is the LR pool (N×C×H×W), or a tuple of what the teacher takes (GCFSR: LQ faces and their scales).
    Stages 2-3 of SDAKD keep the teacher frozen, so these cached answers are exactly what it would say each step.
    Outputs are kept raw (not clamped): the student matches the teacher, not the teacher's display image. The size
    is estimated from the first batch and checked against ``max_cache_mb`` before anything large is allocated.

    With ``folder`` the answers live on disk as ``.npy`` files, memory-mapped, under a key made of the teacher's
    weights and the exact input bytes: a resumed run, or any run on the same crops with the same teacher, maps them
    instead of running the teacher again (an hour-long run's pool costs the x4plus teacher many CPU minutes). Files
    are written to a temporary folder renamed when complete, so an interrupted run leaves no half-written cache.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    lr = inputs[0]
    if lr.dim() != 4 or lr.shape[0] < 1:
        raise GankdError(f"LR pool must be N×C×H×W with N ≥ 1, got shape {list(lr.shape)}")
    if batch_size < 1:
        raise GankdError(f"batch_size must be at least 1, got {batch_size}")
    if _world_size() > 1:
        return _shared_cache(teacher, inputs, batch_size, max_cache_mb, None if folder is None else Path(folder))
    if folder is not None:
        return _disk_cache(teacher, inputs, batch_size, max_cache_mb, Path(folder))
    # allocated outside inference mode: inference tensors could not be used as loss targets later
    return _run_teacher(teacher, inputs, batch_size, max_cache_mb, lambda name, shape: lr.new_empty(shape))


def _run_teacher(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                 allocate, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    lr = inputs[0]
    n = lr.shape[0]
    device = next(teacher.parameters(), lr).device
    was_training = teacher.training
    teacher.eval()
    try:
        outputs = features = None
        for start in _progress_batches(n, batch_size):
            with torch.inference_mode():
                out, feats = teacher.forward_with_features(*(x[start:start + batch_size].to(device) for x in inputs))
            if outputs is None:
                _check_cache_size(out, feats[-1], total or n, max_cache_mb)
                outputs = allocate("outputs", (n, *out.shape[1:]))
                features = allocate("features", (n, *feats[-1].shape[1:]))
            outputs[start:start + batch_size] = out.to(outputs.device, outputs.dtype)
            features[start:start + batch_size] = feats[-1].to(features.device, features.dtype)
    finally:
        teacher.train(was_training)
    return outputs, features


def _cache_key(teacher: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    tap = getattr(teacher, "feature_tap", None)  # a foreign teacher's named feature module (archs.foreign)
    if tap is not None:
        digest.update(f"feature_tap={tap}".encode())
    for x in inputs:
        digest.update(str(tuple(x.shape)).encode())
        digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _disk_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import shutil
    import tempfile

    final = folder / _cache_key(teacher, inputs)
    if (final / "outputs.npy").is_file():
        log.info("teacher outputs mapped from %s (cached by an earlier run)", final)
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
        except OSError as exc:
            raise GankdError(f"teacher_cache_dir {str(folder)!r} is not writable ({first_line(exc)})") from None
        maps = {}

        def allocate(name, shape):
            maps[name] = np.lib.format.open_memmap(work / f"{name}.npy", "w+", np.float32, shape)
            return torch.from_numpy(maps[name])

        try:
            _run_teacher(teacher, inputs, batch_size, max_cache_mb, allocate)
            for array in maps.values():
                array.flush()
            maps.clear()
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("teacher outputs cached on disk in %s", final)
    # copy-on-write maps: writable tensors that never change the files
    return tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in ("outputs", "features"))


def _world_size() -> int:
    """Processes of this run: > 1 under torchrun once :mod:`.distributed` joined the process group."""
    return torch.distributed.get_world_size() \
        if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def _shared_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                  folder: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchrun: the pool's teacher answers computed once, split over the ranks, and summed into every rank.

    Each rank runs the teacher on a contiguous 1/N of the pool (the ranks' rows change every epoch, so every rank
    needs every answer); an all-reduce of zero-filled copies gives each rank the whole cache. Against every rank
    running the whole pool this divides the cache's wall time by up to N (docs/distill.md, "Many devices"). With
    ``folder``, rank 0 alone decides whether the disk cache is there and alone writes it; the other ranks keep theirs
    in memory, so nodes need not share a filesystem.
    """
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    final = folder / _cache_key(teacher, inputs) if folder is not None and rank == 0 else None
    hit = [final is not None and (final / "outputs.npy").is_file()]
    dist.broadcast_object_list(hit, src=0)
    if hit[0]:
        mapped = tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in
                       ("outputs", "features")) if rank == 0 else None
        shapes = [None if mapped is None else [tuple(t.shape) for t in mapped]]
        dist.broadcast_object_list(shapes, src=0)
        cache = mapped or tuple(inputs[0].new_zeros(shape, dtype=torch.float32) for shape in shapes[0])
        for tensor in cache:  # rank 0 adds a copy of its map (which stays read-only) to the others' zeros
            _sum_over_ranks(tensor.clone() if rank == 0 else tensor)
        log.info("teacher outputs mapped from %s (cached by an earlier run) and shared by %d processes", final, size)
        return cache
    n = inputs[0].shape[0]
    per_rank = math.ceil(n / size)
    start, stop = min(rank * per_rank, n), min((rank + 1) * per_rank, n)
    mine = _run_teacher(teacher, tuple(x[start:stop] for x in inputs), batch_size, max_cache_mb,
                        lambda name, shape: inputs[0].new_empty(shape), total=n) if stop > start else None
    shapes = [None if mine is None else [tuple(t.shape[1:]) for t in mine]]
    dist.broadcast_object_list(shapes, src=0)  # rank 0 always has rows: a rank past the end learns the shapes
    cache = tuple(inputs[0].new_zeros((n, *shape), dtype=torch.float32) for shape in shapes[0])
    for i, tensor in enumerate(cache):
        if mine is not None:
            tensor[start:stop] = mine[i]
        _sum_over_ranks(tensor)
    if final is not None:
        _write_disk_cache(final, cache)
    return cache


def _sum_over_ranks(tensor: torch.Tensor, rows_per_call: int = 64) -> None:
    """In-place sum over ranks; nccl reduces on the GPU, so CPU tensors go through it in blocks of rows."""
    import torch.distributed as dist

    if dist.get_backend() != "nccl" or tensor.is_cuda:
        dist.all_reduce(tensor)
        return
    device = torch.device("cuda", torch.cuda.current_device())
    for start in range(0, tensor.shape[0], rows_per_call):
        block = tensor[start:start + rows_per_call].to(device)
        dist.all_reduce(block)
        tensor[start:start + rows_per_call] = block.cpu()


def _write_disk_cache(final: Path, cache: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Rank 0 keeps the shared cache on disk as a one-process run would (tmp folder renamed when complete)."""
    import shutil
    import tempfile

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-", dir=final.parent))
    except OSError as exc:
        raise GankdError(f"teacher_cache_dir {str(final.parent)!r} is not writable ({first_line(exc)})") from None
    try:
        for name, tensor in zip(("outputs", "features"), cache):
            np.save(work / f"{name}.npy", tensor.numpy())
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("teacher outputs cached on disk in %s", final)


def _check_cache_size(out: torch.Tensor, feat: torch.Tensor, n: int, max_cache_mb: float) -> None:
    per_crop = (out[0].numel() * out.element_size()) + (feat[0].numel() * feat.element_size())
    needed_mb = per_crop * n / 2**20
    if needed_mb > max_cache_mb:
        raise GankdError(f"the teacher cache needs {needed_mb:.1f} MB for {n} crops, over max_cache_mb="
                         f"{max_cache_mb:g}; lower the pool's crop count or hr_size, or raise max_cache_mb")


def _progress_batches(n: int, batch_size: int):
    from tqdm import tqdm

    return tqdm(range(0, n, batch_size), desc="teacher cache", unit="batch", disable=not sys.stderr.isatty(),
                leave=False)


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
