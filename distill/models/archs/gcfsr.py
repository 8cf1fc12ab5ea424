"""GCFSR, the generative and controllable face SR generator, in pure PyTorch.

Written after the official code of He et al., "GCFSR: a Generative and Controllable Face Super Resolution Method
Without Facial and GAN Priors" (CVPR 2022), https://github.com/hejingwenhejingwen/GCFSR
``basicsr/archs/gcfsr_arch.py`` (class ``GCFSR``). Our own implementation; module and parameter names are the
official ones, so the published checkpoints (``params_ema`` holds the generator) load with ``strict=True``
(``gankd.distill.models.importers.gcfsr`` reads them).

Layout: an encoder (``conv_body_first`` at full resolution, ``conv_body_down`` halving down to 16x16) whose feature at
each resolution 16..out_size becomes a ``condition_shift``; the 16x16 feature goes through ``final_down1/2`` and
``final_linear`` to the style codes (``num_latent`` of them) and through ``final_conv`` into a StyleGAN2 decoder
(16x16 -> out_size) whose second conv of every resolution is modulated as
``out * s1 + shift * s2`` with ``(s1, s2)`` = ``condition_scale1/2(in_size)`` normalised to unit length.

Facts followed, and where we differ:

* Conditioning. ``in_size = scale / cond_norm`` with ``scale`` the down/up factor of the input (4..64), computed
  inside the graph by ``forward``. The official 1024 model (``options/train_gcfsr.yml``: ``downsample_list``
  [64, 64, 64, 64, 32, 32, 16, 16, 8, 4], ``cond_norm: 64.``) and its inference script (``in_size = scale / 64.``)
  agree on 64, the default here. The 512 options (``train_gcfsr_gan.yml``) use factors 4..32 with
  ``cond_norm: 32.``: set ``cond_norm=32`` for that model. We follow the training options of the model at hand.
  ``forward_cond(lq, in_size)`` takes ``in_size`` directly, as the official ``forward`` does.
* Noise. The official StyleConvs add ``weight * N(0, 1)`` noise drawn at every call (its stored ``noises.noise*``
  buffers have StyleGAN2's shapes, not GCFSR's, so ``randomize_noise=False`` cannot run there). Our ``forward`` is
  deterministic: the noise is zero (its mean), so the noise strengths ``*.weight`` of shape [1] and the buffers are
  kept for the key names but do not enter the graph. Expect small differences from the official sampled outputs.
* Layers. The official code builds on BasicSR's StyleGAN2 layers; ours are StyleGAN2's from ``stylegan2.py``, with
  the FIR kernels kept out of the state dict and, upsampling, the blur applied after demodulation, as the official
  modules do (``kernel_in_state_dict=False``, ``blur_demodulated=True``).
* Modulated convs run in the "non-fused" form (scale the activations, one shared conv, demodulate the output),
  which is the same function as the official grouped conv but keeps ONNX's Conv ``group`` independent of the
  batch size, so the exported graph has a dynamic batch axis.
* Width. ``narrow`` multiplies every channel count (rounded, at least 1; the official code truncates, which is the
  same at narrow 1). The official ``final_linear`` hard-codes 2*4*512 inputs, right only at narrow 1; ours uses the
  actual ``channels[4] // 2 * 16``.
* The forward returns the image only (no clamp), not the official ``(image, latents)`` pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from gankd.distill.models.registry import register_arch

from .ops import FusedLeakyReLU

# GCFSR's decoder is StyleGAN2's: same parameters and arithmetic as the official GCFSR layers (see module doc)
from .stylegan2 import ConvLayer, EqualLinear, ModulatedConv2d, ToRGB, stylegan2_channels

MIN_OUT_SIZE, MAX_OUT_SIZE = 16, 1024


@dataclass(frozen=True)
class GCFSRConfig:
    """The official ``GCFSR`` constructor's options (defaults: the published 1024 model) plus ``cond_norm``."""

    out_size: int = 1024
    num_style_feat: int = 512
    channel_multiplier: float = 2
    resample_kernel: tuple[int, ...] = (1, 3, 3, 1)
    narrow: float = 1.0
    cond_norm: float = 64.0  # in_size = scale / cond_norm; 64 for the 1024 model, 32 for the 512 one

    def __post_init__(self):
        object.__setattr__(self, "resample_kernel", tuple(self.resample_kernel))  # JSON gives lists
        size = self.out_size
        if not isinstance(size, int) or size < MIN_OUT_SIZE or size > MAX_OUT_SIZE or size & (size - 1):
            raise ValueError(f"out_size must be a power of two in [{MIN_OUT_SIZE}, {MAX_OUT_SIZE}], got {size!r}")
        if not isinstance(self.num_style_feat, int) or self.num_style_feat < 1:
            raise ValueError(f"num_style_feat must be a positive integer, got {self.num_style_feat!r}")
        for name in ("channel_multiplier", "narrow", "cond_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not self.resample_kernel or any(not isinstance(v, int) for v in self.resample_kernel):
            raise ValueError(f"resample_kernel must be a list of integers, got {list(self.resample_kernel)}")

    @property
    def log_size(self) -> int:
        return self.out_size.bit_length() - 1

    @property
    def num_latent(self) -> int:
        return (self.log_size - 2) * 2 - 2

    def channels(self) -> dict[int, int]:
        """Channels per resolution 4..1024 (StyleGAN2's table, as the official code), after ``channel_multiplier``
        and ``narrow``."""
        return stylegan2_channels(MAX_OUT_SIZE, self.channel_multiplier, self.narrow)


# ---------------------------------------------------------------------------------------------------- layers


def _unit_pair(scale1: Tensor, scale2: Tensor) -> tuple[Tensor, Tensor]:
    inv_norm = torch.rsqrt(scale1 ** 2 + scale2 ** 2 + 1e-8)
    return scale1 * inv_norm, scale2 * inv_norm


class StyleConv(nn.Module):
    """Modulated conv -> (noise, zero here) -> [conditional scale/shift] -> bias + leaky ReLU. ``weight`` is the
    official noise strength, kept for the key names (the noise is zero, so it does not enter the graph). Not
    StyleGAN2's ``StyledConv``: the condition enters between conv and activation, and the keys differ."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool = False,
                 resample_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat, upsample=upsample,
                                              blur_kernel=resample_kernel, kernel_in_state_dict=False,
                                              blur_demodulated=True)
        self.weight = nn.Parameter(torch.zeros(1))
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, condition: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        out = self.modulated_conv(x, style)
        if condition is not None:
            scale1, scale2, shift = condition
            scale1, scale2 = _unit_pair(scale1, scale2)
            out = out * scale1[:, :, None, None] + shift * scale2[:, :, None, None]
        return self.activate(out)


# ---------------------------------------------------------------------------------------------------- the generator


class GCFSR(nn.Module):
    def __init__(self, config: GCFSRConfig):
        super().__init__()
        self.config = config
        ch, log_size, kernel = config.channels(), config.log_size, config.resample_kernel
        style_dim, out_size = config.num_style_feat, config.out_size
        # StyleGAN2's layers with the official GCFSR keys: FIR kernels out of the state dict, ToRGB's modulated_conv
        conv = partial(ConvLayer, kernel_size=3, blur_kernel=kernel, kernel_in_state_dict=False)
        to_rgb = partial(ToRGB, blur_kernel=kernel, kernel_in_state_dict=False, conv_name="modulated_conv")

        # encoder: full resolution down to 16x16
        self.conv_body_first = conv(3, ch[out_size])
        self.conv_body_down = nn.ModuleList(conv(ch[2 ** (i + 1)], ch[2 ** i], downsample=True)
                                            for i in range(log_size - 1, 3, -1))
        self.final_conv = conv(ch[16], ch[16])
        self.final_down1 = conv(ch[16], ch[8], downsample=True)
        self.final_down2 = conv(ch[8], max(1, ch[4] // 2), downsample=True)
        self.final_linear = EqualLinear(max(1, ch[4] // 2) * 16, style_dim * config.num_latent, activation=True)

        # conditions, one per resolution out_size .. 16 (the encoder's order)
        resolutions = [2 ** i for i in range(log_size, 3, -1)]
        self.condition_scale1 = nn.ModuleList(EqualLinear(1, ch[r], bias_init=1.0) for r in resolutions)
        self.condition_scale2 = nn.ModuleList(EqualLinear(1, ch[r], bias_init=1.0) for r in resolutions)
        self.condition_shift = nn.ModuleList(conv(ch[r], ch[r], activate=False) for r in resolutions)

        # StyleGAN2 decoder from 16x16
        self.style_conv1 = StyleConv(ch[16], ch[16], style_dim, resample_kernel=kernel)
        self.to_rgb1 = to_rgb(ch[16], style_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        # The official buffers (StyleGAN2 shapes, unused in its forward too); zeros, for the key names only.
        for idx in range((log_size - 4) * 2 + 1):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise{idx}", torch.zeros(1, 1, res, res))
        in_channels = ch[16]
        for i in range(5, log_size + 1):
            out_channels = ch[2 ** i]
            self.style_convs.append(StyleConv(in_channels, out_channels, style_dim, upsample=True,
                                              resample_kernel=kernel))
            self.style_convs.append(StyleConv(out_channels, out_channels, style_dim, resample_kernel=kernel))
            self.to_rgbs.append(to_rgb(out_channels, style_dim, upsample=True))
            in_channels = out_channels

    def _in_size(self, scale: Tensor, like: Tensor) -> Tensor:
        return scale.reshape(-1, 1).to(like.dtype) / self.config.cond_norm

    def _run(self, lq: Tensor, in_size: Tensor) -> tuple[Tensor, Tensor]:
        """(image, last full-resolution feature before the final to-RGB)."""
        in_size = in_size.reshape(-1, 1).to(lq.dtype)
        feats = [self.conv_body_first(lq)]
        for down in self.conv_body_down:
            feats.append(down(feats[-1]))
        # conditions ordered 16x16 first, as the decoder consumes them
        conditions = [(s1(in_size), s2(in_size), shift(feat)) for s1, s2, shift, feat in
                      zip(self.condition_scale1, self.condition_scale2, self.condition_shift, feats)][::-1]
        feat = feats[-1]
        codes = self.final_linear(self.final_down2(self.final_down1(feat)).flatten(1))
        latent = codes.reshape(-1, self.config.num_latent, self.config.num_style_feat)

        out = self.style_conv1(self.final_conv(feat), latent[:, 0], conditions[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            i = 1 + 2 * level
            out = self.style_convs[2 * level](out, latent[:, i])
            out = self.style_convs[2 * level + 1](out, latent[:, i + 1], conditions[level + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip, out

    def forward_cond(self, lq: Tensor, in_size: Tensor) -> Tensor:
        """The official ``forward(x, in_size)`` (zero noise, image only): ``in_size`` = scale / cond_norm, [N, 1]."""
        return self._run(lq, in_size)[0]

    def forward_with_features(self, lq: Tensor, scale: Tensor) -> tuple[Tensor, list[Tensor]]:
        image, feat = self._run(lq, self._in_size(scale, lq))
        return image, [feat]

    def forward_features(self, lq: Tensor, scale: Tensor) -> list[Tensor]:
        """The last full-resolution decoder feature (before the final to-RGB): what feature KD matches."""
        return self.forward_with_features(lq, scale)[1]

    def forward(self, lq: Tensor, scale: Tensor) -> Tensor:
        """``lq``: N x 3 x out x out in [-1, 1], bicubic down by ``scale`` then back up; ``scale``: [N] or [N, 1]
        upscaling factors (4..64). Returns N x 3 x out x out, not clamped."""
        return self._run(lq, self._in_size(scale, lq))[0]


@register_arch("gcfsr", GCFSRConfig, kind="generator", family="gcfsr")
def gcfsr(config: GCFSRConfig) -> GCFSR:
    return GCFSR(config)
