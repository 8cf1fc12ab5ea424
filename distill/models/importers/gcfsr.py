"""Official GCFSR checkpoints (He et al., CVPR 2022, https://github.com/hejingwenhejingwen/GCFSR): ``params_ema``
(the generator), ``params`` or a bare state dict becomes a gankd ``gcfsr`` model (``archs/gcfsr.py``, whose key
names are the official ones). The options are read off the key names and shapes; ``cond_norm`` is not stored.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.archs.gcfsr import MAX_OUT_SIZE, MIN_OUT_SIZE
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.weight_files import extract_state_dict, load_state_dict_strict, read_weights

from .common import make_provenance

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


def import_gcfsr(path: str | Path, cond_norm: float = 64.0) -> tuple[nn.Module, ModelConfig]:
    """An official GCFSR checkpoint (``{"params_ema": G, "params": G}`` or a bare state dict) -> (model, ModelConfig).

    ``cond_norm`` is not stored in the checkpoint: 64 for the published 1024 model, 32 for the 512 one."""
    path = Path(path)
    state, container = extract_state_dict(read_weights(path), source=str(path))
    kwargs = detect_gcfsr(state, str(path), cond_norm)
    config = ModelConfig(arch="gcfsr", kwargs=kwargs, task="face_sr", scale=None, input_range=(-1.0, 1.0),
                         width=1.0, provenance=make_provenance("gcfsr", path.name, [path], container=container))
    model = config.build()
    load_state_dict_strict(model, state, source=str(path))
    return model, config
