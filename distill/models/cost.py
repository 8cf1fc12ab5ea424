"""Parameter and MAC counts. MACs count convolutions and matrix products, the way SR papers report GMACs: per
output element, in_channels/groups x kernel area multiply-accumulates. Counted by torch's FlopCounterMode on the
meta device, so functional convolutions (StyleGAN2's modulated convs) count too, and even a 1024x1024 input of a
16.7M-parameter teacher costs no memory and no time. Also the interleaved latency timer every report and benchmark
uses (``measure_interleaved``), and the CPU description every timing is quoted with (``cpu_description``).
"""

from __future__ import annotations


import torch
from torch import nn

from gankd.serve.cpu import SPEED_FLAGS, cpu_description, cpu_line, cpuinfo_blocks, read_cpuinfo  # noqa: F401

from gankd.distill.errors import GankdError


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


def measure_interleaved(calls, *, warmup_ms: float, duration_s: float | None, iterations: int | None,
                        clock=None) -> list[list[float]]:
    """Latencies (ms) of each call: a warm-up per call by time, then rounds that run every call once in turn, so
    machine-wide slowdowns (a shared, noisy host) hit every model alike and their ratios hold. Exactly
    ``iterations`` rounds when given, else rounds until ``duration_s`` × len(calls) seconds have passed."""
    import time

    clock = clock or time.perf_counter
    if (duration_s is None) == (iterations is None):
        raise GankdError("give either a duration or a number of iterations")
    for call in calls:
        start = clock()
        call()
        while (clock() - start) * 1e3 < warmup_ms:
            call()
    latencies: list[list[float]] = [[] for _ in calls]
    start = clock()
    rounds = 0
    while True:
        for i, call in enumerate(calls):
            begin = clock()
            call()
            latencies[i].append((clock() - begin) * 1e3)
        rounds += 1
        if iterations is not None and rounds >= iterations:
            break
        if duration_s is not None and clock() - start >= duration_s * len(calls):
            break
    return latencies
