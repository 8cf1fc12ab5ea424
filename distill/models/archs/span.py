"""SPAN (Swift Parameter-free Attention Network, Wan et al., winner of the NTIRE 2024 efficient-SR challenge).

Written after the official code (hongyuanyu/SPAN ``basicsr/archs/span_arch.py``, Apache-2.0) as spandrel 0.4 reads
it (``spandrel/architectures/SPAN``): the same module names (``conv_1``, ``block_1``..``block_6`` with ``c1_r``,
``c2_r``, ``c3_r``, ``conv_cat``, ``conv_2``, ``upsampler.0``), the same input normalisation ((x - mean) * 255, or
none with the ``no_norm`` buffer) and no de-normalisation of the output, so official SPAN weights load with
``strict=True`` and spandrel/chaiNNer load gankd's SPAN students.

Each ``Conv3XC`` is re-parameterised: in training a 1x1 -> 3x3 -> 1x1 stack (``conv``) plus a 1x1 skip (``sk``);
in eval a single 3x3 ``eval_conv`` whose weights are those branches fused exactly. The fused weights are refreshed
whenever the branches have changed since the last fusion (tracked by the tensors' in-place version counters) and
the module is put in eval mode, runs in eval mode, or is saved (``state_dict``): an EMA copy updated in place, a
loaded checkpoint and an exported graph all see one 3x3 conv per ``Conv3XC`` that matches the branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.models.registry import register_arch

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, hard-coded in the official SPAN
IMG_RANGE = 255.0
NUM_BLOCKS = 6  # fixed by the official module names (block_1..block_6) and its conv_cat taps


@dataclass(frozen=True)
class SPANConfig:
    num_in_ch: int = 3
    num_out_ch: int = 3
    feature_channels: int = 48
    upscale: int = 4
    norm: bool = True  # (x - RGB_MEAN) * 255 on the way in, as the official default; False adds the no_norm buffer

    def __post_init__(self):
        for name in ("num_in_ch", "num_out_ch", "feature_channels", "upscale"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.norm and self.num_in_ch != 3:
            raise ValueError("norm=True subtracts an RGB mean: it needs num_in_ch=3")


class Conv3XC(nn.Module):
    """A 3x3 conv trained as 1x1 (x gain) -> 3x3 -> 1x1 plus a 1x1 skip, run as one fused 3x3 conv in eval mode."""

    def __init__(self, c_in: int, c_out: int, gain: int = 2, relu: bool = False):
        super().__init__()
        self.has_relu = relu
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_in * gain, 1), nn.Conv2d(c_in * gain, c_out * gain, 3),
                                  nn.Conv2d(c_out * gain, c_out, 1))
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.eval_conv.weight.requires_grad_(False)
        self.eval_conv.bias.requires_grad_(False)
        self._fused_key: tuple[int, ...] | None = None
        self.register_state_dict_pre_hook(lambda module, prefix, keep_vars: module.sync())
        self.sync()

    def _branch_key(self) -> tuple[int, ...]:
        return tuple(p._version for p in (*self.sk.parameters(), *self.conv.parameters()))

    def sync(self) -> None:
        """Fuse again if a branch weight changed in place since the last fusion (optimizer step, EMA, load)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return  # an export traces the fused conv as it is, without the fusion arithmetic
        if self._fused_key != self._branch_key():
            self.fuse()
            self._fused_key = self._branch_key()

    @torch.no_grad()
    def fuse(self) -> None:
        """Write the exact single-3x3 equivalent of (conv stack + skip) into ``eval_conv``."""
        (w1, b1), (w2, b2), (w3, b3) = ((c.weight, c.bias) for c in self.conv)
        # 1x1 then 3x3: W[o, i] = sum_m w2[o, m] * w1[m, i]; the 1x1's bias passes through the 3x3's taps
        w = torch.einsum("omhw,mi->oihw", w2, w1[:, :, 0, 0])
        b = (w2 * b1.view(1, -1, 1, 1)).sum((1, 2, 3)) + b2
        w = torch.einsum("om,mihw->oihw", w3[:, :, 0, 0], w)
        b = w3[:, :, 0, 0] @ b + b3
        self.eval_conv.weight.copy_(w + F.pad(self.sk.weight, [1, 1, 1, 1]))
        self.eval_conv.bias.copy_(b + self.sk.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self.sync()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # the stack's 3x3 has no padding of its own: pad the input once, as the official code
            out = self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        else:
            self.sync()
            out = self.eval_conv(x)
        return F.leaky_relu(out, negative_slope=0.05) if self.has_relu else out


class SPAB(nn.Module):
    """Swift parameter-free attention block: three Conv3XC, attention = sigmoid(out3) - 0.5 on (out3 + x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.c1_r = Conv3XC(channels, channels)
        self.c2_r = Conv3XC(channels, channels)
        self.c3_r = Conv3XC(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    def __init__(self, config: SPANConfig):
        super().__init__()
        self.config = config
        c = config.feature_channels
        if not config.norm:
            self.register_buffer("no_norm", torch.zeros(1))
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if config.norm else torch.zeros(1),
                             persistent=False)
        self.conv_1 = Conv3XC(config.num_in_ch, c)
        for i in range(1, NUM_BLOCKS + 1):
            self.add_module(f"block_{i}", SPAB(c))
        self.conv_cat = nn.Conv2d(c * 4, c, 1)
        self.conv_2 = Conv3XC(c, c)
        self.upsampler = nn.Sequential(nn.Conv2d(c, config.num_out_ch * config.upscale**2, 3, padding=1),
                                       nn.PixelShuffle(config.upscale))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused feature map (``conv_cat``'s output, feature_channels at LR size) before the upsampler."""
        if self.config.norm:
            x = (x - self.mean) * IMG_RANGE
        first = self.conv_1(x)
        out, out1 = first, None
        taps = []
        for i in range(1, NUM_BLOCKS + 1):
            out, out1 = getattr(self, f"block_{i}")(out)
            if i == 1:
                taps.append(out)
        return [self.conv_cat(torch.cat([first, self.conv_2(out), taps[0], out1], 1))]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.forward_features(x)
        return self.upsampler(feats[-1]), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


@register_arch("span", SPANConfig, kind="generator", family="span")
def span(config: SPANConfig) -> SPAN:
    return SPAN(config)
