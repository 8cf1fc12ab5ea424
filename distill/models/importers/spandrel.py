"""Any SR or restoration ``.pth``/``.ckpt``/``.safetensors`` that spandrel's main registry detects.

The file is read by gankd's own weights-only loader (``weight_files.read_weights``: no pickle ever runs code); spandrel
(imported here, on first use) detects the architecture and its hyper-parameters from the state dict.

* Real-ESRGAN-family files (spandrel's ``ESRGAN`` in the Real-ESRGAN key layout, ``Compact``) become gankd's own
  ``rrdbnet`` / ``srvgg_compact``, exactly as ``--from pth`` imports them: students can then start from their
  weights (``init: teacher``) and export without spandrel.
* Every other architecture becomes a ``spandrel`` model folder (:mod:`gankd.distill.models.archs.foreign`): the
  architecture id, network class, the hyper-parameters that differ from the class defaults, scale, channels and size
  requirements, so the network is rebuilt from the folder alone. The import checks that rebuild on the spot: the
  rebuilt network must give the detected network's output bit for bit.

``spandrel_extra_arches`` (non-commercial licences) is never used: only ``spandrel.MAIN_REGISTRY`` is asked.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.archs.foreign import SPANDREL_HINT
from gankd.distill.models.folder import ModelConfig
from gankd.distill.models.weight_files import extract_state_dict, load_state_dict_strict, read_weights
from gankd.serve.errors import first_line

from .common import make_provenance, sr_config
from .pth import detect_arch

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
PURPOSES = ("SR", "Restoration")  # single-image models gankd can distil; not face, inpainting or masked models
OWN_ARCHS = {"ESRGAN": "rrdbnet", "Compact": "srvgg_compact"}  # spandrel ids whose official layout gankd owns


def import_spandrel(path: str | Path) -> tuple[nn.Module, ModelConfig]:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        what = repr(path.suffix) if path.suffix else "a file without an extension"
        raise GankdError(f"{str(path)!r}: --from spandrel reads {', '.join(SUFFIXES)} files, not {what}")
    raw = read_weights(path)
    spandrel = _require_spandrel()
    state = spandrel.canonicalize_state_dict(raw)
    descriptor = _detect(spandrel, state, path)
    arch_id = str(descriptor.architecture.id)
    if arch_id in OWN_ARCHS:
        own = _as_own_arch(raw, path, arch_id, spandrel.__version__)
        if own is not None:
            return own
    return _as_spandrel_net(descriptor, path, spandrel.__version__)


def _require_spandrel():
    try:
        import spandrel
    except ImportError:
        raise GankdError(f"--from spandrel needs spandrel: {SPANDREL_HINT}") from None
    return spandrel


def _detect(spandrel, state: dict, path: Path):
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise GankdError(f"{str(path)!r}: entry {bad!r} is a {type(state[bad]).__name__}, not a tensor; expected a "
                         "state dict (or one under params_ema, params, state_dict, model)")
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(state)
    except spandrel.UnsupportedModelError:
        first = ", ".join(list(state)[:3])
        raise GankdError(f"{str(path)!r}: spandrel {spandrel.__version__} detects no architecture of its main "
                         f"registry in this state dict (first keys: {first})") from None
    except Exception as exc:  # noqa: BLE001 - an architecture matched but its loader failed: name it
        raise GankdError(f"{str(path)!r}: spandrel could not load this state dict ({first_line(exc)})") from None
    arch_id = descriptor.architecture.id
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in PURPOSES:
        raise GankdError(f"{str(path)!r}: spandrel detected {arch_id}, a {descriptor.purpose} model; gankd distils "
                         "single-image super-resolution and restoration models")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise GankdError(f"{str(path)!r}: spandrel detected {arch_id} with {descriptor.input_channels} input and "
                         f"{descriptor.output_channels} output channels; gankd's SR tasks are RGB (3 → 3)")
    return descriptor


def _as_own_arch(raw: dict, path: Path, arch_id: str, version: str) -> tuple[nn.Module, ModelConfig] | None:
    """A Real-ESRGAN-family file in the official layout as gankd's own arch; None when it is in another layout
    (old ESRGAN keys, a relu Compact), which the spandrel wrapper then takes."""
    state, container = extract_state_dict(raw, source=str(path))
    try:
        arch, kwargs = detect_arch(state, source=str(path))
    except GankdError:
        return None
    if arch != OWN_ARCHS[arch_id]:
        return None
    config = sr_config(arch, kwargs, make_provenance("spandrel", path.name, [path], container=container,
                                                     spandrel_version=version, spandrel_architecture=arch_id))
    model = config.build()
    load_state_dict_strict(model, state, source=str(path))
    return model, config


def _as_spandrel_net(descriptor, path: Path, version: str) -> tuple[nn.Module, ModelConfig]:
    net = descriptor.model
    arch_id = str(descriptor.architecture.id)
    hyper = _recorded_hyperparameters(net, arch_id, path)
    req = descriptor.size_requirements
    kwargs = {"architecture": arch_id, "model_class": type(net).__name__, "hyperparameters": hyper,
              "scale": int(descriptor.scale), "in_channels": int(descriptor.input_channels),
              "out_channels": int(descriptor.output_channels), "size_min": int(req.minimum),
              "size_multiple": int(req.multiple_of), "square": bool(req.square)}
    provenance = make_provenance("spandrel", path.name, [path], spandrel_version=version,
                                 spandrel_architecture=arch_id, spandrel_tags=list(descriptor.tags),
                                 purpose=descriptor.purpose)
    config = ModelConfig(arch="spandrel", kwargs=kwargs, task="sr", scale=int(descriptor.scale),
                         input_range=(0.0, 1.0), width=1.0, provenance=provenance)
    model = config.build()
    load_state_dict_strict(model, {f"net.{k}": v for k, v in net.state_dict().items()}, source=str(path))
    _check_rebuild(model, net, arch_id)
    return model, config


def _recorded_hyperparameters(net: nn.Module, arch_id: str, path: Path) -> dict:
    """The constructor arguments spandrel used that differ from the class's defaults, as JSON values."""
    hyper = getattr(net, "hyperparameters", None)
    if not isinstance(hyper, dict):
        raise GankdError(f"{str(path)!r}: spandrel's {arch_id} network does not record its hyper-parameters, so it "
                         "could not be rebuilt from a model folder")
    defaults = {name: p.default for name, p in inspect.signature(type(net).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    kept = {k: v for k, v in hyper.items() if k not in defaults or not _same(defaults[k], v)}
    for key, value in kept.items():
        try:
            json.dumps(value)
        except TypeError:
            raise GankdError(f"{str(path)!r}: spandrel's {arch_id} was built with {key}={value!r}, which a "
                             "config.json cannot hold") from None
    return json.loads(json.dumps(kept))


def _same(default, value) -> bool:
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(default) == list(value)
    return default is value or (type(default) is type(value) and default == value)


def _check_rebuild(model, net: nn.Module, arch_id: str) -> None:
    """The folder's network must be the detected one: same output, bit for bit, on an input it accepts."""
    size = model.padded_size(16, 16)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model.eval().net(x), net.eval()(x))
    if not same:
        raise GankdError(f"spandrel {arch_id}: the network rebuilt from the recorded hyper-parameters differs from "
                         "the detected one; this architecture cannot be imported yet")
