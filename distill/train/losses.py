"""Losses of SDAKD distillation, as pure functions returning a scalar.

Weights (λ1 for the MLP feature term, λ2 for the adversarial term, the L1 and perceptual weights) are applied in one
place, the term table of :mod:`gankd.distill.train.objective`; nothing here knows about stages or modules.

Adversarial losses take the discriminator's raw outputs (logits; the U-Net discriminator gives one per pixel) and
average over every element:

- ``vanilla``  — Real-ESRGAN's ``GANLoss('vanilla')``: BCE with logits, real → 1, fake → 0; G: fake → 1.
- ``logistic`` — GCFSR / StyleGAN2: softplus form of the same logistic loss plus an R1 penalty on real inputs
  (:func:`r1_penalty`, weighted by ``r1_gamma / 2`` in the stage). Without R1 it equals ``vanilla``.
- ``wgan``     — Wasserstein critic: D maximises E[D(real)] − E[D(fake)]; spectral norm keeps D roughly 1-Lipschitz.
- ``lsgan``    — least squares: D pushes real → 1, fake → 0; G pushes fake → 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ADVERSARIAL = ("vanilla", "logistic", "wgan", "lsgan")


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(output, target)


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error: the compression loss of Aguinaldo et al. (student vs teacher image for the same z)."""
    return F.mse_loss(output, target)


def fft_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D spectra (orthonormal real FFT per channel): every frequency weighs alike,
    where pixel L1 is dominated by the low frequencies a compact student gets right first, so fine texture the
    teacher draws pulls as hard as its flat areas (after the focal frequency loss of Jiang et al., ICCV 2021,
    without its adaptive weighting)."""
    return (torch.fft.rfft2(output.float(), norm="ortho") - torch.fft.rfft2(target.float(), norm="ortho")).abs().mean()


def gradient_variance_loss(output: torch.Tensor, target: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Gradient variance loss (Abrahamyan et al., "Gradient Variance Loss for Structure-Enhanced Image
    Super-Resolution", ICASSP 2022): the Sobel gradients of the luma, in ``patch`` × ``patch`` patches; L2 between
    the per-patch variances of output and target. A blurred output has low gradient variance where the target's
    texture is busy, which pixel L1 barely penalises."""
    weights = output.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    sobel = output.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1)

    def variances(images: torch.Tensor) -> torch.Tensor:
        luma = (images.float() * weights).sum(1, keepdim=True) if images.shape[1] == 3 else images.float()
        grads = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
        patches = F.unfold(grads, patch, stride=patch)  # N x (2·patch²) x L
        n, _, count = patches.shape
        return patches.view(n, 2, patch * patch, count).var(dim=2)

    return F.mse_loss(variances(output), variances(target))


def anchor_loss(params: list[torch.Tensor], initial: list[torch.Tensor]) -> torch.Tensor:
    """L2-SP (Li et al., "Explicit Inductive Bias for Transfer Learning", ICML 2018): ½‖w − w⁰‖², the squared
    distance of the weights from where a warm start began (the paper's α multiplies it). It keeps a pretrained compact
    model near the general solution it learned from thousands of photos while a fine-tune on a few pulls it
    towards them."""
    return 0.5 * torch.stack([(p - p0).pow(2).sum() for p, p0 in zip(params, initial, strict=True)]).sum()


def perceptual_loss(feats_out: list[torch.Tensor], feats_target: list[torch.Tensor],
                    layer_weights: list[float]) -> torch.Tensor:
    """Real-ESRGAN's perceptual term: weighted L1 between VGG feature maps (features from ``VGGFeatures``)."""
    terms = [w * F.l1_loss(a, b) for a, b, w in zip(feats_out, feats_target, layer_weights, strict=True)]
    return torch.stack(terms).sum()


def mlp_feature_loss(adapted_student: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """SDAKD L_MLP: L2 between the teacher's last backbone map and the student's map after the MLP adapter."""
    return F.mse_loss(adapted_student, teacher_feat)


def d_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """SDAKD stage 2 for D_S: L2 between the student and teacher discriminators' outputs on the same input."""
    return F.mse_loss(student_logits, teacher_logits)


def d_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The discriminator's loss on a real and a fake batch (see the module doc for ``kind``)."""
    if kind in ("vanilla", "logistic"):
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "wgan":
        return fake_logits.mean() - real_logits.mean()
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1).pow(2).mean() + fake_logits.pow(2).mean())
    raise ValueError(f"unknown adversarial loss {kind!r}; choose from {', '.join(ADVERSARIAL)}")


def g_adversarial_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's adversarial loss (non-saturating for the logistic kinds)."""
    if kind in ("vanilla", "logistic"):
        return F.softplus(-fake_logits).mean()
    if kind == "wgan":
        return -fake_logits.mean()
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1).pow(2).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}; choose from {', '.join(ADVERSARIAL)}")


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): squared gradient norm of D at real images, per sample, averaged.

    ``real_images`` must have ``requires_grad=True`` and ``real_logits`` must come from them.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# The baselines SDAKD is measured against (gankd.distill.train.baselines): OMGD's student terms and DCD's feature term.

def ssim_loss(output: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """OMGD's output term 1 − SSIM (bytedance/OMGD ``models/modules/pytorch_ssim``: 11×11 Gaussian window, σ 1.5,
    'same' zero padding, mean over the map). ``data_range``: 1 for images in [0, 1], 2 for [-1, 1]."""
    from gankd.distill.metrics import ssim_map

    return 1 - ssim_map(output, target, data_range, padding=5).mean()


def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(N, C, C) Gram matrix normalised by C·H·W, as OMGD's ``gram``."""
    n, c, h, w = feat.shape
    flat = feat.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(feats_out: list[torch.Tensor], feats_target: list[torch.Tensor]) -> torch.Tensor:
    """OMGD's style term: the sum over VGG layers of the L1 distance between Gram matrices."""
    terms = [F.l1_loss(gram_matrix(a), gram_matrix(b)) for a, b in zip(feats_out, feats_target, strict=True)]
    return torch.stack(terms).sum()


def channel_distill_loss(adapted_student: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """OMGD's channel-wise distillation (``calc_CD_loss``): MSE between the spatial means of the adapted student map
    and the teacher map — what each channel carries on average, not where."""
    return F.mse_loss(adapted_student.mean(dim=(2, 3)), teacher_feat.mean(dim=(2, 3)))


def dcd_feature_loss(student_d_feats: list[torch.Tensor], teacher_d_feats: list[torch.Tensor]) -> torch.Tensor:
    """DCD's discriminator-cooperated term: the sum over the teacher discriminator's intermediate maps of the L1
    distance between D_T's maps of the student output and of the teacher output (``calc_DCD_loss``)."""
    terms = [F.l1_loss(s, t) for s, t in zip(student_d_feats, teacher_d_feats, strict=True)]
    return torch.stack(terms).sum()
