"""Teachers of any single-image SR or restoration architecture spandrel reads (HAT, SwinIR, DAT, OmniSR, PLKSR, ...).

spandrel (chaiNNer's loader, MIT) owns those networks: gankd records which one spandrel detected and the
hyper-parameters it built it with, and :class:`SpandrelNet` rebuilds it from that record through spandrel's own
*main* registry (never ``spandrel_extra_arches``: their licences are non-commercial). The wrapper makes such a network
behave like gankd's own SR teachers:

* **Size requirements** (a minimum size, a multiple of the window, a square input) are met inside ``forward``: the
  input is padded on the bottom/right (reflect, or replicate when the pad is larger than the image) and the output
  cropped back, so every caller — the data pipeline, validation, the teacher cache, search — may send any crop.
* **Features.** A foreign network has no ``forward_features``. The user may name one of its modules as the feature
  tap (recipe ``teacher_feature``); its output, cropped to the unpadded image, is the feature SDAKD's MLP loss reads.
  This is the one place gankd reads a feature through a forward hook: the network's code is not ours to change, and
  the module is named explicitly by the user. Without a tap the teacher gives a 1×1 placeholder and feature KD is off.

spandrel imports on first use; a folder of this arch needs it installed to be rebuilt (``pip install spandrel``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.models.registry import register_arch

SPANDREL_HINT = "pip install spandrel (part of gankd[all])"


@dataclass(frozen=True)
class SpandrelConfig:
    architecture: str  # spandrel's architecture id: "SwinIR", "HAT", "DAT", ...
    model_class: str  # the class spandrel built, one of that architecture module's exports
    hyperparameters: dict = field(default_factory=dict)  # what spandrel detected, minus the constructor's defaults
    scale: int = 4
    in_channels: int = 3
    out_channels: int = 3
    size_min: int = 0  # spandrel's SizeRequirements: minimum side, multiple_of, square
    size_multiple: int = 1
    square: bool = False

    def __post_init__(self):
        for name in ("scale", "in_channels", "out_channels", "size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.size_min, int) or self.size_min < 0:
            raise ValueError(f"size_min must be a non-negative integer, got {self.size_min!r}")
        if not isinstance(self.hyperparameters, dict):
            raise ValueError(f"hyperparameters must be a mapping, got {type(self.hyperparameters).__name__}")


def spandrel_model_class(architecture: str, model_class: str) -> type[nn.Module]:
    """The network class of ``architecture`` in spandrel's main registry; one-line errors when spandrel is missing
    or does not know it. The class is looked up in the module of spandrel's own registry entry, so a config can
    name nothing outside spandrel's main architectures."""
    try:
        import spandrel
    except ImportError:
        raise GankdError(f"this model is a spandrel {architecture} network and needs spandrel: {SPANDREL_HINT}") \
            from None
    support = spandrel.MAIN_REGISTRY.get(architecture)
    if support is None:
        raise GankdError(f"spandrel {spandrel.__version__} has no architecture {architecture!r} in its main registry")
    module = sys.modules[type(support.architecture).__module__]
    cls = getattr(module, model_class, None)
    if model_class not in getattr(module, "__all__", ()) or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise GankdError(f"spandrel's {architecture} architecture has no network class {model_class!r}")
    return cls


class SpandrelNet(nn.Module):
    """A spandrel-built SR network as a gankd teacher (module doc). Its weights live under ``net.``."""

    def __init__(self, config: SpandrelConfig):
        super().__init__()
        self.config = config
        cls = spandrel_model_class(config.architecture, config.model_class)
        try:
            self.net = cls(**config.hyperparameters)
        except (TypeError, ValueError) as exc:
            raise GankdError(f"spandrel {config.architecture}: cannot build {config.model_class} from the recorded "
                             f"hyper-parameters ({str(exc).splitlines()[0]})") from None
        self.scale = config.scale
        self.feature_tap: str | None = None

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (H, W) at or above the input's that meets the size requirements."""
        c = self.config
        h, w = max(height, c.size_min), max(width, c.size_min)
        if c.square:
            h = w = max(h, w)
        return -(-h // c.size_multiple) * c.size_multiple, -(-w // c.size_multiple) * c.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        if (ph, pw) != (h, w):
            mode = "reflect" if ph - h < h and pw - w < w else "replicate"
            x = F.pad(x, (0, pw - w, 0, ph - h), mode=mode)
        y = self.net(x)
        return y[..., : h * self.scale, : w * self.scale], (ph, pw)

    def set_feature_tap(self, name: str | None) -> None:
        """Name the module whose output is the teacher feature (None: no feature, feature KD off)."""
        if name is not None:
            modules = dict(self.net.named_modules())
            if not name or name not in modules:
                top = ", ".join(n for n, _ in self.net.named_children())
                raise GankdError(f"teacher_feature: {self.config.architecture} has no module {name!r}; its top-level "
                                 f"modules are {top} (nested ones by dotted name, e.g. layers.0)")
        self.feature_tap = name

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.feature_tap is None:
            out = self(x)
            return out, [out.new_zeros(out.shape[0], 1, 1, 1)]
        captured: list[torch.Tensor] = []
        module = self.net.get_submodule(self.feature_tap)
        handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            out, padded = self._run(x)
        finally:
            handle.remove()
        if not captured or not torch.is_tensor(captured[-1]) or captured[-1].dim() != 4:
            raise GankdError(f"teacher_feature: module {self.feature_tap!r} of {self.config.architecture} does not "
                             "output an N×C×H×W tensor; name a convolution's or block's output")
        return out, [_crop_like(captured[-1], padded, x.shape[-2:])]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_features(x)[1]


def _crop_like(feat: torch.Tensor, padded: tuple[int, int], size) -> torch.Tensor:
    """Crop a feature of the padded input to the part that covers the real image. The network may pad again
    inside (SwinIR and HAT pad to their window), so the feature's resolution is read as a whole multiple (or
    fraction) of the input's, not as an exact ratio of sizes."""
    return feat[..., : _covered(feat.shape[-2], padded[0], size[0]), : _covered(feat.shape[-1], padded[1], size[1])]


def _covered(feat_side: int, padded_side: int, side: int) -> int:
    if feat_side >= padded_side:
        return side * (feat_side // padded_side)
    return -(-side // round(padded_side / feat_side))


@register_arch("spandrel", SpandrelConfig, kind="generator", family="spandrel")
def spandrel_net(config: SpandrelConfig) -> nn.Module:
    return SpandrelNet(config)
