"""Official Real-ESRGAN/BasicSR checkpoints load strictly: the key names of RealESRGAN_x4plus.pth, and equality
with BasicSR's own classes (basicsr-fixed) on the same weights."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import create_model


def test_x4plus_official_key_names_and_shapes():
    sd = create_model("rrdbnet").state_dict()
    assert len(sd) == 2 + 23 * 3 * 5 * 2 + 5 * 2  # conv_first, 23 RRDB x 3 RDB x 5 convs, 5 tail convs
    assert list(sd)[:2] == ["conv_first.weight", "conv_first.bias"]
    assert sd["body.22.rdb3.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    assert [k for k in sd if not k.startswith("body.")][2:] == [
        "conv_body.weight", "conv_body.bias", "conv_up1.weight", "conv_up1.bias", "conv_up2.weight",
        "conv_up2.bias", "conv_hr.weight", "conv_hr.bias", "conv_last.weight", "conv_last.bias"]
    assert sum(v.numel() for v in sd.values()) == 16_697_987  # RealESRGAN_x4plus


def test_x2plus_takes_pixel_unshuffled_input():
    sd = create_model("rrdbnet", scale=2).state_dict()
    assert sd["conv_first.weight"].shape == (64, 12, 3, 3)


def test_discriminator_official_spectral_norm_keys():
    sd = create_model("unet_discriminator_sn").state_dict()
    assert {"conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv0.weight", "conv9.bias"} <= set(sd)
    assert "conv1.weight" not in sd


def test_srvgg_official_keys():
    sd = create_model("srvgg_compact", num_conv=16).state_dict()
    assert "body.1.weight" in sd and sd["body.1.weight"].shape == (64,)  # PReLU
    assert sd["body.34.weight"].shape == (48, 64, 3, 3)


CASES = [
    ("rrdbnet_arch", "RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=16, num_block=2, num_grow_ch=8),
     "rrdbnet", dict(scale=4, num_feat=16, num_block=2, num_grow_ch=8), 12),
    ("rrdbnet_arch", "RRDBNet", dict(num_in_ch=3, num_out_ch=3, scale=2, num_feat=16, num_block=1, num_grow_ch=8),
     "rrdbnet", dict(scale=2, num_feat=16, num_block=1, num_grow_ch=8), 12),
    ("srvgg_arch", "SRVGGNetCompact", dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=3, upscale=4),
     "srvgg_compact", dict(num_feat=16, num_conv=3, upscale=4), 12),
    ("discriminator_arch", "UNetDiscriminatorSN", dict(num_in_ch=3, num_feat=8), "unet_discriminator_sn",
     dict(num_feat=8), 32),
]


@pytest.mark.parametrize("module,cls,their_kwargs,arch,our_kwargs,size", CASES, ids=lambda v: str(v)[:20])
def test_same_output_as_basicsr(module, cls, their_kwargs, arch, our_kwargs, size):
    archs = pytest.importorskip(f"basicsr.archs.{module}", reason="basicsr-fixed is part of gankd[all]")
    torch.manual_seed(0)
    theirs = getattr(archs, cls)(**their_kwargs).eval()
    ours = create_model(arch, **our_kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
