"""Each SDAKD loss on known tensors, and the feature adapter's shapes for the paper's widths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gankd.distill.train import losses
from gankd.distill.train.adapters import FeatureMLP


def test_l1_and_mlp_and_d_distill_on_known_tensors():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert losses.l1_loss(a, b).item() == pytest.approx(0.5)
    assert losses.mlp_feature_loss(a, b).item() == pytest.approx(0.25)
    assert losses.d_distill_loss(b, a).item() == pytest.approx(0.25)


def test_perceptual_loss_weights_each_layer():
    x = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 1, 1)]
    y = [torch.ones(1, 2, 2, 2), torch.full((1, 4, 1, 1), 2.0)]
    assert losses.perceptual_loss(x, y, [0.1, 1.0]).item() == pytest.approx(0.1 * 1 + 1.0 * 2)
    with pytest.raises(ValueError):
        losses.perceptual_loss(x, y, [1.0])


@pytest.mark.parametrize("kind", ["vanilla", "logistic"])
def test_logistic_losses_match_bce(kind):
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    expected_d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert losses.d_adversarial_loss(real, fake, kind).item() == pytest.approx(expected_d.item(), rel=1e-5)
    expected_g = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    assert losses.g_adversarial_loss(fake, kind).item() == pytest.approx(expected_g.item(), rel=1e-5)


def test_wgan_and_lsgan_closed_forms():
    real, fake = torch.full((3, 1), 2.0), torch.full((3, 1), -1.0)
    assert losses.d_adversarial_loss(real, fake, "wgan").item() == pytest.approx(-3.0)
    assert losses.g_adversarial_loss(fake, "wgan").item() == pytest.approx(1.0)
    assert losses.d_adversarial_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * (1.0 + 1.0))
    assert losses.g_adversarial_loss(fake, "lsgan").item() == pytest.approx(0.5 * 4.0)


def test_unknown_adversarial_kind_is_refused():
    with pytest.raises(ValueError, match="unknown adversarial loss 'hinge'"):
        losses.g_adversarial_loss(torch.zeros(1), "hinge")


def test_r1_penalty_of_a_linear_critic_is_its_squared_weight_norm():
    w = torch.tensor([1.0, -2.0, 3.0])
    x = torch.randn(4, 3, requires_grad=True)
    assert losses.r1_penalty(x @ w, x).item() == pytest.approx(float((w**2).sum()))


@pytest.mark.parametrize("width", [1 / 2, 1 / 4, 1 / 8])
def test_feature_mlp_maps_student_width_to_teacher_width(width):
    teacher_channels = 64
    student_channels = round(teacher_channels * width)
    adapter = FeatureMLP(student_channels, teacher_channels)
    out = adapter(torch.randn(2, student_channels, 5, 7))
    assert out.shape == (2, teacher_channels, 5, 7)
    assert adapter.fc1.kernel_size == (1, 1) and adapter.fc2.kernel_size == (1, 1)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter.parameters())
    assert not math.isnan(out.sum().item())


def test_vgg_features_load_a_truncated_local_file_and_refuse_others(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    from gankd.distill.errors import GankdError
    from gankd.distill.train.perceptual import VGGFeatures

    layers = ["conv2_2", "conv1_2"]  # order of the request is kept in the output
    full = make_layers(cfgs["E"]).state_dict()  # torchvision vgg19().features
    state = {f"features.{k}": v for k, v in full.items() if int(k.split(".")[0]) <= 7}
    save_file(state, str(tmp_path / "vgg.safetensors"))
    vgg = VGGFeatures.from_file(tmp_path / "vgg.safetensors", layers)
    feats = vgg(torch.rand(1, 3, 16, 16))
    assert [f.shape[1] for f in feats] == [128, 64] and feats[0].shape[-1] == 8
    assert torch.equal(vgg.features[7].weight, state["features.7.weight"])
    vgg.train()
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    wrapped = {f"module.{k}": v for k, v in state.items()}  # a DataParallel checkpoint: the one loader strips it
    save_file(wrapped, str(tmp_path / "vgg_dp.safetensors"))
    assert torch.equal(VGGFeatures.from_file(tmp_path / "vgg_dp.safetensors", layers).features[7].weight,
                       state["features.7.weight"])
    with pytest.raises(GankdError, match="missing key 'features.10."):
        VGGFeatures.from_file(tmp_path / "vgg.safetensors", ["conv3_1"])
    with pytest.raises(GankdError, match="unknown VGG19 layer 'relu9'"):
        VGGFeatures(["relu9"])


def test_gradient_variance_loss_sees_blur_and_is_differentiable():
    from gankd.distill.train.losses import gradient_variance_loss

    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    assert gradient_variance_loss(target, target).item() == 0.0
    assert gradient_variance_loss(blurred, target) > 100 * gradient_variance_loss(target + 1e-3 * torch.randn_like(target), target)
    out = blurred.clone().requires_grad_(True)
    gradient_variance_loss(out, target).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def _random_inception_stem() -> dict:
    from torch import nn

    from gankd.distill.train.perceptual import INCEPTION_STEM

    torch.manual_seed(0)
    return {name: nn.MaxPool2d(3, 2) if name.startswith("pool") else nn.Conv2d(3, 3, 3, padding=1)
            for name in INCEPTION_STEM}


def test_inception_features_keep_the_stem_up_to_the_deepest_layer_asked_for():
    from gankd.distill.errors import GankdError
    from gankd.distill.train.perceptual import InceptionFeatures, layer_weights, REALESRGAN_LAYERS

    features = InceptionFeatures(_random_inception_stem(), ["conv_4", "conv_2"])  # order of the request is kept
    assert list(features.stem) == ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4"]
    x = torch.rand(1, 3, 32, 32)
    deep, shallow = features(x)
    assert shallow.shape[-1] == 32 and deep.shape[-1] == 15  # one pool between them
    features.train()
    assert not features.training and not any(p.requires_grad for p in features.parameters())
    out = x.clone().requires_grad_(True)
    sum(f.abs().mean() for f in features(out)).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    with pytest.raises(GankdError, match="unknown Inception layer 'pool0'"):
        InceptionFeatures(_random_inception_stem(), ["pool0"])
    assert layer_weights("vgg19", None) == REALESRGAN_LAYERS and layer_weights("inception", {"conv_1": 2.0}) == {
        "conv_1": 2.0}


@pytest.mark.real_weights
def test_the_offline_inception_stem_sees_blur():
    """The shipped FID Inception's stem, as the perceptual term uses it: a 3×3 blur is farther from the original in
    its features than the original with ±1 8-bit level of noise on every pixel, and an image is at 0 from itself."""
    import torch.nn.functional as F

    from gankd.distill.data.images import sample_images
    from gankd.distill.train.perceptual import INCEPTION_LAYERS, load_features

    features = load_features("inception", None, list(INCEPTION_LAYERS))
    image = sample_images("train")[0][1][:, :96, :96].unsqueeze(0)
    blurred = F.avg_pool2d(image, 3, 1, 1, count_include_pad=False)
    nudged = (image + 1 / 255 * torch.randn_like(image).sign()).clamp(0, 1)

    def distance(a, b):
        return sum(F.l1_loss(x, y) for x, y in zip(features(a), features(b), strict=True)).item()

    assert distance(image, image) == 0
    assert distance(image, blurred) > 1.5 * distance(image, nudged) > 0
