"""Official .pth import: container choice (params_ema > params > bare), arch detection from shapes, strict load."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import GankdError, create_model, load_model
from gankd.distill.models.importers import detect_arch, import_pth
from gankd.distill.models.folder import save_model

DETECT = [
    ("rrdbnet", dict(scale=4, num_feat=16, num_block=3, num_grow_ch=8)),
    ("rrdbnet", dict(scale=2, num_feat=16, num_block=2, num_grow_ch=8)),  # x2plus
    ("rrdbnet", dict(scale=1, num_feat=8, num_block=1, num_grow_ch=4)),
    ("rrdbnet", dict(scale=4, num_feat=16, num_block=6, num_grow_ch=8)),  # anime 6B shape
    ("srvgg_compact", dict(num_feat=16, num_conv=4, upscale=4)),
    ("srvgg_compact", dict(num_feat=8, num_conv=2, upscale=2)),
    ("unet_discriminator_sn", dict(num_feat=8)),
]


@pytest.mark.parametrize("arch,kwargs", DETECT, ids=lambda v: str(v))
def test_detect_arch_from_shapes(arch, kwargs):
    model = create_model(arch, **kwargs)
    found_arch, found = detect_arch(model.state_dict())
    assert found_arch == arch
    assert {k: found[k] for k in kwargs} == kwargs


def test_full_size_x4plus_detected():
    with torch.device("meta"):
        sd = create_model("rrdbnet").state_dict()
    arch, kwargs = detect_arch(sd)
    assert (arch, kwargs["num_block"], kwargs["num_feat"], kwargs["num_grow_ch"], kwargs["scale"]) == \
        ("rrdbnet", 23, 64, 32, 4)


def test_prefers_params_ema_and_round_trips(tmp_path):
    ema = create_model("rrdbnet", num_feat=16, num_block=2, num_grow_ch=8)
    raw = create_model("rrdbnet", num_feat=16, num_block=2, num_grow_ch=8)
    torch.save({"params_ema": ema.state_dict(), "params": raw.state_dict()}, tmp_path / "RealESRGAN_tiny.pth")
    model, config = import_pth(tmp_path / "RealESRGAN_tiny.pth")
    assert config.provenance["container"] == "params_ema"
    assert config.scale == 4 and config.task == "sr" and config.input_range == (0.0, 1.0)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ema.eval()(x))
    save_model(tmp_path / "teacher", model, config)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "teacher")(x), ema(x), rtol=0, atol=0)


def test_params_then_bare_and_module_prefix(tmp_path):
    net = create_model("srvgg_compact", num_feat=8, num_conv=1)
    torch.save({"params": net.state_dict()}, tmp_path / "p.pth")
    assert import_pth(tmp_path / "p.pth")[1].provenance["container"] == "params"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "bare.pth")
    model, config = import_pth(tmp_path / "bare.pth")
    assert config.provenance["container"] is None and config.arch == "srvgg_compact"


def test_not_a_realesrgan_state_dict(tmp_path):
    torch.save({"params": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(GankdError, match=r"not a Real-ESRGAN RRDBNet.*first keys: fc.weight"):
        import_pth(tmp_path / "other.pth")


def test_inconsistent_state_dict_names_key_and_both_shapes(tmp_path):
    sd = create_model("rrdbnet", num_feat=16, num_block=2, num_grow_ch=8).state_dict()
    sd["body.1.rdb2.conv3.weight"] = torch.zeros(8, 30, 3, 3)
    torch.save({"params_ema": sd}, tmp_path / "bad.pth")
    with pytest.raises(GankdError, match=r"'body.1.rdb2.conv3.weight' has shape \[8, 30, 3, 3\] in the file but "
                                         r"\[8, 32, 3, 3\] in the model"):
        import_pth(tmp_path / "bad.pth")
