from __future__ import annotations

import pytest

from gankd.distill import GankdError, ModelConfig, build_student, student_config
from gankd.distill.models.students import width_label

X4PLUS = ModelConfig(arch="rrdbnet", kwargs={}, scale=4, provenance={"source": "test"})
D = ModelConfig(arch="unet_discriminator_sn", kwargs={}, scale=None)


@pytest.mark.parametrize("width,feat,grow", [(1, 64, 32), (0.5, 32, 16), (0.25, 16, 8), (0.125, 8, 4),
                                             (0.3, 19, 10)])
def test_width_scales_every_internal_channel(width, feat, grow):
    cfg = student_config(X4PLUS, width=width)
    assert (cfg.kwargs.get("num_feat", 64), cfg.kwargs.get("num_grow_ch", 32)) == (feat, grow)
    assert cfg.width == width and cfg.scale == 4
    model = cfg.build()
    assert model.body[0].rdb1.conv1.out_channels == grow and model.conv_up1.out_channels == feat


def test_depth_cuts_blocks():
    model, cfg = build_student(X4PLUS, width=0.25, depth=4)
    assert len(model.body) == 4 and cfg.kwargs["num_block"] == 4
    with pytest.raises(GankdError, match="depth must be between 1 and the teacher's 23"):
        student_config(X4PLUS, depth=24)


def test_srvgg_family_for_the_same_scale():
    cfg = student_config(X4PLUS, family="srvgg", num_feat=32)
    assert cfg.arch == "srvgg_compact"
    assert cfg.kwargs["upscale"] == 4 and cfg.kwargs["num_feat"] == 32 and cfg.kwargs["num_conv"] == 16
    assert cfg.width == 0.5  # 32 of the teacher's 64 features, read from the teacher's filled-in options
    x2 = ModelConfig(arch="rrdbnet", kwargs={"scale": 2}, scale=2)
    assert student_config(x2, family="srvgg", width=0.5, depth=8).kwargs["upscale"] == 2


def test_discriminator_student():
    cfg = student_config(D, width=0.25)
    assert cfg.kwargs["num_feat"] == 16
    assert cfg.build().conv3.weight_orig.shape[0] == 128


def test_bad_student_requests():
    with pytest.raises(GankdError, match=r"width must be a fraction in \(0, 1\]"):
        student_config(X4PLUS, width=1.5)
    with pytest.raises(GankdError, match="unknown student family 'unet'"):
        student_config(X4PLUS, family="unet")
    with pytest.raises(GankdError, match="family 'rrdb' needs an RRDBNet teacher"):
        student_config(ModelConfig(arch="srvgg_compact", kwargs={}, scale=4), family="rrdb")


def test_provenance_records_the_teacher():
    cfg = student_config(X4PLUS, width=0.25)
    assert cfg.provenance["student_of"] == "test" and cfg.provenance["init"] == "random"


def test_width_label():
    assert [width_label(w) for w in (0.5, 0.25, 0.125, 0.3, 1.0)] == ["1/2", "1/4", "1/8", "0.3", "1"]


def test_every_family_has_one_registered_student_rule(monkeypatch):
    """student_config dispatches on the family's registered rule: every student family and every discriminator
    family of the registry has one, and a second rule for a family is refused."""
    from gankd.distill.models.registry import get_arch, list_archs
    from gankd.distill.models.students import FAMILIES, STUDENT_RULES, student_rule

    d_families = {get_arch(name).family for name in list_archs("discriminator")}
    assert set(FAMILIES) | d_families == set(STUDENT_RULES)
    from gankd.distill.models import students

    monkeypatch.setattr(students, "STUDENT_RULES", dict(STUDENT_RULES))  # a rule that slipped in goes with the test
    with pytest.raises(ValueError, match="already has a rule"):
        student_rule("srvgg")(lambda ask: None)
