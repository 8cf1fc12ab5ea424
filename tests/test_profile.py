from __future__ import annotations

import pytest
import torch

from gankd.distill import ModelConfig, create_model
from gankd.distill.inspect import student_table
from gankd.distill.profile import count_macs, count_params, parse_shape

X4PLUS = ModelConfig(arch="rrdbnet", kwargs={}, scale=4)


def test_x4plus_gmacs_at_64():
    rows = student_table(X4PLUS, (1, 3, 64, 64))
    teacher = rows[0]
    assert round(teacher.macs / 1e9, 2) == 73.43
    assert teacher.params == 16_697_987
    names = [r.name for r in rows]
    assert names[:5] == ["model", "C=1/2", "C=1/4", "C=1/8", "SRVGG-32"]
    # last row: the SRVGG whose MACs match the C=1/4 RRDB student (within one channel's worth)
    assert names[5].startswith("SRVGG-") and abs(rows[5].macs / rows[2].macs - 1) < 0.03
    macs = [r.macs for r in rows[:4]]
    assert macs == sorted(macs, reverse=True)
    # narrow RRDB students: MACs shrink ~ C^2 in the trunk
    assert 0.05 < rows[2].macs / teacher.macs < 0.08


def test_macs_by_hand_for_one_conv():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    assert count_macs(conv, (2, 4, 5, 7)) == 2 * 6 * 5 * 7 * 4 * 9
    assert count_params(conv) == 6 * 4 * 9 + 6


def test_macs_scale_with_pixels_and_meta_leaves_model_untouched():
    model = create_model("srvgg_compact", num_feat=8, num_conv=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_macs(model, (1, 3, 32, 32)) == 4 * count_macs(model, (1, 3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("text", ["1x3x64", "ax3x64x64", "1x3x0x64", ""])
def test_bad_shapes(text):
    with pytest.raises(ValueError, match="NxCxHxW"):
        parse_shape(text)


def test_latency_column_is_measured():
    from gankd.distill.inspect import format_table, student_table

    tiny = ModelConfig(arch="rrdbnet", kwargs={"num_feat": 16, "num_block": 1, "num_grow_ch": 8}, scale=4)
    rows = student_table(tiny, (1, 3, 16, 16), latency_runs=2)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in rows)
    assert "CPU ms" in format_table(rows)
