"""RRDBNet, the generator of ESRGAN / Real-ESRGAN (x4plus, x2plus, anime 6B).

Written after BasicSR ``basicsr/archs/rrdbnet_arch.py`` (Apache-2.0, Xintao Wang et al.) with the same module names,
so official ``RealESRGAN_x4plus.pth`` / ``RealESRGAN_x2plus.pth`` state dicts load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.models.registry import register_arch


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


@dataclass(frozen=True)
class RRDBNetConfig:
    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4  # 4: plain input; 2 and 1: pixel-unshuffled input (x2plus), as in BasicSR
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32
    # Width of conv_up1/conv_up2/conv_hr. None = num_feat (the official layout); a student may keep a wider
    # upsampler than its trunk, since HR-resolution convs are where a thin student loses detail.
    num_up_feat: int | None = None

    def __post_init__(self):
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale must be 1, 2 or 4, got {self.scale}")
        for name in ("num_in_ch", "num_out_ch", "num_feat", "num_block", "num_grow_ch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_up_feat is not None and (not isinstance(self.num_up_feat, int) or self.num_up_feat < 1):
            raise ValueError(f"num_up_feat must be a positive integer or null, got {self.num_up_feat!r}")


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = _lrelu(self.conv1(x))
        x2 = _lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = _lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = _lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x  # residual scaling 0.2, as in ESRGAN


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBNetConfig):
        super().__init__()
        self.config = config
        unshuffle = {4: 1, 2: 2, 1: 4}[config.scale]
        self.unshuffle = unshuffle
        c = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * unshuffle * unshuffle, c, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(c, config.num_grow_ch) for _ in range(config.num_block)])
        self.conv_body = nn.Conv2d(c, c, 3, 1, 1)
        up = config.num_up_feat or c
        self.conv_up1 = nn.Conv2d(c, up, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(up, up, 3, 1, 1)
        self.conv_hr = nn.Conv2d(up, up, 3, 1, 1)
        self.conv_last = nn.Conv2d(up, config.num_out_ch, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk output before upsampling (num_feat channels at LR size): what feature KD matches."""
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        return [feat + self.conv_body(self.body(feat))]

    def upsample(self, trunk: torch.Tensor) -> torch.Tensor:
        feat = _lrelu(self.conv_up1(F.interpolate(trunk, scale_factor=2.0, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        return self.conv_last(_lrelu(self.conv_hr(feat)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.forward_features(x)
        return self.upsample(feats[-1]), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.forward_features(x)[-1])


@register_arch("rrdbnet", RRDBNetConfig, kind="generator", family="rrdb")
def rrdbnet(config: RRDBNetConfig) -> RRDBNet:
    return RRDBNet(config)
