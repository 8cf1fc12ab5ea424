"""The official ``.pth`` of a student whose architecture has an upstream home, for the tools users already run.

gankd's ``rrdbnet`` and ``srvgg_compact`` keep Real-ESRGAN's own state-dict keys, so a student is written as
Real-ESRGAN saves its models: ``{"params_ema": state_dict}`` with ``torch.save``. Then

* Real-ESRGAN's ``inference_realesrgan.py -n realesr-animevideov3 --model_path model.pth`` loads a 64-feature,
  16-conv SRVGG student (``-n realesr-general-x4v3`` a 32-conv one; ``-n RealESRGAN_x4plus`` a full-size RRDB one),
  since that script builds the network from the model name and loads the weights strictly;
* spandrel (chaiNNer, ComfyUI) detects the architecture from the keys, whatever the size.

The export proves the second on the spot: spandrel (its restricted unpickler) reloads the file, must detect the
expected architecture, and must hold the student's tensors bit for bit; its output is then a parity artifact like
any other (``pth``: max_abs ≤ 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError

PTH_FILE = "model.pth"
CONTAINER = "params_ema"  # what Real-ESRGAN saves and its inference script reads first
SPANDREL_IDS = {"rrdbnet": "ESRGAN", "srvgg_compact": "Compact"}
LOADS_WITH = {"rrdbnet": "Real-ESRGAN inference_realesrgan.py (-n RealESRGAN_x4plus for 64 feat / 23 blocks), "
                         "spandrel (chaiNNer, ComfyUI)",
              "srvgg_compact": "Real-ESRGAN inference_realesrgan.py (-n realesr-animevideov3 for 64 feat / 16 convs, "
                               "-n realesr-general-x4v3 for 64 / 32), spandrel (chaiNNer, ComfyUI)"}


def layout_problem(config) -> str | None:
    """Why this model cannot be written as an official checkpoint, or None."""
    kw = config.kwargs
    if config.arch not in SPANDREL_IDS:
        return (f"--formats pth writes official Real-ESRGAN checkpoints of rrdbnet and srvgg_compact models; "
                f"{config.arch} has no upstream .pth layout (export onnx or ncnn)")
    if config.arch == "rrdbnet" and kw.get("num_grow_ch", 32) != 32:
        return (f"--formats pth: this RRDBNet has {kw['num_grow_ch']} growth channels; Real-ESRGAN's scripts and "
                "spandrel build RRDBNet with 32, so no upstream loader could read it (export onnx or ncnn)")
    if config.arch == "rrdbnet" and kw.get("num_up_feat") not in (None, kw.get("num_feat", 64)):
        return ("--formats pth: this RRDBNet's upsampler is wider than its trunk (num_up_feat), a gankd layout no "
                "upstream loader reads (export onnx or ncnn)")
    if config.arch == "srvgg_compact" and kw.get("act_type", "prelu") != "prelu":
        return (f"--formats pth: an SRVGGNetCompact with {kw['act_type']} activations cannot be told from the PReLU "
                "one by its keys; upstream loaders would build the wrong network (export onnx or ncnn)")
    return None


def export_pth(model: nn.Module, config, path: Path) -> dict:
    """Write the official checkpoint, reload it through spandrel and check it holds the same tensors."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    torch.save({CONTAINER: state}, path)
    descriptor = _spandrel_load(path)
    expected = SPANDREL_IDS[config.arch]
    if descriptor.architecture.id != expected:
        raise GankdError(f"--formats pth: spandrel reads {path.name} as {descriptor.architecture.id}, not {expected}")
    theirs = list(descriptor.model.state_dict().values())  # spandrel may rename keys (old ESRGAN layout): by order
    identical = len(theirs) == len(state) and all(
        a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) for a, b in zip(state.values(), theirs))
    if not identical:
        raise GankdError(f"--formats pth: spandrel loads {path.name} as {expected} but not with the student's tensors")
    return {"container": CONTAINER, "spandrel": {"architecture": expected, "version": _spandrel_version(),
                                                 "tensors_identical": True},
            "loads_with": LOADS_WITH[config.arch]}


def spandrel_runner(path: Path):
    """callable(N×3×H×W float32) → output: the checkpoint as spandrel builds it (the parity check's runner)."""
    net = _spandrel_load(path).model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def _spandrel_load(path: Path):
    try:
        from spandrel import ModelLoader
    except ImportError:
        raise GankdError("--formats pth checks the file with spandrel: pip install spandrel (part of gankd[all])") \
            from None
    return ModelLoader("cpu").load_from_file(path)


def _spandrel_version() -> str:
    import spandrel

    return spandrel.__version__
