"""GCFSR (face SR generator) and the face data: shapes, conditioning, official key names, import, ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gankd.distill import ModelConfig, create_model
from gankd.distill.models.archs.gcfsr import GCFSR, GCFSRConfig
from gankd.distill.errors import GankdError
from gankd.distill.data.faces import DEFAULT_FACTORS, face_images, gcfsr_lq, imresize, lfw_faces
from gankd.distill.models.importers import import_gcfsr
from gankd.distill.models.students import gcfsr_student_kwargs

TINY = {"out_size": 64, "num_style_feat": 16, "narrow": 1 / 32}  # 16 channels everywhere below 128 px


def tiny(**overrides) -> GCFSR:
    torch.manual_seed(0)
    return create_model("gcfsr", **{**TINY, **overrides})


def lq_batch(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ------------------------------------------------------------------------------------------------ the network


@pytest.mark.parametrize("size", [64, 128])
def test_forward_backward_shapes(one_thread, size):
    model = tiny(out_size=size)
    x, scale = lq_batch(2, size), torch.tensor([8.0, 32.0])
    out, feats = model.forward_with_features(x, scale)
    assert out.shape == (2, 3, size, size)
    channels = model.config.channels()[size]
    assert [f.shape for f in feats] == [(2, channels, size, size)]
    assert torch.equal(model.forward_features(x, scale)[0], feats[0])
    (out.square().mean() + feats[0].mean()).backward()
    grads = [p.grad for n, p in model.named_parameters() if not n.endswith(".weight") or p.ndim > 1]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv_body_first[0].weight.grad.abs().sum() > 0  # the encoder is in the graph
    assert torch.isfinite(out).all()


def test_scale_conditions_the_output_and_forward_is_deterministic(one_thread):
    model = tiny().eval()
    x = lq_batch()
    with torch.no_grad():
        a = model(x, torch.tensor([4.0, 4.0]))
        b = model(x, torch.tensor([[32.0], [32.0]]))  # [N, 1] works as [N]
        again = model(x, torch.tensor([4.0, 4.0]))
        cond = model.forward_cond(x, torch.tensor([[4.0 / 64], [4.0 / 64]]))  # in_size = scale / cond_norm (64)
        single = model(x[1:], torch.tensor([4.0]))
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, again)
    assert torch.allclose(a, cond, atol=1e-6)
    assert torch.allclose(a[1:], single, atol=1e-5)  # no cross-talk between batch items


def test_noise_strength_does_not_enter_the_graph(one_thread):
    model = tiny().eval()
    x, s = lq_batch(), torch.tensor([8.0, 8.0])
    with torch.no_grad():
        before = model(x, s)
        for conv in [model.style_conv1, *model.style_convs]:
            conv.weight.fill_(3.0)
        assert torch.equal(before, model(x, s))


def test_cond_norm_is_applied_inside_the_graph(one_thread):
    a, b = tiny(cond_norm=32.0).eval(), tiny(cond_norm=64.0).eval()
    b.load_state_dict(a.state_dict())
    x = lq_batch()
    with torch.no_grad():
        assert torch.allclose(a(x, torch.tensor([8.0, 8.0])), b(x, torch.tensor([16.0, 16.0])), atol=1e-6)


# ------------------------------------------------------------------------------------------------ official keys


def _style_conv_keys(prefix: str) -> set[str]:
    return {f"{prefix}.weight", f"{prefix}.modulated_conv.weight", f"{prefix}.modulated_conv.modulation.weight",
            f"{prefix}.modulated_conv.modulation.bias", f"{prefix}.activate.bias"}


def _to_rgb_keys(prefix: str) -> set[str]:
    return {f"{prefix}.bias", f"{prefix}.modulated_conv.weight", f"{prefix}.modulated_conv.modulation.weight",
            f"{prefix}.modulated_conv.modulation.bias"}


def official_keys_64() -> set[str]:
    """Written out from the official GCFSR(out_size=64): log_size 6, two encoder downs, three condition levels
    (64, 32, 16), two decoder levels (32, 64), noise buffers noise0..noise4."""
    keys = {"conv_body_first.0.weight", "conv_body_first.1.bias", "final_conv.0.weight", "final_conv.1.bias",
            "final_down1.1.weight", "final_down1.2.bias", "final_down2.1.weight", "final_down2.2.bias",
            "final_linear.weight", "final_linear.bias"}
    for i in range(2):  # ConvLayer(downsample): 0 = blur (no params), 1 = conv, 2 = activation bias
        keys |= {f"conv_body_down.{i}.1.weight", f"conv_body_down.{i}.2.bias"}
    for i in range(3):
        keys |= {f"condition_scale1.{i}.weight", f"condition_scale1.{i}.bias", f"condition_scale2.{i}.weight",
                 f"condition_scale2.{i}.bias", f"condition_shift.{i}.0.weight", f"condition_shift.{i}.0.bias"}
    keys |= _style_conv_keys("style_conv1") | _to_rgb_keys("to_rgb1")
    for i in range(4):
        keys |= _style_conv_keys(f"style_convs.{i}")
    for i in range(2):
        keys |= _to_rgb_keys(f"to_rgbs.{i}")
    keys |= {f"noises.noise{i}" for i in range(5)}
    return keys


def test_official_key_names_small():
    sd = tiny().state_dict()
    assert set(sd) == official_keys_64()
    assert sd["final_linear.weight"].shape == (16 * 6, 8 * 16)  # num_latent 6, channels[4] // 2 * 4 * 4 inputs
    assert sd["noises.noise4"].shape == (1, 1, 16, 16)


def test_official_1024_layout_on_meta():
    with torch.device("meta"):
        model = create_model("gcfsr")
    sd = model.state_dict()
    assert model.config == GCFSRConfig() and model.config.out_size == 1024 and model.config.cond_norm == 64.0
    expected = {
        "conv_body_first.0.weight": (32, 3, 3, 3),
        "conv_body_down.5.1.weight": (512, 512, 3, 3),
        "final_down2.1.weight": (256, 512, 3, 3),
        "final_linear.weight": (512 * 14, 2 * 4 * 512),
        "condition_scale1.0.weight": (32, 1),
        "condition_scale2.6.bias": (512,),
        "condition_shift.3.0.weight": (256, 256, 3, 3),
        "style_conv1.modulated_conv.weight": (1, 512, 512, 3, 3),
        "style_convs.0.modulated_conv.weight": (1, 512, 512, 3, 3),
        "style_convs.11.modulated_conv.weight": (1, 32, 32, 3, 3),
        "style_convs.11.weight": (1,),
        "to_rgbs.5.modulated_conv.weight": (1, 3, 32, 1, 1),
        "to_rgbs.5.bias": (1, 3, 1, 1),
        "noises.noise12": (1, 1, 256, 256),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert "style_convs.12.weight" not in sd and "condition_scale1.7.weight" not in sd
    assert "noises.noise13" not in sd and not any("kernel" in k for k in sd)


def test_config_round_trips_through_json():
    config = ModelConfig(arch="gcfsr", kwargs={**TINY, "resample_kernel": [1, 3, 3, 1]}, task="face_sr", scale=None,
                         input_range=(-1.0, 1.0))
    again = ModelConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again.build().config == config.build().config
    assert again.build().config.resample_kernel == (1, 3, 3, 1)
    with pytest.raises(GankdError, match="out_size"):
        create_model("gcfsr", out_size=96)


def test_student_kwargs():
    kwargs = gcfsr_student_kwargs({"out_size": 64, "narrow": 0.5}, width=0.25, depth=None)
    assert kwargs == {"out_size": 64, "narrow": 0.125}
    assert gcfsr_student_kwargs({}, width=0.5, depth=None)["narrow"] == 0.5
    with pytest.raises(GankdError, match="depth"):
        gcfsr_student_kwargs({}, width=0.5, depth=2)
    with pytest.raises(GankdError, match="width"):
        gcfsr_student_kwargs({}, width=0, depth=None)


# ------------------------------------------------------------------------------------------------ import


def test_import_round_trip(tmp_path, one_thread):
    model = tiny().eval()
    sd = model.state_dict()
    path = tmp_path / "gcfsr_tiny.pth"
    torch.save({"params_ema": sd, "params": {k: v + 1 for k, v in sd.items()}}, path)
    imported, config = import_gcfsr(path)
    assert config.arch == "gcfsr" and config.task == "face_sr" and config.scale is None
    assert config.input_range == (-1.0, 1.0)
    assert config.kwargs["out_size"] == 64 and config.kwargs["num_style_feat"] == 16
    assert config.kwargs["channel_multiplier"] == 2 and config.kwargs["narrow"] == pytest.approx(1 / 32)
    assert config.provenance["format"] == "gcfsr" and config.provenance["container"] == "params_ema"
    assert len(config.provenance["files"]["gcfsr_tiny.pth"]) == 64  # sha256
    x, s = lq_batch(), torch.tensor([4.0, 16.0])
    with torch.no_grad():
        assert torch.equal(imported.eval()(x, s), model(x, s))  # params_ema, not params


def test_import_errors(tmp_path):
    with pytest.raises(GankdError, match="does not exist"):
        import_gcfsr(tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(4, 3, 3, 3)}}, other)
    with pytest.raises(GankdError, match="not a GCFSR checkpoint"):
        import_gcfsr(other)
    sd = tiny().state_dict()
    sd["style_convs.1.modulated_conv.weight"] = torch.zeros(1, 16, 15, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save({"params_ema": sd}, bad)
    with pytest.raises(GankdError, match=r"style_convs\.1\.modulated_conv\.weight") as info:
        import_gcfsr(bad)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ ONNX


def test_onnx_two_inputs_dynamic_batch(tmp_path, one_thread):
    ort = pytest.importorskip("onnxruntime")
    model = tiny().eval()
    path = tmp_path / "gcfsr.onnx"
    example = (lq_batch(1), torch.tensor([8.0]))
    torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17, input_names=["image", "scale"],
                      output_names=["output"],
                      dynamic_axes={"image": {0: "batch"}, "scale": {0: "batch"}, "output": {0: "batch"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "scale"]
    x = lq_batch(2)
    for scale in ([4.0, 32.0], [16.0, 16.0]):
        s = torch.tensor(scale)
        with torch.no_grad():
            ref = model(x, s).numpy()
        got = session.run(None, {"image": x.numpy(), "scale": s.numpy()})[0]
        assert got.shape == (2, 3, 64, 64)
        assert np.abs(got - ref).max() <= 1e-4


# ------------------------------------------------------------------------------------------------ face data


def test_lfw_faces_and_splits():
    faces = lfw_faces(32)
    assert faces.shape == (100, 3, 32, 32) and faces.dtype == torch.float32
    assert faces.min() >= 0 and faces.max() <= 1 and faces.std() > 0.1
    assert torch.equal(faces[:, 0], faces[:, 2])  # grey, repeated to RGB
    train, validation = face_images("train", 64), face_images("validation", 64)
    assert len(train) == 84 and len(validation) == 17
    assert all(t.shape == (3, 64, 64) and 0 <= t.min() and t.max() <= 1 for t in train + validation)
    assert not torch.equal(validation[0][0], validation[0][2])  # the astronaut is in colour
    assert torch.equal(validation[1], lfw_faces(64)[84])  # fixed split
    with pytest.raises(GankdError, match="split"):
        face_images("test", 64)


def test_gcfsr_lq_shape_range_and_detail():
    hr = torch.stack(face_images("validation", 64)[:4]) * 2 - 1
    errors = []
    for factor in (4, 8, 16, 32):
        lq = gcfsr_lq(hr, factor)
        assert lq.shape == hr.shape and lq.min() >= -1 and lq.max() <= 1
        assert torch.allclose(lq, (torch.round((lq + 1) / 2 * 255) / 255) * 2 - 1, atol=1e-6)  # 8-bit levels
        errors.append((lq - hr).abs().mean().item())
    assert errors == sorted(errors) and errors[0] < errors[-1] / 2
    assert max(DEFAULT_FACTORS) == 32 and min(DEFAULT_FACTORS) == 4
    with pytest.raises(GankdError, match="divisible"):
        gcfsr_lq(hr, 3)


def test_imresize_matches_basicsr_matlab():
    matlab = pytest.importorskip("basicsr.utils.matlab_functions", reason="basicsr-fixed is part of gankd[all]")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for scale in (1 / 4, 1 / 16, 4):
        ours = imresize(x, scale)
        theirs = torch.stack([matlab.imresize(image, scale) for image in x])
        assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("upsample", [False, True])
def test_gcfsr_flavour_of_the_stylegan2_layers(upsample):
    """GCFSR builds on StyleGAN2's layers with the official GCFSR keys (FIR kernels out of the state dict) and the
    blur after demodulation: the same function as the rosinality order, up to float rounding."""
    from gankd.distill.models.archs.stylegan2 import ModulatedConv2d, ToRGB

    torch.manual_seed(0)
    ours = ModulatedConv2d(5, 6, 3, 8, upsample=upsample, kernel_in_state_dict=False, blur_demodulated=True)
    reference = ModulatedConv2d(5, 6, 3, 8, upsample=upsample)
    reference.load_state_dict(ours.state_dict(), strict=not upsample)  # the reference also saves blur.kernel
    assert set(ours.state_dict()) == {"weight", "modulation.weight", "modulation.bias"}
    x, w = torch.randn(2, 5, 8, 8), torch.randn(2, 8)
    assert torch.allclose(ours(x, w), reference(x, w), atol=1e-5)
    to_rgb = ToRGB(6, 8, upsample=upsample, kernel_in_state_dict=False, conv_name="modulated_conv")
    assert set(to_rgb.state_dict()) == {"bias", "modulated_conv.weight", "modulated_conv.modulation.weight",
                                        "modulated_conv.modulation.bias"}
