"""Official Real-ESRGAN/BasicSR ``.pth`` checkpoints (``params_ema`` preferred, then ``params``, or a bare state
dict). The architecture and its hyper-parameters are read off the tensor shapes."""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.weight_files import extract_state_dict, load_state_dict_strict, read_weights

from .common import make_provenance, sr_config


def detect_arch(state: dict, source: str = "state dict") -> tuple[str, dict]:
    """Read the arch name and its options off the keys and shapes of an official Real-ESRGAN/BasicSR state dict."""
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        in_ch = state["conv_first.weight"].shape[1]
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("body.")}
        scale_by_in = {3: 4, 12: 2, 48: 1}
        if in_ch not in scale_by_in:
            raise GankdError(f"{source}: RRDBNet with {in_ch} input channels is not a Real-ESRGAN layout (3, 12, 48)")
        return "rrdbnet", {
            "num_in_ch": 3,
            "num_out_ch": int(state["conv_last.weight"].shape[0]),
            "scale": scale_by_in[in_ch],
            "num_feat": int(state["conv_first.weight"].shape[0]),
            "num_block": max(blocks) + 1,
            "num_grow_ch": int(state["body.0.rdb1.conv1.weight"].shape[0]),
        }
    if "body.0.weight" in state and state["body.0.weight"].ndim == 4 and "conv_first.weight" not in state:
        conv_ids = sorted(int(k.split(".")[1]) for k in state if re.fullmatch(r"body\.\d+\.weight", k)
                          and state[k].ndim == 4)
        if "body.1.weight" not in state:
            raise GankdError(f"{source}: SRVGGNetCompact without PReLU weights; relu/leakyrelu variants cannot be "
                             "told apart from the weights alone")
        num_in = int(state["body.0.weight"].shape[1])
        out = int(state[f"body.{conv_ids[-1]}.weight"].shape[0])
        upscale = round((out / num_in) ** 0.5)
        if upscale * upscale * num_in != out:
            raise GankdError(f"{source}: last conv has {out} channels, not {num_in} x upscale^2")
        return "srvgg_compact", {
            "num_in_ch": num_in,
            "num_out_ch": num_in,
            "num_feat": int(state["body.0.weight"].shape[0]),
            "num_conv": len(conv_ids) - 2,
            "upscale": upscale,
            "act_type": "prelu",
        }
    if "conv0.weight" in state and "conv1.weight_orig" in state:
        return "unet_discriminator_sn", {
            "num_in_ch": int(state["conv0.weight"].shape[1]),
            "num_feat": int(state["conv0.weight"].shape[0]),
            "skip_connection": True,
        }
    first = ", ".join(list(state)[:3])
    raise GankdError(f"{source}: not a Real-ESRGAN RRDBNet, SRVGGNetCompact or UNetDiscriminatorSN state dict "
                     f"(first keys: {first})")


def import_pth(path: str | Path) -> tuple[nn.Module, ModelConfig]:
    path = Path(path)
    state, container = extract_state_dict(read_weights(path), source=str(path))
    arch, kwargs = detect_arch(state, source=str(path))
    config = sr_config(arch, kwargs, make_provenance("pth", str(path.name), [path], container=container))
    model = config.build()
    load_state_dict_strict(model, state, source=str(path))
    return model, config
