from __future__ import annotations

import pytest
import torch

from gankd.distill import ModelConfig, create_model
from gankd.distill.tools.inspect_model import student_table
from gankd.distill.models.cost import count_macs, count_params, parse_shape

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
    from gankd.distill.tools.inspect_model import format_table, student_table

    tiny = ModelConfig(arch="rrdbnet", kwargs={"num_feat": 16, "num_block": 1, "num_grow_ch": 8}, scale=4)
    rows = student_table(tiny, (1, 3, 16, 16), latency_runs=2)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in rows)
    assert "CPU ms" in format_table(rows)


def _modulated_conv_macs(size: int, channels: dict[int, int], style_dim: int) -> int:
    """Hand count of the 3x3 modulated convs of a StyleGAN2 synthesis net (no ToRGB, blur or mapping). The
    upsampling conv is a stride-2 transposed conv: its MACs are those of its (res/2)² input pixels."""
    macs = 4 * 4 * channels[4] * channels[4] * 9  # conv1 at 4x4
    res = 8
    while res <= size:
        macs += (res // 2) ** 2 * channels[res // 2] * channels[res] * 9 + res * res * channels[res] ** 2 * 9
        res *= 2
    return macs


def test_functional_convs_are_counted_for_stylegan2_and_gcfsr():
    """Modulated convs are F.conv calls, not nn.Conv2d modules: the count must still see them."""
    from gankd.distill.models.archs.stylegan2 import stylegan2_channels

    g = ModelConfig(arch="stylegan2_generator", kwargs={"size": 32, "style_dim": 32, "n_mlp": 2, "narrow": 0.0625},
                    task="generate", scale=None, input_range=(-1.0, 1.0))
    macs = count_macs(g.build(), ((1, 32),))
    floor = _modulated_conv_macs(32, stylegan2_channels(32, 2, 0.0625), 32)
    assert floor <= macs <= 1.5 * floor  # plus ToRGBs, modulation linears, the mapping net and FIR blurs
    assert count_macs(g.build(), ((4, 32),)) == 4 * macs
    rows = student_table(g, (1, 3, 64, 64))
    assert [r.name for r in rows] == ["model", "C=1/2", "C=1/4", "C=1/8"]
    assert rows[0].macs > rows[1].macs > rows[2].macs > 0
    face = ModelConfig(arch="gcfsr", kwargs={"out_size": 32, "num_style_feat": 32, "narrow": 0.0625}, task="face_sr",
                       scale=None, input_range=(-1.0, 1.0))
    face_rows = student_table(face, (2, 3, 64, 64))  # GCFSR works at its own size: 32x32, batch 2
    assert face_rows[0].macs == 2 * count_macs(face.build(), ((1, 3, 32, 32), (1,)))
