"""StyleGAN2 generator/discriminator: shapes, rosinality key names, importer, export, sampler, minibatch stddev.

Tiny widths throughout (size 32/64, style_dim 32, n_mlp 2, narrow 1/32) so the file runs in seconds on a loaded CPU.
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction

import pytest
import torch

from gankd.distill.models.archs import ops
from gankd.distill.models.archs.stylegan2 import PsiGenerator, StyleGAN2DiscriminatorConfig, StyleGAN2GeneratorConfig, StyleGAN2Sampler, stylegan2_channels
from gankd.distill.errors import GankdError
from gankd.distill.models.importers import import_rosinality
from gankd.distill.models.registry import create_model, get_arch, make_config
from gankd.distill.models.students import stylegan2_discriminator_student_kwargs, stylegan2_student_kwargs

G_KW = {"size": 32, "style_dim": 32, "n_mlp": 2, "narrow": 1 / 32}
D_KW = {"size": 32, "narrow": 1 / 32}

pytestmark = pytest.mark.usefixtures("one_thread")


def _g(**kw):
    return create_model("stylegan2_generator", **{**G_KW, **kw})


def _d(**kw):
    return create_model("stylegan2_discriminator", **{**D_KW, **kw})


def _z(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- registry and config


def test_registered_with_kind_and_family():
    g, d = get_arch("stylegan2_generator"), get_arch("stylegan2_discriminator")
    assert (g.kind, g.family, g.config_cls) == ("generator", "stylegan2", StyleGAN2GeneratorConfig)
    assert (d.kind, d.family, d.config_cls) == ("discriminator", "stylegan2_d", StyleGAN2DiscriminatorConfig)
    assert _g().config == StyleGAN2GeneratorConfig(**G_KW) and _d().config == StyleGAN2DiscriminatorConfig(**D_KW)


def test_config_validation_and_json_lists():
    assert StyleGAN2GeneratorConfig(blur_kernel=[1, 3, 3, 1]).blur_kernel == (1, 3, 3, 1)  # from JSON
    assert StyleGAN2DiscriminatorConfig(blur_kernel=[1, 2, 1]).blur_kernel == (1, 2, 1)
    for bad in ({"size": 48}, {"size": 4}, {"size": 2048}, {"narrow": 0}, {"n_mlp": 0}, {"style_dim": -1},
                {"channel_multiplier": 1.5}, {"lr_mlp": 0}, {"blur_kernel": [1]}):
        with pytest.raises(ValueError):
            StyleGAN2GeneratorConfig(**bad)
    with pytest.raises(ValueError, match="stddev_group"):
        StyleGAN2DiscriminatorConfig(stddev_group=-1)
    with pytest.raises(GankdError, match="size must be a power of 2"):
        make_config("stylegan2_generator", {"size": 100})


def test_channel_table():
    assert stylegan2_channels(1024, 2, 1.0) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128,
                                                512: 64, 1024: 32}
    assert stylegan2_channels(256, 1, 0.25) == {4: 128, 8: 128, 16: 128, 32: 128, 64: 64, 128: 32, 256: 16}
    assert min(stylegan2_channels(64, 2, 1e-4).values()) == 1


# ------------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("size", [32, 64])
def test_generator_forward_backward(size):
    g = _g(size=size)
    image = g(_z(2))
    assert image.shape == (2, 3, size, size) and torch.isfinite(image).all()
    image.square().mean().backward()
    grads = [p.grad for p in g.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert g.style[1].weight.grad.abs().sum() > 0 and g.input.input.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_forward_backward(size):
    d = _d(size=size)
    img = torch.randn(4, 3, size, size, requires_grad=True)
    logits = d(img)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert torch.isfinite(img.grad).all() and all(p.grad is not None for p in d.parameters())


def test_generator_features_and_synthesis():
    g = _g().eval()
    z = _z(3)
    with torch.no_grad():
        image = g(z)
        image2, feats = g.forward_with_features(z)
        assert torch.equal(image, image2) and len(feats) == 1
        assert feats[0].shape == (3, g.channels[32], 32, 32)
        assert torch.equal(g.forward_features(z)[0], feats[0])
        w = g.mapping(z)
        assert w.shape == (3, g.style_dim) and g.n_latent == 8
        assert torch.equal(g.synthesis(w), image)
        assert torch.equal(g.synthesis(w.unsqueeze(1).repeat(1, g.n_latent, 1)), image)  # per-layer ws
        const = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
        assert torch.equal(g.synthesis(w, noise=const), image)
        torch.nn.init.constant_(g.conv1.noise.weight, 1.0)  # make noise matter
        rng = torch.Generator().manual_seed(1)
        random = g.synthesis(w, noise_mode="random", generator=rng)
        assert not torch.equal(random, g(z)) and not torch.equal(g.synthesis(w, noise_mode="none"), g(z))
    with pytest.raises(GankdError, match="ws must be"):
        g.synthesis(torch.zeros(1, 5, 32))
    with pytest.raises(GankdError, match="noise must be a list of 7"):
        g.synthesis(w, noise=const[:3])
    with pytest.raises(GankdError, match="noise_mode"):
        g.synthesis(w, noise_mode="fixed")


def test_mean_latent_is_seeded():
    g = _g()
    a, b, c = g.mean_latent(256, seed=0), g.mean_latent(256, seed=0), g.mean_latent(256, seed=1)
    assert a.shape == (1, 32) and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("batch", [1, 3, 4, 5])
def test_discriminator_any_batch(batch):
    d = _d()
    logits, feature = d.forward_with_features(torch.randn(batch, 3, 32, 32))
    assert logits.shape == (batch, 1) and feature.shape == (batch, d.channels[4])
    assert torch.isfinite(logits).all()
    assert torch.allclose(d.final_linear[1](feature), logits)


def test_minibatch_stddev_matches_rosinality_grouping():
    d = _d(stddev_group=4)
    x = torch.randn(8, 5, 4, 4)
    # rosinality: view(group, -1, ...) groups sample i with i + N/group, i + 2N/group, ...
    std = torch.sqrt(x.view(4, 2, 5, 4, 4).var(0, unbiased=False) + 1e-8).mean((1, 2, 3))
    out = d.minibatch_stddev(x)
    assert out.shape == (8, 6, 4, 4)
    assert torch.allclose(out[:, 5, 0, 0], std.repeat(4))
    assert [d._stddev_group(n) for n in (1, 2, 3, 4, 5, 6, 9, 12)] == [1, 2, 3, 4, 1, 3, 3, 4]


def test_stddev_group_0_is_gcfsrs_discriminator_without_the_stddev_channel():
    with_std, without = _d(stddev_group=4), _d(stddev_group=0)
    c4 = without.final_linear[1].weight.shape[1]
    assert with_std.final_conv[0].weight.shape[1] == c4 + 1 and without.final_conv[0].weight.shape[1] == c4
    x = torch.randn(3, 3, 32, 32)
    single = torch.cat([without(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(without(x), single)  # each image scored on its own: no batch statistics


# ------------------------------------------------------------------------------------------ rosinality key names


def _expected_generator_keys(n_mlp: int, size: int) -> set[str]:
    """Written from rosinality/stylegan2-pytorch model.py, independently of our module tree."""
    keys = {"input.input", "to_rgb1.bias", "to_rgb1.conv.weight", "to_rgb1.conv.modulation.weight",
            "to_rgb1.conv.modulation.bias"}
    for i in range(1, n_mlp + 1):
        keys |= {f"style.{i}.weight", f"style.{i}.bias"}
    styled = ["conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight", "activate.bias"]
    keys |= {f"conv1.{s}" for s in styled}
    n_blocks = size.bit_length() - 1 - 2  # log2(size) - 2 upsampling blocks
    for b in range(n_blocks):
        keys |= {f"convs.{2 * b}.{s}" for s in styled} | {f"convs.{2 * b + 1}.{s}" for s in styled}
        keys.add(f"convs.{2 * b}.conv.blur.kernel")  # the upsampling conv of each block
        keys |= {f"to_rgbs.{b}.{s}" for s in ("bias", "upsample.kernel", "conv.weight", "conv.modulation.weight",
                                               "conv.modulation.bias")}
    keys |= {f"noises.noise_{i}" for i in range(2 * n_blocks + 1)}
    return keys


def _expected_discriminator_keys(size: int) -> set[str]:
    keys = {"convs.0.0.weight", "convs.0.1.bias", "final_conv.0.weight", "final_conv.1.bias",
            "final_linear.0.weight", "final_linear.0.bias", "final_linear.1.weight", "final_linear.1.bias"}
    for b in range(1, size.bit_length() - 1 - 2 + 1):
        keys |= {f"convs.{b}.{s}" for s in ("conv1.0.weight", "conv1.1.bias", "conv2.0.kernel", "conv2.1.weight",
                                            "conv2.2.bias", "skip.0.kernel", "skip.1.weight")}
    return keys


def test_generator_keys_are_rosinality():
    g = _g()
    assert set(g.state_dict()) == _expected_generator_keys(2, 32)
    sd = g.state_dict()
    assert sd["noises.noise_0"].shape == (1, 1, 4, 4) and sd["noises.noise_6"].shape == (1, 1, 32, 32)
    assert sd["conv1.conv.weight"].shape == (1, 16, 16, 3, 3) and sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert sd["convs.0.conv.blur.kernel"].shape == (4, 4)
    assert set(_g(size=64, n_mlp=3).state_dict()) == _expected_generator_keys(3, 64)


def test_discriminator_keys_are_rosinality():
    sd = _d().state_dict()
    assert set(sd) == _expected_discriminator_keys(32)
    assert sd["final_conv.0.weight"].shape == (16, 17, 3, 3) and sd["final_linear.0.weight"].shape == (16, 256)
    assert set(_d(size=64).state_dict()) == _expected_discriminator_keys(64)


def test_matches_basicsr_stylegan2(monkeypatch):
    """basicsr's StyleGAN2 (a rosinality derivative, other key names) gives the same images and logits."""
    arch = pytest.importorskip("basicsr.archs.stylegan2_arch")
    monkeypatch.setattr(arch, "fused_leaky_relu", ops.fused_leaky_relu)  # its CUDA-only op, ours on CPU
    monkeypatch.setattr(arch, "FusedLeakyReLU", ops.FusedLeakyReLU)
    ref_g = arch.StyleGAN2Generator(out_size=32, num_style_feat=32, num_mlp=2, channel_multiplier=2, narrow=1 / 32)
    ref_d = arch.StyleGAN2Discriminator(out_size=32, channel_multiplier=2, narrow=1 / 32)

    def rename(key):
        key = key.replace("style_mlp", "style").replace("constant_input.weight", "input.input")
        key = key.replace("style_conv1", "conv1").replace("style_convs", "convs").replace("modulated_conv", "conv")
        key = re.sub(r"^(conv1|convs\.\d+)\.weight$", r"\1.noise.weight", key)
        return re.sub(r"noises\.noise(\d+)", r"noises.noise_\1", key).replace("conv_body", "convs")

    g, d = _g(), _d()
    for ref, ours in ((ref_g, g), (ref_d, d)):
        with torch.no_grad():
            for name, tensor in ref.state_dict().items():
                if "bias" in name or name.endswith("weight") and tensor.numel() == 1:
                    tensor.normal_(0, 0.3)  # non-zero biases and noise strengths
        state = ours.state_dict()
        state.update({rename(k): v for k, v in ref.state_dict().items()})
        ours.load_state_dict(state)
    z = _z(3)
    with torch.no_grad():
        assert torch.allclose(g(z), ref_g([z], randomize_noise=False)[0], atol=1e-5)
        img = torch.randn(4, 3, 32, 32)
        assert torch.allclose(d(img), ref_d(img), atol=1e-5)


# ------------------------------------------------------------------------------------------------------ importer


def _rosinality_file(tmp_path, **extra):
    g, g_ema, d = _g(), _g(), _d()
    path = tmp_path / "550000.pt"
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(), "g_optim": {}, "d_optim": {},
                "args": argparse.Namespace(size=32, channel_multiplier=2, **extra)}, path)
    return path, {"g": g, "g_ema": g_ema, "d": d}


def test_import_rosinality_roundtrip(tmp_path):
    path, models = _rosinality_file(tmp_path)
    z, img = _z(2), torch.randn(2, 3, 32, 32)
    for which in ("g_ema", "g", "d"):
        model, config = import_rosinality(path, which=which)
        assert config.provenance["format"] == "rosinality" and config.provenance["which"] == which
        assert len(next(iter(config.provenance["files"].values()))) == 64  # sha256
        assert (config.task, config.scale, config.input_range) == ("generate", None, (-1.0, 1.0))
        with torch.no_grad():
            if which == "d":
                assert config.arch == "stylegan2_discriminator"
                assert config.kwargs == {"size": 32, "channel_multiplier": 2, "narrow": 1 / 32}
                assert torch.equal(model(img), models[which](img))
            else:
                assert config.arch == "stylegan2_generator"
                assert config.kwargs == {**G_KW, "channel_multiplier": 2, "lr_mlp": 0.01}
                assert torch.equal(model(z), models[which](z))
        config.build().load_state_dict(model.state_dict())  # the config alone rebuilds the arch


def test_import_rosinality_infers_multiplier_and_narrow(tmp_path):
    g = _g(size=64, channel_multiplier=1, narrow=1 / 16, n_mlp=3, style_dim=16)
    path = tmp_path / "ckpt.pt"
    torch.save({"g_ema": g.state_dict()}, path)
    _, config = import_rosinality(path)
    assert config.kwargs == {"size": 64, "style_dim": 16, "n_mlp": 3, "channel_multiplier": 1, "narrow": 1 / 16,
                             "lr_mlp": 0.01}


def test_import_rosinality_errors(tmp_path):
    with pytest.raises(GankdError, match="does not exist"):
        import_rosinality(tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"params_ema": _g().state_dict()}, wrong)
    with pytest.raises(GankdError, match="is not a rosinality StyleGAN2 checkpoint"):
        import_rosinality(wrong)
    only_d = tmp_path / "only_d.pt"
    torch.save({"d": _d().state_dict()}, only_d)
    with pytest.raises(GankdError, match="has no 'g_ema' state dict; it has d"):
        import_rosinality(only_d)
    with pytest.raises(GankdError, match="which must be one of"):
        import_rosinality(only_d, which="G")
    state = _g().state_dict()
    state["conv1.activate.bias"] = torch.zeros(5)
    bad = tmp_path / "bad.pt"
    torch.save({"g_ema": state}, bad)
    with pytest.raises(GankdError, match="'conv1.activate.bias' has shape") as info:
        import_rosinality(bad)
    assert "\n" not in str(info.value)


def test_other_pickled_classes_stay_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"g_ema": _g().state_dict(), "args": Fraction(1, 3)}, path)
    with pytest.raises(GankdError, match="refusing to load"):
        import_rosinality(path)


# ------------------------------------------------------------------------------------------- sampling and export


def test_psi_generator_and_sampler_truncation():
    g = _g().eval()
    psi_g = PsiGenerator(g).eval()
    assert torch.equal(psi_g.latent_avg, g.mean_latent())
    with torch.no_grad():
        a = psi_g(_z(2, seed=1), torch.zeros(2))
        b = psi_g(_z(2, seed=2), torch.zeros(2, 1))
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a[0], a[1], atol=1e-6)
        assert torch.allclose(psi_g(_z(2), torch.ones(2)), g(_z(2)), atol=1e-5)
        sampler = StyleGAN2Sampler(g, truncation=0.0)
        assert torch.allclose(sampler(_z(2, seed=1)), sampler(_z(2, seed=2)), atol=1e-6)


def test_sampler_mixing_is_seeded():
    g = _g().eval()
    z = _z(2)
    mix = StyleGAN2Sampler(g, mixing_prob=1.0, noise_mode="random")
    with torch.no_grad():
        a = mix(z, generator=torch.Generator().manual_seed(3))
        b = mix(z, generator=torch.Generator().manual_seed(3))
        plain = StyleGAN2Sampler(g)(z)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, plain)
    assert torch.equal(plain, g(z))
    with pytest.raises(GankdError, match="mixing_prob"):
        StyleGAN2Sampler(g, mixing_prob=2.0)


def test_onnx_export_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    g = _g().eval()
    path = tmp_path / "g.onnx"
    torch.onnx.export(g, (_z(2),), str(path), dynamo=False, opset_version=17, input_names=["z"],
                      output_names=["image"], dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        z = _z(n, seed=n)
        out = session.run(None, {"z": z.numpy()})[0]
        with torch.no_grad():
            assert float(abs(torch.from_numpy(out) - g(z)).max()) <= 1e-4


def test_onnx_export_psi_input(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    psi_g = PsiGenerator(_g()).eval()
    path = tmp_path / "psi.onnx"
    torch.onnx.export(psi_g, (_z(2), torch.ones(2)), str(path), dynamo=False, opset_version=17,
                      input_names=["z", "psi"], output_names=["image"],
                      dynamic_axes={"z": {0: "batch"}, "psi": {0: "batch"}, "image": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    z, psi = _z(3), torch.tensor([0.0, 0.5, 1.0])
    out = session.run(None, {"z": z.numpy(), "psi": psi.numpy()})[0]
    with torch.no_grad():
        assert float(abs(torch.from_numpy(out) - psi_g(z, psi)).max()) <= 1e-4


# ------------------------------------------------------------------------------------------------- ops, students


UPFIRDN_CASES = [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (2, 2)), (1, 2, (1, 1)), (2, 2, (0, 0)), (1, 1, (-1, 2)),
                 (2, 1, (1, -2)), (4, 1, (3, 2)), (1, 4, (0, 1))]


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 1), ((1, 2), (3, 4))])
def test_upfirdn2d_equals_basicsr_native(kernel):
    native = pytest.importorskip("basicsr.ops.upfirdn2d.upfirdn2d").upfirdn2d_native
    x = torch.randn(2, 3, 9, 7)
    k = ops.make_kernel(kernel)
    for up, down, (pad0, pad1) in UPFIRDN_CASES:
        expected = native(x, k, up, up, down, down, pad0, pad1, pad0, pad1)
        out = ops.upfirdn2d(x, k, up=up, down=down, pad=(pad0, pad1))
        assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-6), (up, down, pad0, pad1)


def test_student_kwargs():
    teacher = {"size": 256, "style_dim": 512, "n_mlp": 8, "narrow": 0.5}
    assert stylegan2_student_kwargs(teacher, 0.25, 4) == {**teacher, "narrow": 0.125, "n_mlp": 4}
    assert stylegan2_student_kwargs(teacher, 0.5, None)["n_mlp"] == 8
    assert teacher["narrow"] == 0.5  # not mutated
    assert stylegan2_discriminator_student_kwargs({"size": 64}, 0.5, 3) == {"size": 64, "narrow": 0.5}
    with pytest.raises(ValueError):
        stylegan2_student_kwargs(teacher, 0.5, 0)
    student = create_model("stylegan2_generator", **stylegan2_student_kwargs(G_KW, 0.5, 1))
    assert student.channels[4] == 8 and len(student.style) == 2
