"""Tiny, randomly initialised configs of every registered arch (CPU-fast), their inputs, and a tiny exported SR
artifact."""

from __future__ import annotations

from pathlib import Path

import torch

from gankd.distill import ModelConfig, list_archs
from gankd.distill.models.registry import family_task, get_arch

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
    "span": [
        {"feature_channels": 8, "upscale": 4},
        {"feature_channels": 6, "upscale": 2, "norm": False},  # the no_norm layout (its buffer is in the state)
    ],
    # a foreign teacher: a spandrel PLKSR (CNN, no size requirement) rebuilt from its recorded hyper-parameters
    "spandrel": [{"architecture": "PLKSR", "model_class": "PLKSR", "hyperparameters": {"dim": 8, "n_blocks": 1},
                  "scale": 4}],
    "unet_discriminator_sn": [{"num_feat": 8}],
    "stylegan2_generator": [{"size": 32, "style_dim": 32, "n_mlp": 2, "narrow": 0.0625}],
    "stylegan2_discriminator": [{"size": 32, "narrow": 0.0625}],
    "gcfsr": [{"out_size": 32, "num_style_feat": 32, "narrow": 0.0625}],
}



def tiny_configs() -> list[ModelConfig]:
    missing = set(list_archs()) - set(TINY_KWARGS)
    assert not missing, f"registered archs without a tiny test config: {missing}"
    out = []
    for arch, variants in TINY_KWARGS.items():
        for kwargs in variants:
            task = family_task(get_arch(arch).family)
            scale = kwargs.get("scale", kwargs.get("upscale")) if arch in ("rrdbnet", "srvgg_compact", "span",
                                                                            "spandrel") \
                else None
            out.append(ModelConfig(arch=arch, kwargs=kwargs, task=task, scale=scale,
                                   input_range=(0.0, 1.0) if task == "sr" else (-1.0, 1.0)))
    return out


def config_id(config: ModelConfig) -> str:
    return config.arch + "-" + "-".join(f"{k}{v}" for k, v in config.kwargs.items())


def inputs_for(config: ModelConfig, size: int = 16, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """What the model takes: LR images (sr), (LQ face, scale) (GCFSR), z (StyleGAN2 G), images (discriminators)."""
    gen = torch.Generator().manual_seed(0)
    if config.arch == "stylegan2_generator":
        return (torch.randn(batch, config.kwargs["style_dim"], generator=gen),)
    if config.arch == "gcfsr":
        size = config.kwargs["out_size"]
        return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1, torch.tensor([8.0, 32.0, 16.0, 4.0][:batch])
    if config.kind == "discriminator":
        size = config.kwargs.get("size", 32)
    return (torch.rand(batch, 3, size, size, generator=gen),)


def input_for(config: ModelConfig, size: int = 16, batch: int = 2) -> torch.Tensor:
    """The single image input of an SR generator or a discriminator."""
    return inputs_for(config, size, batch)[0]


def sr_artifact(root: Path, config: ModelConfig, simplify: bool = False) -> Path:
    """A tiny SR model (seeded, output biased off zero so a wrong pipeline shows) saved and exported to ONNX under
    ``root``; returns the artifact folder. The serve tests' shared artifact."""
    from gankd.distill import save_model
    from gankd.export import exporter

    torch.manual_seed(0)
    model = config.build()
    with torch.no_grad():
        model.body[-1].bias.add_(0.5)
    model_dir = save_model(root / "model", model, config)
    exporter.export_model(model_dir, root / "art", exporter.ExportSettings(formats=("onnx",), simplify=simplify),
                          log=lambda _msg: None)
    return root / "art"
