"""Degradations: the LR inputs an upscaler is trained and judged on, made from HR crops.

Every way gankd makes an LR input from an HR crop lives here: ``bicubic`` (classic SR), ``realesrgan`` (Real-ESRGAN's
second-order pipeline, bit-exact with basicsr's) and ``photo``, a mix of what users' photos really are.

A user's photo is rarely a clean bicubic downscale. It was saved as a web JPEG, shot on a noisy sensor, taken through
a soft lens, or resized more than once before it reaches the upscaler. Each kind here starts from the bicubic LR
(:func:`bicubic_lr`) and adds one of those, at strengths drawn per crop from ranges that are recipe keys:

- ``clean``: the bicubic LR itself;
- ``jpeg``: a real libjpeg round trip (Pillow) at a web quality;
- ``noise``: Gaussian sensor noise (a share of it grey, as luminance noise is), then JPEG;
- ``blur``: a soft lens, a Gaussian blur of the LR, then JPEG;
- ``resize``: resized down and back up with random filters (a photo resized twice), then JPEG;
- ``realesrgan``: Real-ESRGAN's second-order pipeline (:func:`realesrgan_lr`) at its training strength.

Targets are the teacher's outputs on the degraded input, so no clean ground truth is needed: the student learns the
teacher's cleaning as well as its upscaling. Every draw comes from the crop's own seed, so a crop's LR is fixed and
the disk cache of teacher outputs (keyed by the LR bytes) stays valid. A ``PhotoMix`` draws one kind per crop
(``clean_share`` of them clean); ``degrade_lr`` applies one named kind, as ``gankd-distill eval --degrade`` does.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.errors import GankdError

DEGRADATIONS = ("bicubic", "realesrgan", "photo")  # what a crop pool's recipe may name
Degradation = Literal["bicubic", "realesrgan", "photo"]


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
            opts: RealESRGANDegradation | None = None, mix=None) -> torch.Tensor:
    """The LR counterpart of ``hr`` by the named degradation (``seed`` is ignored by ``bicubic``). ``photo`` draws
    each image's kind and strengths from ``mix`` (a ``degrade.PhotoMix``; its defaults when None)."""
    return _make_lr(hr, scale, kind, seed, opts, mix)[0]


def _make_lr(hr, scale, kind, seed, opts, mix) -> tuple[torch.Tensor, list[str]]:
    """``make_lr`` and the degradation kind of each image (``degrade.KINDS``)."""
    if kind == "bicubic":
        return bicubic_lr(hr, scale), ["clean"] * len(hr)
    if kind == "realesrgan":
        return realesrgan_lr(hr, scale, seed, opts), ["realesrgan"] * len(hr)
    if kind == "photo":
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=seed))
        pairs = [mix_lr(hr[i:i + 1], scale, seed + i, mix or PhotoMix()) for i in range(len(hr))]
        return torch.cat([lr for lr, _ in pairs]), [k for _, k in pairs]
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




# ----------------------------------------------------------------------------------------------- photo mix

KINDS = ("clean", "jpeg", "noise", "blur", "resize", "realesrgan")
PHOTO_KINDS = ("jpeg", "noise", "blur", "resize")  # the degraded kinds of the default mix
_CHAIN_MODES = ("bilinear", "bicubic", "area")  # the filters of a resize chain


@dataclass(frozen=True)
class PhotoMix:
    """Which degradations a crop pool draws, and how strong they are (recipe keys of the same names).

    ``clean_share`` of the crops stay bicubic; the rest draw one of ``kinds`` uniformly. Ranges are [lo, hi]:
    ``jpeg_quality`` in libjpeg quality, ``noise_sigma`` in 8-bit levels, ``blur_sigma`` in LR pixels,
    ``resize_factor`` the intermediate size of a resize chain relative to the LR."""

    clean_share: float = 0.5
    kinds: tuple[str, ...] = PHOTO_KINDS
    jpeg_quality: tuple[float, float] = (50.0, 95.0)
    noise_sigma: tuple[float, float] = (1.0, 8.0)
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    resize_factor: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self):
        object.__setattr__(self, "kinds", tuple(self.kinds))
        for field, value in (("jpeg_quality", self.jpeg_quality), ("noise_sigma", self.noise_sigma),
                             ("blur_sigma", self.blur_sigma), ("resize_factor", self.resize_factor)):
            object.__setattr__(self, field, tuple(float(v) for v in value))
            lo, hi = getattr(self, field)
            if len(value) != 2 or not 0 <= lo <= hi:
                raise GankdError(f"{field}: expected [lo, hi] with 0 <= lo <= hi, got {list(value)}")
        if not 0 <= self.clean_share <= 1:
            raise GankdError(f"clean_share: must be in [0, 1], got {self.clean_share}")
        unknown = [k for k in self.kinds if k not in KINDS or k == "clean"]
        if unknown or (not self.kinds and self.clean_share < 1):
            raise GankdError(f"degrade_kinds: {unknown[0] if unknown else '[]'!r} is not a degradation; expected "
                             f"some of {', '.join(k for k in KINDS if k != 'clean')}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise GankdError(f"jpeg_quality: expected [lo, hi] within 1..100, got {list(self.jpeg_quality)}")
        if not 0 < self.resize_factor[0] <= self.resize_factor[1] <= 1:
            raise GankdError(f"resize_factor: expected [lo, hi] within (0, 1], got {list(self.resize_factor)}")

    def draw(self, generator: torch.Generator) -> str:
        """The kind of one crop: clean with probability ``clean_share``, else one of ``kinds`` uniformly."""
        u = float(torch.rand((), generator=generator))
        if u < self.clean_share or not self.kinds:
            return "clean"
        return self.kinds[int(torch.randint(0, len(self.kinds), (), generator=generator))]


def mix_lr(hr: torch.Tensor, scale: int, seed: int, mix: PhotoMix) -> tuple[torch.Tensor, str]:
    """One crop (1×3×H×W HR in [0, 1]) degraded by the kind ``mix`` draws from ``seed``; (LR, kind)."""
    generator = torch.Generator().manual_seed(seed)
    kind = mix.draw(generator)
    return degrade_lr(hr, scale, kind, int(torch.randint(0, 2**62, (), generator=generator)), mix), kind


def degrade_lr(hr: torch.Tensor, scale: int, kind: str, seed: int, mix: PhotoMix | None = None) -> torch.Tensor:
    """N×3×H×W HR in [0, 1] to its LR by one named kind, strengths drawn from ``mix``'s ranges with ``seed``;
    8-bit values, as a decoded photo has."""
    if kind not in KINDS:
        raise GankdError(f"unknown degradation {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "realesrgan":
        return realesrgan_lr(hr, scale, seed)
    mix = mix or PhotoMix()
    generator = torch.Generator().manual_seed(seed)
    lr = _quantised(bicubic_lr(hr, scale))
    if kind == "clean":
        return lr
    out = []
    for image in lr:
        image = image[None]
        if kind == "noise":
            image = _photo_noise(image, _uniform(mix.noise_sigma, generator) / 255.0, generator)
        elif kind == "blur":
            image = gaussian_blur(image, _uniform(mix.blur_sigma, generator))
        elif kind == "resize":
            image = _resize_chain(image, _uniform(mix.resize_factor, generator), generator)
        out.append(jpeg(image, round(_uniform(mix.jpeg_quality, generator))))
    return torch.cat(out)


def _uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    lo, hi = bounds
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _quantised(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round() / 255


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A libjpeg round trip through Pillow (4:2:0, as cameras and the web save): 1×3×H×W in, 8-bit values out."""
    from PIL import Image

    array = (image[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)[None].float() / 255


def _photo_noise(image: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of ``sigma`` (0..1 units); with probability 0.4 the same for all channels (luminance)."""
    grey = float(torch.rand((), generator=generator)) < 0.4
    shape = (1, 1, *image.shape[-2:]) if grey else image.shape
    noise = torch.randn(shape, generator=generator) * sigma
    return _quantised(image + noise)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur (reflect padding), 8-bit values out; sigma 0 returns the image."""
    if sigma <= 0:
        return image
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = image.shape[1]
    pad = min(radius, min(image.shape[-2:]) - 1)
    kernel = kernel[radius - pad:radius + pad + 1]
    kernel = kernel / kernel.sum()
    out = F.pad(image, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return _quantised(out)


def _resize_chain(image: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Down to ``factor`` of the size and back, each way with a filter drawn from the usual three."""
    h, w = image.shape[-2:]
    down, up = (_CHAIN_MODES[int(torch.randint(0, 3, (), generator=generator))] for _ in range(2))
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    image = _chain_resize(_quantised(_chain_resize(image, small, down)), (h, w), up)
    return _quantised(image)


def _chain_resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(image, size=size, mode="area")
    shrink = size[0] < image.shape[-2]  # antialiasing matters only when shrinking
    return F.interpolate(image, size=size, mode=mode, align_corners=False, antialias=shrink).clamp(0, 1)
