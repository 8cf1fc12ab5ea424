"""SRVGGNetCompact, the compact VGG-style SR network of Real-ESRGAN (realesr-animevideov3, realesr-general-x4v3).

Written after BasicSR ``basicsr/archs/srvgg_arch.py`` (Apache-2.0) with the same ``body.N`` keys, so official
weights load with ``strict=True``. Body: conv, act, num_conv x (conv, act), conv to out*upscale^2; pixel shuffle;
plus the nearest-upsampled input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.models.registry import register_arch

ACT_TYPES = ("prelu", "relu", "leakyrelu")


@dataclass(frozen=True)
class SRVGGNetCompactConfig:
    num_in_ch: int = 3
    num_out_ch: int = 3
    num_feat: int = 64
    num_conv: int = 16
    upscale: int = 4
    act_type: str = "prelu"

    def __post_init__(self):
        if self.act_type not in ACT_TYPES:
            raise ValueError(f"act_type must be one of {ACT_TYPES}, got {self.act_type!r}")
        for name in ("num_in_ch", "num_out_ch", "num_feat", "upscale"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_conv, int) or self.num_conv < 0:
            raise ValueError(f"num_conv must be a non-negative integer, got {self.num_conv!r}")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    return nn.LeakyReLU(negative_slope=0.1)


class SRVGGNetCompact(nn.Module):
    def __init__(self, config: SRVGGNetCompactConfig):
        super().__init__()
        self.config = config
        c = config.num_feat
        layers: list[nn.Module] = [nn.Conv2d(config.num_in_ch, c, 3, 1, 1), _activation(config.act_type, c)]
        for _ in range(config.num_conv):
            layers += [nn.Conv2d(c, c, 3, 1, 1), _activation(config.act_type, c)]
        layers.append(nn.Conv2d(c, config.num_out_ch * config.upscale**2, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(config.upscale)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last body activation (num_feat channels at LR size), before the conv to out*upscale^2."""
        feat = x
        for layer in self.body[:-1]:
            feat = layer(feat)
        return [feat]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.forward_features(x)
        out = self.upsampler(self.body[-1](feats[-1]))
        return out + F.interpolate(x, scale_factor=float(self.config.upscale), mode="nearest"), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


@register_arch("srvgg_compact", SRVGGNetCompactConfig, kind="generator", family="srvgg")
def srvgg_compact(config: SRVGGNetCompactConfig) -> SRVGGNetCompact:
    return SRVGGNetCompact(config)
