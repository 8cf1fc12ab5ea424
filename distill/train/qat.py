"""Quantization-aware distillation (QAT): the student learns weights and activation ranges that survive the INT8
export, and the export writes the ranges it learned instead of calibrating new ones.

One INT8 recipe per model family (:class:`Int8Recipe`, :data:`FAMILY_RECIPES`) serves both sides: ONNX Runtime's
static QDQ quantizer writes ``model.int8.onnx`` with it (:mod:`gankd.export.int8`), and the fake quantization here
mirrors the graph that quantizer writes, tensor for tensor:

- **Weights** of every quantized conv: symmetric, per output channel, on the recipe's range (7 bits with
  ``reduce_range``: [-64, 64]), scale = 2·max|w| / (qmax − qmin), zero point 0. This is ORT's formula; ORT computes
  it again from the final weights at export, so weight scales are not stored.
- **Activations**: uint8, per tensor, asymmetric, through ``torch.ao.quantization.FakeQuantize`` with a
  moving-average min/max observer (the range ORT's MinMax calibration takes, following the weights as they move).
  The scales and zero points the run ends with are stored in the student's ``config.json`` and given to the
  quantizer as ``TensorQuantOverrides``.
- **Which tensors** (:data:`QAT_FAMILIES`): for SRVGGNetCompact ORT quantizes the input and output of every conv
  except the recipe's first and last (kept fp32), leaves PReLU in float between a conv's output and the next conv's
  input, and quantizes the tail: the pixel-shuffled residual, the nearest-upsampled input and their sum, the model's
  output. The export checks this list against the tensors of the graph it wrote (``int8.check_mirrors``), so a
  drift between ORT's quantizer and this module stops the export instead of shipping scales for other tensors.

The rest is the run's: a ``qat`` stage of ``n_qat`` epochs after the others (:mod:`.stages`), distilling towards the
teacher's outputs with the fake quantization on, from the student selected so far (:mod:`.loop`). Its best
student goes to ``student/int8_qat/`` (:data:`FOLDER`), a model folder of its own whose provenance ``int8_qat``
holds the ranges; ``student/`` itself keeps the fp32 student selected before QAT. QAT weights are tuned for the
8-bit grid, and run in fp32 they score below the student they started from, so the fp32 files of an export come
from ``student/`` and only ``model.int8.onnx`` from ``student/int8_qat/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.errors import GankdError


@dataclass(frozen=True)
class Int8Recipe:
    """ONNX Runtime static quantization settings for one model family (the export's, and the QAT's)."""

    format: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8"
    reduce_range: bool = True  # 7-bit weights: no int16 saturation without VNNI (gankd.export.int8)
    per_channel: bool = True
    method: str = "MinMax"
    keep_first_convs: int = 1  # convs kept in fp32 at the start (the input image is not re-quantised)
    keep_last_convs: int = 1  # and at the end (the output's last rounding steps stay fp32)

    @property
    def weight_range(self) -> tuple[int, int]:
        """ORT's symmetric int8 weight range: [-64, 64] with reduce_range, else [-127, 127]."""
        return (-64, 64) if self.reduce_range else (-127, 127)


# By measurement (gankd.export.int8's docstring). A family not listed gets the default recipe.
FAMILY_RECIPES: dict[str, Int8Recipe] = {
    "srvgg": Int8Recipe(keep_first_convs=1, keep_last_convs=1),
    "rrdb": Int8Recipe(keep_first_convs=1, keep_last_convs=3),  # conv_up2, conv_hr, conv_last
}
DEFAULT_RECIPE = Int8Recipe()
ACT_RANGE = (0, 255)  # uint8 activations
OBSERVER_AVERAGING = 0.01  # torch.ao's default for QAT activation observers
FOLDER = "int8_qat"  # inside a student folder: the QAT weights and their ranges, a model folder of its own
CALIBRATION_BATCHES = 4  # batches of the train pool that set the first ranges, with fake quantization off


def recipe_for(family: str) -> Int8Recipe:
    return FAMILY_RECIPES.get(family, DEFAULT_RECIPE)


def kept_convs(count: int, recipe: Int8Recipe) -> set[int]:
    """Ordinals (in graph order) of the convs the recipe keeps in fp32; none when that would leave nothing to
    quantise (the export then quantises every conv, :func:`gankd.export.int8.excluded_convs`)."""
    if count <= recipe.keep_first_convs + recipe.keep_last_convs:
        return set()
    return set(range(recipe.keep_first_convs)) | set(range(count - recipe.keep_last_convs, count))


def fake_quant_weight(weight: torch.Tensor, recipe: Int8Recipe) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization with ORT's scale; gradients pass straight through."""
    qmin, qmax = recipe.weight_range
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())))
    scale = (2 * absmax / (qmax - qmin)).clamp_min(torch.finfo(torch.float32).tiny).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, qmin, qmax)


class ActFakeQuant(nn.Module):
    """uint8 per-tensor fake quantization of one activation (torch.ao FakeQuantize). The observer follows the
    activations in training mode only: validation and export read the ranges, never move them."""

    def __init__(self):
        super().__init__()
        from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

        self.fq = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=ACT_RANGE[0], quant_max=ACT_RANGE[1],
                               dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False,
                               averaging_constant=OBSERVER_AVERAGING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.fq.enable_observer()
        else:
            self.fq.disable_observer()
        return self.fq(x)

    def qparams(self) -> dict:
        return {"scale": float(self.fq.scale.item()), "zero_point": int(self.fq.zero_point.item())}

    def set_qparams(self, scale: float, zero_point: int) -> None:
        self.fq.scale.copy_(torch.tensor([scale]))
        self.fq.zero_point.copy_(torch.tensor([zero_point], dtype=self.fq.zero_point.dtype))


class QatSRVGG(nn.Module):
    """An SRVGGNetCompact with the INT8 export's fake quantization around it; off (the plain model, bit for bit)
    until :func:`begin`. Holds the student itself: its parameters, names and optimiser are the student's."""

    def __init__(self, model: nn.Module, recipe: Int8Recipe):
        super().__init__()
        self.model, self.recipe = model, recipe
        convs = [i for i, layer in enumerate(model.body) if isinstance(layer, nn.Conv2d)]
        kept = kept_convs(len(convs), recipe)
        self.quantized = {index: k for k, index in enumerate(convs) if k not in kept}  # body index -> conv ordinal
        names = [f"conv{k}_{side}" for k in self.quantized.values() for side in ("in", "out")]
        self.fq = nn.ModuleDict({name: ActFakeQuant() for name in names + ["shuffle", "base", "output"]})
        self.register_buffer("enabled", torch.zeros((), dtype=torch.bool))

    @property
    def gankd_config(self):
        return self.model.gankd_config

    @property
    def config(self):
        return self.model.config

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_features(x)[1]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not bool(self.enabled):
            return self.model.forward_with_features(x)
        body = self.model.body
        feat = x
        for index, layer in enumerate(body[:-1]):
            feat = self._layer(index, layer, feat)
        out = self.fq["shuffle"](self.model.upsampler(self._layer(len(body) - 1, body[-1], feat)))
        base = self.fq["base"](F.interpolate(x, scale_factor=float(self.model.config.upscale), mode="nearest"))
        return self.fq["output"](out + base), [feat]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def _layer(self, index: int, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if index not in self.quantized:
            return layer(x)
        k = self.quantized[index]
        x = self.fq[f"conv{k}_in"](x)
        y = F.conv2d(x, fake_quant_weight(layer.weight, self.recipe), layer.bias, layer.stride, layer.padding,
                     layer.dilation, layer.groups)
        return self.fq[f"conv{k}_out"](y)


QAT_FAMILIES = {"srvgg": QatSRVGG}


def check_supported(family: str) -> None:
    if family not in QAT_FAMILIES:
        raise GankdError(f"n_qat: quantization-aware distillation mirrors the INT8 export for the "
                         f"{', '.join(QAT_FAMILIES)} family; {family!r} students have no QAT wrapper yet (set n_qat: 0)")


def wrap(model: nn.Module, family: str) -> nn.Module:
    """The QAT wrapper of ``model`` (fake quantization off until :func:`begin`)."""
    check_supported(family)
    return QAT_FAMILIES[family](model, recipe_for(family))


def unwrap(model: nn.Module) -> tuple[nn.Module, dict | None]:
    """(the plain model, its QAT record for the model folder's provenance, or None while QAT is off)."""
    if not isinstance(model, tuple(QAT_FAMILIES.values())):
        return model, None
    if not bool(model.enabled):
        return model.model, None
    return model.model, {"recipe": asdict(model.recipe), "activations": {name: fq.qparams()
                                                                        for name, fq in model.fq.items()}}


@torch.no_grad()
def begin(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set the first activation ranges on ``batches`` of the train pool with fake quantization off (what ORT's
    calibration sees: fp32 activations), then switch fake quantization on."""
    was_training = model.training
    model.train()
    for fq in model.fq.values():
        fq.fq.disable_fake_quant()
    model.enabled.fill_(True)
    seen = 0
    for batch in batches:
        model(batch)
        seen += 1
    if not seen:
        raise GankdError("QAT needs at least one calibration batch")
    for fq in model.fq.values():
        fq.fq.enable_fake_quant()
    model.train(was_training)


def restore(model: nn.Module, family: str, record: dict) -> nn.Module:
    """The fake-quantized model a QAT student folder describes (``record``: its provenance ``int8_qat``): the
    PyTorch reference its INT8 export is checked against."""
    wrapper = wrap(model, family)
    if record.get("recipe") != asdict(wrapper.recipe):
        raise GankdError(f"the student's QAT recipe {record.get('recipe')} is not this gankd's INT8 recipe for "
                         f"{family} ({asdict(wrapper.recipe)}): distil it again")
    acts = record.get("activations", {})
    if set(acts) != set(wrapper.fq):
        raise GankdError(f"the student's QAT record names activations {sorted(acts)}, expected {sorted(wrapper.fq)}")
    for name, fq in wrapper.fq.items():
        fq.set_qparams(acts[name]["scale"], acts[name]["zero_point"])
    wrapper.enabled.fill_(True)
    return wrapper.eval()
