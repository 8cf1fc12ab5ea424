"""StyleGAN2 generator and discriminator in pure PyTorch, loadable from rosinality checkpoints.

Written after rosinality/stylegan2-pytorch ``model.py`` (MIT, Kim Seonghyeon), itself a port of NVlabs StyleGAN2
(Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020). Module and parameter names
follow rosinality's, so its ``g_ema``/``g``/``d`` state dicts load with ``strict=True`` (noise buffers and blur
kernels included); ``gankd.distill.models.importers.rosinality`` reads those checkpoints. The layers (``Blur`` ..
``ToRGB``, ``ConvLayer``) also build GCFSR (``gcfsr.py``), whose official keys they give with their
``kernel_in_state_dict``/``conv_name`` options. Differences that do not touch the weights:

* ``forward(z)`` is deterministic (stored noise, no truncation, no mixing) so export sees a clean graph; truncation
  and style mixing live in ``StyleGAN2Sampler``, and ``PsiGenerator`` exports psi as a graph input.
* The modulated conv scales activations by the style and the output by the demodulation coefficients around one
  shared conv (rosinality's ``fused=False`` formulation), instead of a grouped conv with ``groups=batch``: the same
  function, but the batch stays a dynamic axis in ONNX.
* The discriminator's minibatch-stddev group is the largest divisor of the batch not above ``stddev_group`` (so any
  batch size works; rosinality needs batch % 4 == 0 or batch < 4). Equal to rosinality whenever it runs.
* ``narrow`` scales every channel count (as GFPGAN's StyleGAN2GeneratorClean): how students get width C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankd.distill.errors import GankdError
from gankd.distill.models.registry import register_arch

from .ops import FusedLeakyReLU, fused_leaky_relu, make_kernel, upfirdn2d

# rosinality's channel table (at narrow=1); sizes of 64 and up scale with channel_multiplier
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512}
_MULTIPLIED_CHANNELS = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
MIN_SIZE, MAX_SIZE = 8, 1024
NOISE_MODES = ("const", "random", "none")


def stylegan2_channels(size: int, channel_multiplier: int, narrow: float) -> dict[int, int]:
    """Channels per resolution 4..size, scaled by ``narrow`` and rounded (at least 1)."""
    table = {**_BASE_CHANNELS, **{r: c * channel_multiplier for r, c in _MULTIPLIED_CHANNELS.items()}}
    return {r: max(1, round(c * narrow)) for r, c in table.items() if r <= size}


def _check_common(size, channel_multiplier, narrow, blur_kernel) -> None:
    if not isinstance(size, int) or size < MIN_SIZE or size > MAX_SIZE or size & (size - 1):
        raise ValueError(f"size must be a power of 2 from {MIN_SIZE} to {MAX_SIZE}, got {size!r}")
    if not isinstance(channel_multiplier, int) or isinstance(channel_multiplier, bool) or channel_multiplier < 1:
        raise ValueError(f"channel_multiplier must be a positive integer, got {channel_multiplier!r}")
    if not isinstance(narrow, (int, float)) or isinstance(narrow, bool) or not narrow > 0:
        raise ValueError(f"narrow must be a positive number (fraction of the channels), got {narrow!r}")
    if len(blur_kernel) < 2 or not all(isinstance(v, (int, float)) and v >= 0 for v in blur_kernel) \
            or sum(blur_kernel) <= 0:
        raise ValueError(f"blur_kernel must be 2 or more non-negative taps with a positive sum, "
                         f"got {list(blur_kernel)!r}")


def _as_tuple(config, name: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of numbers, got {value!r}")
    object.__setattr__(config, name, tuple(value))  # JSON gives lists back; the frozen config keeps a tuple


@dataclass(frozen=True)
class StyleGAN2GeneratorConfig:
    size: int = 256
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    narrow: float = 1.0
    lr_mlp: float = 0.01
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)

    def __post_init__(self):
        _as_tuple(self, "blur_kernel")
        _check_common(self.size, self.channel_multiplier, self.narrow, self.blur_kernel)
        for name in ("style_dim", "n_mlp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.lr_mlp, (int, float)) or not self.lr_mlp > 0:
            raise ValueError(f"lr_mlp must be a positive number, got {self.lr_mlp!r}")


@dataclass(frozen=True)
class StyleGAN2DiscriminatorConfig:
    size: int = 256
    channel_multiplier: int = 2
    narrow: float = 1.0
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)
    stddev_group: int = 4

    def __post_init__(self):
        _as_tuple(self, "blur_kernel")
        _check_common(self.size, self.channel_multiplier, self.narrow, self.blur_kernel)
        if not isinstance(self.stddev_group, int) or isinstance(self.stddev_group, bool) or self.stddev_group < 0:
            raise ValueError(f"stddev_group must be a non-negative integer (0: no minibatch-stddev channel, as "
                             f"GCFSR's StyleGAN2Discriminator_no_std), got {self.stddev_group!r}")


# ------------------------------------------------------------------------------------------------- layers


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored at N(0, 1/lr_mul), scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class Blur(nn.Module):
    """FIR filter with padding; after a x2 transposed conv the kernel is scaled by 4 to keep the gain.

    ``kernel_in_state_dict``: rosinality saves the FIR kernel as a buffer (its checkpoints carry ``*.kernel`` keys);
    the official GCFSR (BasicSR's ``UpFirDnSmooth``/``UpFirDnUpsample``) keeps it out of the state dict.
    """

    def __init__(self, kernel, pad: tuple[int, int], upsample_factor: int = 1, kernel_in_state_dict: bool = True):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor ** 2, persistent=kernel_in_state_dict)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """Zero insertion + FIR filter (gain factor^2); ``kernel_in_state_dict`` as for ``Blur``."""

    def __init__(self, kernel, factor: int = 2, kernel_in_state_dict: bool = True):
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2, persistent=kernel_in_state_dict)
        p = self.kernel.shape[0] - factor
        self.factor, self.pad = factor, ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv (optionally x2 upsampling), with weight demodulation.

    Upsampling, rosinality blurs the transposed conv's output and then demodulates; the official GCFSR demodulates
    the weights and blurs last (``blur_demodulated=True``). The same function; the flag keeps each family's float
    rounding, so outputs stay bit-identical to the earlier per-family layers. ``kernel_in_state_dict`` as for
    ``Blur``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel=(1, 3, 3, 1), kernel_in_state_dict: bool = True,
                 blur_demodulated: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.upsample, self.demodulate, self.blur_demodulated = upsample, demodulate, blur_demodulated
        if upsample:
            p = (len(blur_kernel) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=2,
                             kernel_in_state_dict=kernel_in_state_dict)
        self.scale = 1 / math.sqrt(in_ch * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        style = self.modulation(w)  # N x in_ch
        weight = self.weight[0] * self.scale  # out x in x k x k
        x = x * style[:, :, None, None]
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            if not self.blur_demodulated:
                out = self.blur(out)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # |W * s| per output channel: sum_i s_i^2 * sum_k W_oik^2
            demod = torch.rsqrt(style.pow(2) @ weight.pow(2).sum((2, 3)).t() + 1e-8)  # N x out
            out = out * demod[:, :, None, None]
        if self.upsample and self.blur_demodulated:
            out = self.blur(out)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        return x if noise is None else x + self.weight * noise


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch_like: Tensor) -> Tensor:
        return self.input.expand(batch_like.shape[0], -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB + bias, plus the (upsampled) skip. ``conv_name``: the conv's attribute, ``conv`` in
    rosinality, ``modulated_conv`` in the official GCFSR (its state-dict keys); ``kernel_in_state_dict`` as for
    ``Blur``."""

    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True, blur_kernel=(1, 3, 3, 1),
                 kernel_in_state_dict: bool = True, conv_name: str = "conv"):
        super().__init__()
        self.upsample = Upsample(blur_kernel, kernel_in_state_dict=kernel_in_state_dict) if upsample else None
        self.conv_name = conv_name
        self.add_module(conv_name, ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False))
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = getattr(self, self.conv_name)(x, w) + self.bias
        if skip is None:
            return out
        return out + (skip if self.upsample is None else self.upsample(skip))


# ---------------------------------------------------------------------------------------------- generator


class StyleGAN2Generator(nn.Module):
    """Mapping network ``style`` + synthesis network; ``forward(z)`` uses the stored noise buffers."""

    def __init__(self, config: StyleGAN2GeneratorConfig):
        super().__init__()
        self.config = config
        self.size, self.style_dim = config.size, config.style_dim
        self.log_size = int(math.log2(config.size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.channels = stylegan2_channels(config.size, config.channel_multiplier, config.narrow)
        sd, blur = config.style_dim, config.blur_kernel
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(sd, sd, lr_mul=config.lr_mlp, activation=True)
                                                  for _ in range(config.n_mlp)])
        c4 = self.channels[4]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, 3, sd, blur_kernel=blur)
        self.to_rgb1 = ToRGB(c4, sd, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for idx in range(self.num_layers):
            res = 2 ** ((idx + 5) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, res, res))
        in_ch = c4
        for i in range(3, self.log_size + 1):
            out_ch = self.channels[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, sd, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_ch, out_ch, 3, sd, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_ch, sd, blur_kernel=blur))
            in_ch = out_ch

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, seed: int = 0) -> Tensor:
        """The mean w of ``n`` seeded z draws: the centre truncation pulls towards. 1 x style_dim."""
        z = torch.randn(n, self.style_dim, generator=torch.Generator().manual_seed(seed))
        return self.mapping(z.to(self.input.input.device)).mean(0, keepdim=True)

    def _noise(self, noise, noise_mode: str, generator: torch.Generator | None, ref: Tensor) -> list:
        if noise is not None:
            if len(noise) != self.num_layers:
                raise GankdError(f"noise must be a list of {self.num_layers} tensors (or None), got {len(noise)}")
            return list(noise)
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "none":
            return [None] * self.num_layers
        if noise_mode == "random":
            sizes = [2 ** ((i + 5) // 2) for i in range(self.num_layers)]
            return [torch.randn(ref.shape[0], 1, s, s, generator=generator, device=ref.device, dtype=ref.dtype)
                    for s in sizes]
        raise GankdError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")

    def _synthesis(self, ws: Tensor, noise=None, noise_mode: str = "const",
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if ws.ndim == 2:
            ws = ws.unsqueeze(1).expand(-1, self.n_latent, -1)
        if not torch.jit.is_tracing() and tuple(ws.shape[1:]) != (self.n_latent, self.style_dim):
            raise GankdError(f"ws must be N x {self.style_dim} or N x {self.n_latent} x {self.style_dim}, "
                             f"got {list(ws.shape)}")
        noise = self._noise(noise, noise_mode, generator, ws)
        out = self.conv1(self.input(ws), ws[:, 0], noise[0])
        skip = self.to_rgb1(out, ws[:, 1])
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1
            out = self.convs[2 * k](out, ws[:, i], noise[i])
            out = self.convs[2 * k + 1](out, ws[:, i + 1], noise[i + 1])
            skip = to_rgb(out, ws[:, i + 2], skip)
        return skip, out

    def synthesis(self, ws: Tensor, noise: list[Tensor] | None = None, noise_mode: str = "const",
                  generator: torch.Generator | None = None) -> Tensor:
        """Image from w (N x style_dim) or per-layer ws (N x n_latent x style_dim). ``noise`` (a list of
        ``num_layers`` tensors) overrides ``noise_mode``: "const" (stored buffers), "random" or "none"."""
        return self._synthesis(ws, noise, noise_mode, generator)[0]

    def forward_with_features(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Image and [the full-resolution feature map fed to the last ToRGB]."""
        image, feature = self._synthesis(self.mapping(z))
        return image, [feature]

    def forward_features(self, z: Tensor) -> list[Tensor]:
        return self.forward_with_features(z)[1]

    def forward(self, z: Tensor) -> Tensor:
        return self._synthesis(self.mapping(z))[0]


class StyleGAN2Sampler:
    """Sampling tricks outside ``forward``: truncation (w = avg + psi (w - avg)), noise mode and style mixing.

    With probability ``mixing_prob`` a batch takes ws from a second z after a crossover layer in
    [1, n_latent - 1]; every draw comes from ``generator`` (a torch.Generator) when given.
    """

    def __init__(self, generator: StyleGAN2Generator, truncation: float = 1.0, noise_mode: str = "const",
                 mixing_prob: float = 0.0, latent_avg: Tensor | None = None):
        if noise_mode not in NOISE_MODES:
            raise GankdError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        if not 0.0 <= mixing_prob <= 1.0:
            raise GankdError(f"mixing_prob must be in [0, 1], got {mixing_prob!r}")
        self.generator, self.truncation = generator, float(truncation)
        self.noise_mode, self.mixing_prob = noise_mode, float(mixing_prob)
        self.latent_avg = latent_avg

    def _ws(self, z: Tensor, rng: torch.Generator | None) -> Tensor:
        g = self.generator
        w = g.mapping(z)
        ws = w.unsqueeze(1).expand(-1, g.n_latent, -1)
        device = rng.device if rng is not None else z.device  # draws happen where the torch.Generator lives
        if self.mixing_prob > 0 and torch.rand((), generator=rng, device=device).item() < self.mixing_prob:
            z2 = torch.randn(z.shape, generator=rng, device=device).to(z)
            cut = int(torch.randint(1, g.n_latent, (), generator=rng, device=device))
            w2 = g.mapping(z2).unsqueeze(1).expand(-1, g.n_latent - cut, -1)
            ws = torch.cat([ws[:, :cut], w2], dim=1)
        return ws

    def __call__(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        ws = self._ws(z, generator)
        if self.truncation != 1.0:
            if self.latent_avg is None:
                self.latent_avg = self.generator.mean_latent()
            avg = self.latent_avg.to(ws).view(1, 1, -1)
            ws = avg + self.truncation * (ws - avg)
        return self.generator.synthesis(ws, noise_mode=self.noise_mode, generator=generator)


class PsiGenerator(nn.Module):
    """``forward(z, psi)``: a generator with truncation psi as a graph input (psi of shape [N] or [N, 1])."""

    def __init__(self, generator: StyleGAN2Generator, latent_avg: Tensor | None = None):
        super().__init__()
        self.generator = generator
        avg = generator.mean_latent() if latent_avg is None else latent_avg.detach()
        self.register_buffer("latent_avg", avg.reshape(1, generator.style_dim).clone())

    def forward(self, z: Tensor, psi: Tensor) -> Tensor:
        w = self.generator.mapping(z)
        w = self.latent_avg + psi.reshape(-1, 1).to(w) * (w - self.latent_avg)
        return self.generator.synthesis(w)


# ------------------------------------------------------------------------------------------ discriminator


class ConvLayer(nn.Sequential):
    """[Blur] + EqualConv2d + [FusedLeakyReLU]; a Sequential so the keys are ``N.weight`` as in rosinality and the
    official GCFSR. With an activation, the bias lives in the activation. ``kernel_in_state_dict`` as for ``Blur``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False,
                 blur_kernel=(1, 3, 3, 1), bias: bool = True, activate: bool = True,
                 kernel_in_state_dict: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2), kernel_in_state_dict=kernel_in_state_dict))
        stride, padding = (2, 0) if downsample else (1, kernel_size // 2)
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_ch, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, blur_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, blur_kernel=blur_kernel, activate=False,
                              bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class StyleGAN2Discriminator(nn.Module):
    """Residual D with minibatch stddev; ``forward(img) -> N x 1`` logits."""

    def __init__(self, config: StyleGAN2DiscriminatorConfig):
        super().__init__()
        self.config = config
        ch = stylegan2_channels(config.size, config.channel_multiplier, config.narrow)
        self.channels = ch
        log_size = int(math.log2(config.size))
        blocks: list[nn.Module] = [ConvLayer(3, ch[config.size], 1)]
        for i in range(log_size, 2, -1):
            blocks.append(ResBlock(ch[2 ** i], ch[2 ** (i - 1)], config.blur_kernel))
        self.convs = nn.Sequential(*blocks)
        self.stddev_group = config.stddev_group
        self.final_conv = ConvLayer(ch[4] + (1 if config.stddev_group else 0), ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation=True),
                                          EqualLinear(ch[4], 1))

    def _stddev_group(self, batch: int) -> int:
        return max(g for g in range(1, min(batch, self.stddev_group) + 1) if batch % g == 0)

    def minibatch_stddev(self, x: Tensor) -> Tensor:
        """Append one channel: the mean std over groups of samples (strided groups, as rosinality's view)."""
        n, c, h, w = x.shape
        group = self._stddev_group(n)
        std = torch.sqrt(x.view(group, -1, c, h, w).var(0, unbiased=False) + 1e-8)  # n/group x c x h x w
        std = std.mean((1, 2, 3), keepdim=True).repeat(group, 1, h, w)
        return torch.cat([x, std], dim=1)

    def forward_with_features(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the last-layer feature (output of ``final_linear[0]``, N x channels[4])."""
        out = self.convs(img)
        out = self.final_conv(self.minibatch_stddev(out) if self.stddev_group else out)
        feature = self.final_linear[0](out.flatten(1))
        return self.final_linear[1](feature), feature

    def forward(self, img: Tensor) -> Tensor:
        return self.forward_with_features(img)[0]


@register_arch("stylegan2_generator", StyleGAN2GeneratorConfig, kind="generator", family="stylegan2")
def stylegan2_generator(config: StyleGAN2GeneratorConfig) -> StyleGAN2Generator:
    return StyleGAN2Generator(config)


@register_arch("stylegan2_discriminator", StyleGAN2DiscriminatorConfig, kind="discriminator", family="stylegan2_d")
def stylegan2_discriminator(config: StyleGAN2DiscriminatorConfig) -> StyleGAN2Discriminator:
    return StyleGAN2Discriminator(config)
