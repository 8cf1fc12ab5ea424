"""rosinality/stylegan2-pytorch checkpoints (``{"g", "d", "g_ema", ..., "args"}``): one of their networks becomes a
gankd StyleGAN2 generator or discriminator (``archs/stylegan2.py``, whose key names are rosinality's).

The options are read off the key names and shapes (after rosinality ``model.py``, MIT, Kim Seonghyeon); what the
weights do not show (``channel_multiplier`` below 64 px, ``lr_mlp``) comes from the saved ``args`` when present.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.archs.stylegan2 import stylegan2_channels
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.weight_files import extract_state_dict, load_state_dict_strict, read_weights

from .common import make_provenance

WHICH = ("g_ema", "g", "d")


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})


def _narrow_and_multiplier(c4: int, c_size: int, size: int, args_multiplier) -> tuple[float, int]:
    narrow = c4 / 512
    if size < 64:  # the multiplier only shows at 64 px and up; take it from the saved args, else the default
        return narrow, int(args_multiplier) if isinstance(args_multiplier, int) else 2
    base = stylegan2_channels(size, channel_multiplier=1, narrow=1.0)[size]  # rosinality's table, multiplier 1
    return narrow, max(1, round(c_size / (base * narrow)))


def rosinality_generator_kwargs(state: dict, source: str, args=None) -> dict:
    """Read StyleGAN2GeneratorConfig options off a rosinality generator state dict."""
    n_mlp = _count(state, r"style\.(\d+)\.weight")
    if not n_mlp or "input.input" not in state or "to_rgb1.conv.weight" not in state:
        raise GankdError(f"{source}: not a rosinality StyleGAN2 generator state dict (no style.N / input.input keys)")
    size = 2 ** (_count(state, r"to_rgbs\.(\d+)\.conv\.weight") + 2)
    c_size = state[f"to_rgbs.{int(math.log2(size)) - 3}.conv.weight"].shape[2] if size > 4 else 0
    narrow, cm = _narrow_and_multiplier(state["input.input"].shape[1], c_size, size,
                                        getattr(args, "channel_multiplier", None))
    lr_mlp = getattr(args, "lr_mlp", None)  # not in the weights: rosinality's default unless args say otherwise
    return {"size": size, "style_dim": int(state["style.1.weight"].shape[1]), "n_mlp": n_mlp,
            "channel_multiplier": cm, "narrow": narrow,
            "lr_mlp": float(lr_mlp) if isinstance(lr_mlp, (int, float)) else 0.01}


def rosinality_discriminator_kwargs(state: dict, source: str, args=None) -> dict:
    """Read StyleGAN2DiscriminatorConfig options off a rosinality discriminator state dict."""
    if "convs.0.0.weight" not in state or "final_linear.1.weight" not in state:
        raise GankdError(f"{source}: not a rosinality StyleGAN2 discriminator state dict "
                         "(no convs.0.0.weight / final_linear.1.weight)")
    size = 2 ** (_count(state, r"convs\.(\d+)\..*") + 1)
    narrow, cm = _narrow_and_multiplier(state["final_linear.1.weight"].shape[1], state["convs.0.0.weight"].shape[0],
                                        size, getattr(args, "channel_multiplier", None))
    return {"size": size, "channel_multiplier": cm, "narrow": narrow}


def import_rosinality(path: str | Path, which: str = "g_ema") -> tuple[nn.Module, ModelConfig]:
    """A rosinality/stylegan2-pytorch checkpoint ({"g", "d", "g_ema", ..., "args"}) -> (model, ModelConfig).

    Read with ``torch.load(weights_only=True)``; the pickled ``argparse.Namespace`` of ``args`` is the one
    non-tensor class allowed (see ``weight_files.read_weights``).
    """
    if which not in WHICH:
        raise GankdError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    path = Path(path)
    source = str(path)
    obj = read_weights(path)
    if not any(isinstance(obj.get(k), dict) for k in WHICH):
        raise GankdError(f"{source} is not a rosinality StyleGAN2 checkpoint (no 'g_ema'/'g'/'d' state dicts; "
                         f"keys: {', '.join(map(str, list(obj)[:5]))})")
    if not isinstance(obj.get(which), dict):
        present = [k for k in WHICH if isinstance(obj.get(k), dict)]
        raise GankdError(f"{source} has no {which!r} state dict; it has {', '.join(present)}")
    state, _ = extract_state_dict(obj[which], source=f"{source}[{which}]", prefer=())
    args = obj.get("args") if isinstance(obj.get("args"), argparse.Namespace) else None
    if which == "d":
        arch, kwargs = "stylegan2_discriminator", rosinality_discriminator_kwargs(state, source, args)
    else:
        arch, kwargs = "stylegan2_generator", rosinality_generator_kwargs(state, source, args)
    provenance = make_provenance("rosinality", path.name, [path], which=which)
    # a D belongs to the same generation task; images live in [-1, 1] on both sides
    config = ModelConfig(arch=arch, kwargs=kwargs, task="generate", scale=None, input_range=(-1.0, 1.0), width=1.0,
                         provenance=provenance)
    model = config.build()
    load_state_dict_strict(model, state, source=f"{source}[{which}]")
    return model, config
