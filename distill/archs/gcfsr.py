"""GCFSR, the generative and controllable face SR generator, in pure PyTorch.

Written after the official code of He et al., "GCFSR: a Generative and Controllable Face Super Resolution Method
Without Facial and GAN Priors" (CVPR 2022), https://github.com/hejingwenhejingwen/GCFSR
``basicsr/archs/gcfsr_arch.py`` (class ``GCFSR``). Our own implementation; module and parameter names are the
official ones, so the published checkpoints (``params_ema`` holds the generator) load with ``strict=True``.

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
* Modulated convs run in the "non-fused" form (scale the activations, one shared conv, demodulate the output),
  which is the same function as the official grouped conv but keeps ONNX's Conv ``group`` independent of the
  batch size, so the exported graph has a dynamic batch axis.
* Width. ``narrow`` multiplies every channel count (rounded, at least 1; the official code truncates, which is the
  same at narrow 1). The official ``final_linear`` hard-codes 2*4*512 inputs, right only at narrow 1; ours uses the
  actual ``channels[4] // 2 * 16``.
* The forward returns the image only (no clamp), not the official ``(image, latents)`` pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GankdError
from ..registry import register_arch
from .ops import FusedLeakyReLU, make_kernel
from .stylegan2 import EqualConv2d, EqualLinear  # same parameters and arithmetic as the official GCFSR ones

# StyleGAN2's channel table (before channel_multiplier and narrow), as in the official code.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
_MULTIPLIED = (64, 128, 256, 512, 1024)  # the resolutions whose width channel_multiplier scales
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
        """Channels per resolution, after ``channel_multiplier`` and ``narrow``."""
        return {res: max(1, round(base * (self.channel_multiplier if res in _MULTIPLIED else 1) * self.narrow))
                for res, base in _BASE_CHANNELS.items()}


# ---------------------------------------------------------------------------------------------------- layers


class Blur(nn.Module):
    """``upfirdn2d`` (up 1 or 2, down 1) with a fixed FIR kernel for ``channels`` channels: the official
    ``UpFirDnSmooth`` (up 1) and ``UpFirDnUpsample`` (up 2). Same result as ``ops.upfirdn2d``, but the depthwise
    weight is a static [C, 1, k, k] buffer: ``ops.upfirdn2d`` builds it with ``expand(x.shape[1], ...)``, which the
    TorchScript ONNX exporter cannot give a static shape once the batch axis is dynamic. Non-persistent, as the
    official modules keep their kernel out of the state dict."""

    def __init__(self, channels: int, kernel: tuple[int, ...], pad: tuple[int, int], up: int = 1,
                 gain: float = 1.0):
        super().__init__()
        fir = torch.flip(make_kernel(kernel) * gain, [0, 1])  # upfirdn2d correlates with the flipped kernel
        self.register_buffer("weight", fir[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.pad, self.up, self.channels = pad, up, channels

    def forward(self, x: Tensor) -> Tensor:
        if self.up > 1:  # zero insertion: each pixel followed by up - 1 zeros along both axes
            n, c, h, w = x.shape
            x = F.pad(x[:, :, :, None, :, None], (0, self.up - 1, 0, 0, 0, self.up - 1))
            x = x.reshape(n, c, h * self.up, w * self.up)
        pad0, pad1 = self.pad
        return F.conv2d(F.pad(x, (pad0, pad1, pad0, pad1)), self.weight, groups=self.channels)


def _smooth_pads(kernel_len: int, kernel_size: int, mode: str) -> tuple[int, int]:
    """Pads of the blur around a stride-2 conv (``kernel_size``) that up- or downsamples, as StyleGAN2 sets them."""
    if mode == "upsample":
        pad = (kernel_len - 2) - (kernel_size - 1)
        return (pad + 1) // 2 + 1, pad // 2 + 1
    pad = (kernel_len - 2) + (kernel_size - 1)
    return (pad + 1) // 2, pad // 2


class ConvLayer(nn.Sequential):
    """[blur] -> EqualConv2d -> [FusedLeakyReLU]; indices as the official Sequential (so keys are ``0.weight``,
    ``1.bias`` or, downsampling, ``1.weight``, ``2.bias``). With an activation, the bias lives in the activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, downsample: bool = False,
                 resample_kernel: tuple[int, ...] = (1, 3, 3, 1), activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            pads = _smooth_pads(len(resample_kernel), kernel_size, "downsample")
            layers.append(Blur(in_channels, resample_kernel, pads))
        stride, padding = (2, 0) if downsample else (1, kernel_size // 2)
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels))
        super().__init__(*layers)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated conv. Computed as conv(x * style) * demod with one weight shared by the batch: the same
    function as the official per-sample grouped conv, with a batch-independent graph (ONNX dynamic batch)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, upsample: bool = False, resample_kernel: tuple[int, ...] = (1, 3, 3, 1),
                 eps: float = 1e-8):
        super().__init__()
        self.modulation = EqualLinear(num_style_feat, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.padding = kernel_size // 2
        if upsample:
            # after a stride-2 transposed conv: the filter carries the factor^2 gain of zero insertion
            pads = _smooth_pads(len(resample_kernel), kernel_size, "upsample")
            self.smooth = Blur(out_channels, resample_kernel, pads, gain=4)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        style = self.modulation(style)  # [b, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt(style.square() @ weight.square().sum((2, 3)).t() + self.eps)  # [b, out]
            out = out * demod[:, :, None, None]
        return self.smooth(out) if self.upsample else out


def _unit_pair(scale1: Tensor, scale2: Tensor) -> tuple[Tensor, Tensor]:
    inv_norm = torch.rsqrt(scale1 ** 2 + scale2 ** 2 + 1e-8)
    return scale1 * inv_norm, scale2 * inv_norm


class StyleConv(nn.Module):
    """Modulated conv -> (noise, zero here) -> [conditional scale/shift] -> bias + leaky ReLU. ``weight`` is the
    official noise strength, kept for the key names (the noise is zero, so it does not enter the graph)."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool = False,
                 resample_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat, upsample=upsample,
                                              resample_kernel=resample_kernel)
        self.weight = nn.Parameter(torch.zeros(1))
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, style: Tensor, condition: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        out = self.modulated_conv(x, style)
        if condition is not None:
            scale1, scale2, shift = condition
            scale1, scale2 = _unit_pair(scale1, scale2)
            out = out * scale1[:, :, None, None] + shift * scale2[:, :, None, None]
        return self.activate(out)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool,
                 resample_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.upsample = None
        if upsample:
            pad = len(resample_kernel) - 2
            self.upsample = Blur(3, resample_kernel, ((pad + 1) // 2 + 1, pad // 2), up=2, gain=4)
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (self.upsample(skip) if self.upsample is not None else skip)
        return out


# ---------------------------------------------------------------------------------------------------- the generator


class GCFSR(nn.Module):
    def __init__(self, config: GCFSRConfig):
        super().__init__()
        self.config = config
        ch, log_size, kernel = config.channels(), config.log_size, config.resample_kernel
        style_dim, out_size = config.num_style_feat, config.out_size

        # encoder: full resolution down to 16x16
        self.conv_body_first = ConvLayer(3, ch[out_size], 3)
        self.conv_body_down = nn.ModuleList(
            ConvLayer(ch[2 ** (i + 1)], ch[2 ** i], 3, downsample=True, resample_kernel=kernel)
            for i in range(log_size - 1, 3, -1))
        self.final_conv = ConvLayer(ch[16], ch[16], 3)
        self.final_down1 = ConvLayer(ch[16], ch[8], 3, downsample=True, resample_kernel=kernel)
        self.final_down2 = ConvLayer(ch[8], max(1, ch[4] // 2), 3, downsample=True, resample_kernel=kernel)
        self.final_linear = EqualLinear(max(1, ch[4] // 2) * 16, style_dim * config.num_latent, activation=True)

        # conditions, one per resolution out_size .. 16 (the encoder's order)
        resolutions = [2 ** i for i in range(log_size, 3, -1)]
        self.condition_scale1 = nn.ModuleList(EqualLinear(1, ch[r], bias_init=1.0) for r in resolutions)
        self.condition_scale2 = nn.ModuleList(EqualLinear(1, ch[r], bias_init=1.0) for r in resolutions)
        self.condition_shift = nn.ModuleList(ConvLayer(ch[r], ch[r], 3, activate=False) for r in resolutions)

        # StyleGAN2 decoder from 16x16
        self.style_conv1 = StyleConv(ch[16], ch[16], style_dim, resample_kernel=kernel)
        self.to_rgb1 = ToRGB(ch[16], style_dim, upsample=False, resample_kernel=kernel)
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
            self.to_rgbs.append(ToRGB(out_channels, style_dim, upsample=True, resample_kernel=kernel))
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


# ---------------------------------------------------------------------------------------------------- students


def gcfsr_student_kwargs(teacher_kwargs: dict, width: float, depth: int | None = None) -> dict:
    """A GCFSR student: the teacher's options with ``narrow`` multiplied by ``width``. Depth is fixed by out_size."""
    if depth is not None:
        raise GankdError(f"gcfsr students cannot change depth (got depth {depth}); its depth is set by out_size")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise GankdError(f"student width must be a positive number, got {width!r}")
    kwargs = dict(teacher_kwargs)
    kwargs["narrow"] = float(kwargs.get("narrow", 1.0)) * float(width)
    return kwargs


# ---------------------------------------------------------------------------------------------------- import

_REQUIRED_KEYS = ("conv_body_first.0.weight", "final_conv.0.weight", "final_linear.weight",
                  "condition_scale1.0.weight", "style_conv1.modulated_conv.modulation.weight",
                  "to_rgb1.modulated_conv.weight")


def detect_gcfsr(state: dict, source: str = "state dict", cond_norm: float = 64.0) -> dict:
    """Read the GCFSR options off the key names and shapes of an official state dict."""
    missing = next((k for k in _REQUIRED_KEYS if k not in state), None)
    if missing is not None:
        raise GankdError(f"{source}: not a GCFSR checkpoint (key {missing!r} is missing)")
    levels = sum(1 for k in state if k.startswith("condition_scale1.") and k.endswith(".weight"))
    log_size = levels + 3
    c16 = int(state["final_conv.0.weight"].shape[0])
    narrow = c16 / 512
    multiplier: float = 2
    if log_size >= 6:  # a 64x64 level exists: its width tells channel_multiplier
        key = f"condition_scale1.{log_size - 6}.weight"
        if key not in state:
            raise GankdError(f"{source}: not a GCFSR checkpoint (key {key!r} is missing)")
        multiplier = int(state[key].shape[0]) / (256 * narrow)
        multiplier = int(round(multiplier)) if abs(multiplier - round(multiplier)) < 1e-6 else multiplier
    if not MIN_OUT_SIZE <= 2 ** log_size <= MAX_OUT_SIZE:
        raise GankdError(f"{source}: {levels} condition levels give out_size {2 ** log_size}, outside "
                         f"[{MIN_OUT_SIZE}, {MAX_OUT_SIZE}]")
    return {"out_size": 2 ** log_size, "num_style_feat": int(state["style_conv1.modulated_conv.modulation.weight"]
                                                              .shape[1]),
            "channel_multiplier": multiplier, "narrow": 1.0 if c16 == 512 else narrow, "cond_norm": float(cond_norm)}


def import_gcfsr(path: str | Path, cond_norm: float = 64.0):
    """An official GCFSR checkpoint (``{"params_ema": G, "params": G}`` or a bare state dict) -> (model, ModelConfig).

    ``cond_norm`` is not stored in the checkpoint: 64 for the published 1024 model, 32 for the 512 one."""
    # imported here: modelio/importers import the arch package, which imports this module
    from ..importers import _provenance
    from ..modelio import ModelConfig
    from ..weights import extract_state_dict, load_state_dict_strict, read_weights

    path = Path(path)
    state, container = extract_state_dict(read_weights(path), source=str(path))
    kwargs = detect_gcfsr(state, str(path), cond_norm)
    config = ModelConfig(arch="gcfsr", kwargs=kwargs, task="face_sr", scale=None, input_range=(-1.0, 1.0),
                         width=1.0, provenance=_provenance("gcfsr", path.name, [path], container=container))
    model = config.build()
    load_state_dict_strict(model, state, source=str(path))
    return model, config
