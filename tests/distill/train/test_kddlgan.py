"""KD-DLGAN on a tiny random open_clip model: loading, features, the AGKD gate, where each term's gradient goes;
and the sharpness / diversity metrics used to judge compressed GANs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gankd.distill.errors import GankdError
from gankd.distill.train.kddlgan import FACE_EXPRESSIONS, CLIPImageTeacher, ProjectionHead, agkd_gate, agkd_loss, cgkd_diversity_loss, cgkd_match_loss, correlation, kddlgan_d_terms, kddlgan_g_term
from gankd.distill.metrics import feature_diversity, laplacian_variance

from helpers.tiny_clip import TINY_CLIP_CONFIG, save_tiny_clip

EMBED = TINY_CLIP_CONFIG["embed_dim"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> CLIPImageTeacher:
    name, weights = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return CLIPImageTeacher.from_files(name, weights)


@pytest.fixture(scope="module")
def text(clip) -> torch.Tensor:
    return clip.text_features(FACE_EXPRESSIONS)


class TinyD(nn.Module):
    """A stand-in discriminator returning (logit, last-layer feature)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, 2, 1))
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        feat = self.body(x).mean((2, 3))
        return self.out(feat), feat


def _tiny_gan():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(8, 3 * 32 * 32), nn.Tanh(), nn.Unflatten(1, (3, 32, 32)))
    return g, TinyD(), ProjectionHead(8, EMBED)


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


# -------------------------------------------------------------------------------------------------------- teacher


def test_from_files_builds_a_frozen_teacher(clip):
    assert clip.embed_dim == EMBED
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training


@pytest.mark.parametrize("weights", [None, ""])
def test_missing_weights_names_the_recipe_keys(weights):
    with pytest.raises(GankdError) as info:
        CLIPImageTeacher.from_files("gankd-tiny-clip", weights)
    message = str(info.value)
    assert "\n" not in message and "clip_model" in message and "clip_weights" in message


def test_weights_file_not_found_is_one_line(tmp_path):
    with pytest.raises(GankdError, match="not found") as info:
        CLIPImageTeacher.from_files("gankd-tiny-clip", tmp_path / "nope.pt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (40, 56)])
def test_image_features_any_size_with_gradient_to_the_input(clip, size, one_thread):
    images = (torch.rand(3, 3, *size) * 2 - 1).requires_grad_(True)
    features = clip(images)
    assert features.shape == (3, EMBED) and torch.isfinite(features).all()
    features.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_text_features_for_the_expressions(text):
    assert text.shape == (len(FACE_EXPRESSIONS), EMBED)
    assert not text.requires_grad and torch.isfinite(text).all()
    assert not torch.allclose(text[0], text[1])


# ----------------------------------------------------------------------------------------------------------- gate


def test_gate_is_bernoulli_and_replays():
    draws = [agkd_gate(torch.Generator().manual_seed(0)) for _ in range(2)]
    assert draws[0] == draws[1]
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seq_a = [agkd_gate(gen_a) for _ in range(2000)]
    seq_b = [agkd_gate(gen_b) for _ in range(2000)]
    assert seq_a == seq_b
    assert abs(sum(seq_a) / 2000 - 0.7) < 0.04
    with pytest.raises(GankdError):
        agkd_gate(gen_a, p=1.5)


# --------------------------------------------------------------------------------------------------------- losses


def test_trivial_cases():
    feats = torch.randn(4, EMBED)
    for aggregate in (False, True):
        assert float(agkd_loss(feats, feats, feats, feats, aggregate=aggregate)) == 0.0
    c = correlation(feats, torch.randn(7, EMBED))
    assert torch.allclose(c.norm(dim=1), torch.ones(4))
    assert float(cgkd_match_loss(c, c)) == 0.0
    assert float(cgkd_diversity_loss(c[:1])) == 0.0
    same = c[:1].expand(5, -1)
    assert float(cgkd_diversity_loss(same)) == pytest.approx(1.0)
    assert torch.isfinite(cgkd_diversity_loss(torch.zeros(3, 7)))


def test_diversity_matches_the_pairwise_loop():
    c = torch.randn(5, 7)
    pairs = [F.cosine_similarity(c[i], c[j], dim=0) for i in range(5) for j in range(5) if i != j]
    assert float(cgkd_diversity_loss(c)) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)


@pytest.mark.parametrize("gate", [False, True])
def test_terms_reach_the_right_parameters(clip, text, gate, one_thread):
    g, d, head = _tiny_gan()
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    fake = g(torch.randn(4, 8))
    _, feat_real = d(real)
    _, feat_fake = d(fake.detach())  # D's step sees a detached fake; the diversity term sees G's graph
    with torch.no_grad():  # CLIP is D's target
        i_real, i_fake = clip(real), clip(fake)
    terms = kddlgan_d_terms(i_real, i_fake, head(feat_real), head(feat_fake), text, gate)
    terms["cgkd_div"] = kddlgan_g_term(clip(fake), text)
    assert set(terms) == {"agkd", "cgkd_div", "cgkd_match"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())

    for name in ("agkd", "cgkd_match"):
        for module in (g, d, head):
            module.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        assert _grad_norm(d) > 0 and _grad_norm(head) > 0, name
        assert _grad_norm(g) == 0, f"{name} must not train G"

    for module in (g, d, head):
        module.zero_grad(set_to_none=True)
    terms["cgkd_div"].backward()
    assert _grad_norm(g) > 0  # the diversity term reaches G through I(G(z))
    assert _grad_norm(d) == 0 and _grad_norm(head) == 0


def test_aggregation_adds_the_crossed_pairs():
    i_real, i_fake, d_real, d_fake = (torch.randn(4, EMBED) for _ in range(4))
    plain = agkd_loss(i_real, i_fake, d_real, d_fake, aggregate=False)
    crossed = F.l1_loss(d_fake, i_real) + F.l1_loss(d_real, i_fake)
    assert float(agkd_loss(i_real, i_fake, d_real, d_fake, aggregate=True)) == pytest.approx(float(plain + crossed))


# -------------------------------------------------------------------------------------------------------- metrics


def test_blur_lowers_laplacian_variance():
    sharp = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = F.avg_pool2d(F.pad(sharp, [1, 1, 1, 1], mode="replicate"), 3, stride=1)
    assert laplacian_variance(blurred) < 0.5 * laplacian_variance(sharp)
    assert laplacian_variance(torch.full((2, 1, 16, 16), 0.5)) == 0.0
    with pytest.raises(GankdError):
        laplacian_variance(torch.rand(3, 32, 32))


def test_feature_diversity():
    assert feature_diversity(np.ones((5, 2048))) == 0.0
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert feature_diversity(two) == pytest.approx(5.0)
    spread = np.random.default_rng(0).normal(size=(8, 16))
    assert feature_diversity(spread * 2) == pytest.approx(2 * feature_diversity(spread))
    with pytest.raises(GankdError):
        feature_diversity(np.ones((1, 4)))
