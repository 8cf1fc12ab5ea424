"""Shared fixtures: tiny, randomly initialised configs of every registered arch (CPU-fast)."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import ModelConfig, list_archs

# Small enough for a full forward+backward in milliseconds, shaped like the real archs.
TINY_KWARGS = {
    "rrdbnet": [
        {"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8},
        {"scale": 2, "num_feat": 16, "num_block": 1, "num_grow_ch": 8},  # x2plus layout: pixel-unshuffled input
        {"scale": 1, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
    ],
    "srvgg_compact": [
        {"num_feat": 16, "num_conv": 2, "upscale": 4},
        {"num_feat": 8, "num_conv": 1, "upscale": 2, "act_type": "leakyrelu"},
    ],
    "unet_discriminator_sn": [{"num_feat": 8}],
}


def tiny_configs() -> list[ModelConfig]:
    missing = set(list_archs()) - set(TINY_KWARGS)
    assert not missing, f"registered archs without a tiny test config: {missing}"
    out = []
    for arch, variants in TINY_KWARGS.items():
        for kwargs in variants:
            scale = kwargs.get("scale", kwargs.get("upscale")) if arch != "unet_discriminator_sn" else None
            out.append(ModelConfig(arch=arch, kwargs=kwargs, task="sr", scale=scale))
    return out


def config_id(config: ModelConfig) -> str:
    return config.arch + "-" + "-".join(f"{k}{v}" for k, v in config.kwargs.items())


def input_for(config: ModelConfig, size: int = 16, batch: int = 2) -> torch.Tensor:
    """LR input for generators; an HR-sized input (multiple of 8) for the U-Net discriminator."""
    if config.kind == "discriminator":
        size = 32
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine two OpenMP threads can wait on each other for hundreds of ms."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
