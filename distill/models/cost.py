"""Parameter and MAC counts. MACs count convolutions and matrix products, the way SR papers report GMACs: per
output element, in_channels/groups x kernel area multiply-accumulates. Counted by torch's FlopCounterMode on the
meta device, so functional convolutions (StyleGAN2's modulated convs) count too, and even a 1024x1024 input of a
16.7M-parameter teacher costs no memory and no time. Also the runtime a model is timed in (:func:`latency_runner`);
timings themselves come from ``gankd.serve.timing`` and the CPU line quoted with them from ``gankd.serve.cpu``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gankd.distill.errors import GankdError

LATENCY_GROUP = "gankd.latency"  # entry-point group of the latency runners (pyproject.toml; latency_runner)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (N, C, H, W), or at several input shapes given
    as a tuple of shapes (GCFSR: ((N, 3, S, S), (N,)); StyleGAN2: ((N, style_dim),)).

    Counted by torch's FlopCounterMode over every convolution and matrix product the forward runs (so functional
    convolutions count too: StyleGAN2's modulated convs and FIR filters), halved from FLOPs to MACs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shapes = input_shape if isinstance(input_shape[0], tuple) else (input_shape,)
    counter = FlopCounterMode(display=False)
    try:
        meta = _to_meta(model).requires_grad_(False)
        with torch.no_grad(), counter:
            meta(*(torch.empty(shape, device="meta") for shape in shapes))
    except (RuntimeError, NotImplementedError, AssertionError):
        # foreign code (a spandrel network) that reads tensor values while building or running, or TorchScript
        # modules (the FID Inception) that cannot move to the meta device: count on a real forward instead (slower,
        # same count)
        counter = FlopCounterMode(display=False)
        device = next(model.parameters()).device
        with torch.no_grad(), counter:
            model.eval()(*(torch.zeros(shape, device=device) for shape in shapes))
    return counter.get_total_flops() // 2


def model_input_shapes(config, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The shapes a model takes for a user's NxCxHxW: the image for SR models and U-Net discriminators; the batch N
    of z for StyleGAN2 generators; the image at the model's own size plus N scales for GCFSR; the image at the
    discriminator's size for StyleGAN2 discriminators (their sizes are fixed by the architecture)."""
    from .registry import make_config

    arch = make_config(config.arch, config.kwargs)
    n = input_shape[0]
    if config.arch == "stylegan2_generator":
        return ((n, arch.style_dim),)
    if config.arch == "gcfsr":
        return ((n, 3, arch.out_size, arch.out_size), (n,))
    if config.arch == "stylegan2_discriminator":
        return ((n, 3, arch.size, arch.size),)
    return (tuple(input_shape),)


def example_inputs(config, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Random inputs of :func:`model_input_shapes` (GCFSR scales: x16)."""
    shapes = model_input_shapes(config, input_shape)
    if config.arch == "gcfsr":
        return torch.rand(shapes[0]) * 2 - 1, torch.full(shapes[1], 16.0)
    if config.arch == "stylegan2_generator":
        return (torch.randn(shapes[0]),)
    return tuple(torch.rand(shape) for shape in shapes)


def build_for_counting(config) -> nn.Module:
    """``config.build()`` on the meta device (no memory, no init time) for counting params and MACs; on the CPU for
    foreign code (a spandrel network) that reads tensor values while it builds."""
    try:
        with torch.device("meta"):
            return config.build()
    except RuntimeError:
        return config.build()


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


def latency_runner(backend: str) -> Callable[..., Callable[[], object]]:
    """The runner factory an installed package declares for ``backend`` in the :data:`LATENCY_GROUP` entry-point
    group: ``factory(model, example, threads)`` returns a call that runs ``model`` once on ``example``.

    Why an entry point: timing a model in ONNX Runtime means exporting it, and exporting is gankd.export's job (one
    ONNX path for every caller: ``gankd.export.formats.ort_latency_runner``). gankd.distill never imports
    gankd.export (DESIGN.md: export imports distill, never the reverse), so the search looks the runner up by name
    when it times, and pyproject.toml is the one place where the two packages meet."""
    from importlib.metadata import entry_points

    found = entry_points(group=LATENCY_GROUP, name=backend)
    if not found:
        raise GankdError(f"timing in ONNX Runtime needs gankd.export (entry point {backend!r} of {LATENCY_GROUP!r}), "
                         "which is not installed here: pip install -e . in the gankd checkout")
    return next(iter(found)).load()
