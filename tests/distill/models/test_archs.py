"""Registry-parametrized: forward, backward, no NaN, save -> load -> identical output, features, for every arch and
student width."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import build_student, load_model, save_model

from helpers.models import config_id, inputs_for, tiny_configs

CONFIGS = tiny_configs()
WIDTHS = [1.0, 0.5, 0.25, 0.125, 0.3]


def _expected_out_shape(config, inputs):
    x = inputs[0]
    if config.arch == "stylegan2_discriminator":
        return (x.shape[0], 1)
    if config.kind == "discriminator":
        return (x.shape[0], 1, x.shape[2], x.shape[3])
    if config.arch == "stylegan2_generator":
        return (x.shape[0], 3, config.kwargs["size"], config.kwargs["size"])
    if config.task == "face_sr":
        return tuple(x.shape)
    return (x.shape[0], 3, x.shape[2] * config.scale, x.shape[3] * config.scale)


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"C{w:g}")
@pytest.mark.parametrize("teacher", CONFIGS, ids=config_id)
def test_forward_backward_no_nan(teacher, width):
    model, config = build_student(teacher, width=width)
    model.train()
    x = inputs_for(config)
    out = model(*x)
    assert out.shape == _expected_out_shape(config, x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    # GCFSR keeps the official noise strengths (numel 1) for its key names; its noise is zero, so they get no grad
    unused = {n for n, p in model.named_parameters() if config.arch == "gcfsr" and p.numel() == 1}
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and n not in unused]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: f"C{w:g}")
@pytest.mark.parametrize("teacher", CONFIGS, ids=config_id)
def test_save_load_identical(teacher, width, tmp_path):
    model, config = build_student(teacher, width=width)
    model.eval()
    x = inputs_for(config)
    with torch.no_grad():
        expected = model(*x)
    save_model(tmp_path / "m", model, config)
    loaded = load_model(tmp_path / "m")
    assert loaded.gankd_config == config
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("teacher", CONFIGS, ids=config_id)
def test_forward_features_match_forward(teacher):
    model = teacher.build().eval()
    x = inputs_for(teacher)
    if teacher.arch == "stylegan2_discriminator":  # its "feature" is the last-layer vector KD-DLGAN reads
        with torch.no_grad():
            logits, feat = model.forward_with_features(*x)
            torch.testing.assert_close(logits, model(*x), rtol=0, atol=0)
        assert feat.shape == (x[0].shape[0], model.final_linear[1].weight.shape[1])
        return
    with torch.no_grad():
        out, feats = model.forward_with_features(*x)
        plain = model(*x)
        only = model.forward_features(*x)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    assert isinstance(feats, list) and feats
    for a, b in zip(feats, only):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    last = feats[-1]
    if teacher.arch in ("stylegan2_generator", "gcfsr"):  # the full-resolution map before the last to-RGB
        assert last.shape[2:] == out.shape[2:]
        return
    if teacher.arch == "spandrel":  # no named tap: a 1x1 placeholder (feature KD is switched off for it)
        assert last.shape == (x[0].shape[0], 1, 1, 1)
        model.set_feature_tap("feats.0")  # PLKSR's first conv: an LR-size map
        last = model.forward_features(*x)[-1]
        assert last.dim() == 4 and last.shape[2:] == x[0].shape[2:]
        return
    num_feat = teacher.kwargs.get("num_feat", teacher.kwargs.get("feature_channels"))  # SPAN's name for it
    assert last.shape[1] == num_feat
    if teacher.kind == "generator":
        # the backbone map is at LR size (pixel-unshuffled for x2/x1 RRDB): what the MLP feature loss matches
        unshuffle = {4: 1, 2: 2, 1: 4}.get(teacher.kwargs.get("scale", 4), 1) if teacher.arch == "rrdbnet" else 1
        assert last.shape[2:] == (x[0].shape[2] // unshuffle, x[0].shape[3] // unshuffle)


def test_rrdb_features_are_the_trunk_before_upsampling():
    torch.manual_seed(1)
    cfg = CONFIGS[0]
    model = cfg.build().eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        feat = model.conv_first(x)
        trunk = feat + model.conv_body(model.body(feat))
        torch.testing.assert_close(model.forward_features(x)[0], trunk)
