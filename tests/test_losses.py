"""Each SDAKD loss on known tensors, and the feature adapter's shapes for the paper's widths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gankd.distill import losses
from gankd.distill.adapters import FeatureMLP


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
    from gankd.distill.perceptual import VGGFeatures

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
    with pytest.raises(GankdError, match="missing key 'features.10."):
        VGGFeatures.from_file(tmp_path / "vgg.safetensors", ["conv3_1"])
    with pytest.raises(GankdError, match="unknown VGG19 layer 'relu9'"):
        VGGFeatures(["relu9"])


def test_gradient_variance_loss_sees_blur_and_is_differentiable():
    from gankd.distill.losses import gradient_variance_loss

    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1)
    assert gradient_variance_loss(target, target).item() == 0.0
    assert gradient_variance_loss(blurred, target) > 100 * gradient_variance_loss(target + 1e-3 * torch.randn_like(target), target)
    out = blurred.clone().requires_grad_(True)
    gradient_variance_loss(out, target).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
