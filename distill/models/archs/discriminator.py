"""UNetDiscriminatorSN, Real-ESRGAN's U-Net discriminator with spectral normalisation.

Written after BasicSR ``basicsr/archs/discriminator_arch.py`` (Apache-2.0). ``torch.nn.utils.spectral_norm`` keeps
the official key names (``conv1.weight_orig``, ``weight_u``, ``weight_v``) so ``RealESRGAN_x4plus_netD.pth`` loads
strictly. Outputs a per-pixel realness map at the input size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.models.registry import register_arch


@dataclass(frozen=True)
class UNetDiscriminatorSNConfig:
    num_in_ch: int = 3
    num_feat: int = 64
    skip_connection: bool = True

    def __post_init__(self):
        for name in ("num_in_ch", "num_feat"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.2)


def _sn_conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Module:
    with warnings.catch_warnings():
        # The parametrization API renames the keys (parametrizations.weight.original): the old one matches official
        # files.
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False))


class UNetDiscriminatorSN(nn.Module):
    def __init__(self, config: UNetDiscriminatorSNConfig):
        super().__init__()
        self.config = config
        c = config.num_feat
        self.conv0 = nn.Conv2d(config.num_in_ch, c, 3, 1, 1)
        self.conv1 = _sn_conv(c, c * 2, 4, 2, 1)
        self.conv2 = _sn_conv(c * 2, c * 4, 4, 2, 1)
        self.conv3 = _sn_conv(c * 4, c * 8, 4, 2, 1)
        self.conv4 = _sn_conv(c * 8, c * 4, 3, 1, 1)
        self.conv5 = _sn_conv(c * 4, c * 2, 3, 1, 1)
        self.conv6 = _sn_conv(c * 2, c, 3, 1, 1)
        self.conv7 = _sn_conv(c, c, 3, 1, 1)
        self.conv8 = _sn_conv(c, c, 3, 1, 1)
        self.conv9 = nn.Conv2d(c, 1, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[U-Net bottleneck (8C channels at 1/8 size), last feature before the output conv (C channels)]."""
        skip = self.config.skip_connection
        x0 = _lrelu(self.conv0(x))
        x1 = _lrelu(self.conv1(x0))
        x2 = _lrelu(self.conv2(x1))
        x3 = _lrelu(self.conv3(x2))
        up = F.interpolate(x3, scale_factor=2.0, mode="bilinear", align_corners=False)
        x4 = _lrelu(self.conv4(up))
        x4 = x4 + x2 if skip else x4
        x4 = F.interpolate(x4, scale_factor=2.0, mode="bilinear", align_corners=False)
        x5 = _lrelu(self.conv5(x4))
        x5 = x5 + x1 if skip else x5
        x5 = F.interpolate(x5, scale_factor=2.0, mode="bilinear", align_corners=False)
        x6 = _lrelu(self.conv6(x5))
        x6 = x6 + x0 if skip else x6
        out = _lrelu(self.conv8(_lrelu(self.conv7(x6))))
        return [x3, out]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.forward_features(x)
        return self.conv9(feats[-1]), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


@register_arch("unet_discriminator_sn", UNetDiscriminatorSNConfig, kind="discriminator", family="unet_d")
def unet_discriminator_sn(config: UNetDiscriminatorSNConfig) -> UNetDiscriminatorSN:
    return UNetDiscriminatorSN(config)
