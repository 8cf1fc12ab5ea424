"""Parameter and MAC counts. MACs count convolutions (and linear layers), the way SR papers report GMACs:
per output element, in_channels/groups x kernel area multiply-accumulates. Measured on the meta device, so even a
1024x1024 input of a 16.7M-parameter teacher costs no memory and no time.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (N, C, H, W), or at several input shapes given
    as a tuple of shapes (GCFSR: ((N, 3, S, S), (N,)); StyleGAN2: ((N, style_dim),))."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size)
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    # Measurement only: the model's own feature interface stays hook-free (STYLE.md 6).
    meta = _to_meta(model)
    handles = [m.register_forward_hook(conv_hook) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in meta.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            shapes = input_shape if isinstance(input_shape[0], tuple) else (input_shape,)
            meta(*(torch.empty(shape, device="meta") for shape in shapes))
    finally:
        for handle in handles:
            handle.remove()
    return total


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    if any(p.is_meta for p in model.parameters()):
        return model.eval()
    config = getattr(model, "config", None)
    if config is not None:  # rebuild: a spectral-norm module that has run forward cannot be deep-copied
        with torch.device("meta"):
            return type(model)(config).eval()
    return copy.deepcopy(model).to("meta").eval()


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x64x64' -> (1, 3, 64, 64)."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must look like NxCxHxW with positive integers (e.g. 1x3x64x64), got {text!r}")
    return shape
