"""StyleGAN2's two custom ops in plain PyTorch: ``upfirdn2d`` and ``fused_leaky_relu``.

The official StyleGAN2 / GCFSR / rosinality code compiles these as CUDA extensions; those have no CPU path and do not
export to ONNX. These versions are the reference ("native") formulations — pad, zero-insert upsample, FIR filter with
a depthwise conv, strided downsample; bias + leaky ReLU(0.2) scaled by sqrt(2) — built from ops ONNX knows. Both
StyleGAN2 (``stylegan2.py``) and GCFSR (``gcfsr.py``) import them; parameter names match the official modules
(``FusedLeakyReLU.bias``) so official checkpoints load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_kernel(k) -> Tensor:
    """A normalised 2-D FIR kernel from a 1-D (outer product) or 2-D list, e.g. ``(1, 3, 3, 1)``."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad (negative pads crop), filter with ``kernel``, keep every ``down``-th pixel.

    Same semantics as the official ``upfirdn2d`` (``pad`` = (pad0, pad1) applied to both axes), for N×C×H×W input.
    """
    n, c, h, w = x.shape
    pad0, pad1 = pad
    if up > 1:
        x = x.reshape(n * c, 1, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (max(pad0, 0), max(pad1, 0), max(pad0, 0), max(pad1, 0)))
    x = x[:, :, max(-pad0, 0):x.shape[2] - max(-pad1, 0), max(-pad0, 0):x.shape[3] - max(-pad1, 0)]
    kh, kw = kernel.shape
    # Channels folded into the batch so the filter has a static shape: with a C-channel depthwise filter built from
    # x.shape, ONNX export with a dynamic batch fails ("convolution for kernel of unknown shape").
    height, width = x.shape[2], x.shape[3]
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).reshape(1, 1, kh, kw)
    x = F.conv2d(x.reshape(-1, 1, height, width), weight)
    x = x.reshape(n, c, x.shape[2], x.shape[3])
    return x[:, :, ::down, ::down] if down > 1 else x


def fused_leaky_relu(x: Tensor, bias: Tensor | None = None, negative_slope: float = 0.2,
                     scale: float = math.sqrt(2)) -> Tensor:
    """``leaky_relu(x + bias) * sqrt(2)``, with ``bias`` broadcast over channel dim 1."""
    if bias is not None:
        shape = [1, bias.shape[0]] + [1] * (x.ndim - 2)
        x = x + bias.view(shape)
    return F.leaky_relu(x, negative_slope) * scale


class FusedLeakyReLU(nn.Module):
    """Bias + scaled leaky ReLU with a learnt per-channel ``bias`` (the official module's only parameter)."""

    def __init__(self, channels: int, bias: bool = True, negative_slope: float = 0.2, scale: float = math.sqrt(2)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)
