"""Teacher-initialised students (distill/models/surgery.py): cuts that keep everything reproduce the teacher, cut
weights
really are the teacher's top-L1 filters laid out consistently, and bad requests give one-line GankdErrors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gankd.distill import GankdError, ModelConfig, build_student, load_model, save_model, student_config
from gankd.distill.models.surgery import even_blocks, greedy_blocks
from gankd.serve.psnr import psnr

FRACTIONS = [0.5, 0.25, 0.125]


def tiny_teacher(scale: int = 4, num_block: int = 3, num_up_feat: int | None = None, seed: int = 0) -> nn.Module:
    """A tiny RRDBNet teacher as load_model returns it: eval mode, ModelConfig in ``gankd_config``."""
    kwargs = {"scale": scale, "num_feat": 16, "num_block": num_block, "num_grow_ch": 8}
    if num_up_feat is not None:
        kwargs["num_up_feat"] = num_up_feat
    config = ModelConfig(arch="rrdbnet", kwargs=kwargs, scale=scale, provenance={"source": "tiny"})
    torch.manual_seed(seed)
    model = config.build().eval()
    model.gankd_config = config
    return model


def tiny_discriminator(num_feat: int = 8) -> nn.Module:
    config = ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": num_feat}, scale=None)
    model = config.build()
    with torch.no_grad():  # a few training forwards, so weight_u/weight_v are the teacher's converged vectors
        for _ in range(3):
            model(torch.rand(1, 3, 32, 32))
    model.eval().gankd_config = config
    return model


def lr_batch(size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def rows_of(student_w: torch.Tensor, teacher_w: torch.Tensor) -> list[int]:
    """For each student filter, the index of the one teacher filter equal to it (fails if there is none)."""
    flat = teacher_w.detach().flatten(1)
    found = []
    for row in student_w.detach().flatten(1):
        hits = (flat == row).all(1).nonzero().flatten().tolist()
        assert len(hits) == 1, "a student filter is not a copy of exactly one teacher filter"
        found.append(hits[0])
    return found


@pytest.mark.parametrize("scale,num_up_feat", [(4, None), (2, None), (4, 24)])
def test_uncut_student_reproduces_the_teacher(scale, num_up_feat):
    teacher = tiny_teacher(scale=scale, num_up_feat=num_up_feat)
    student, cfg = build_student(teacher, init="teacher")
    x = lr_batch()
    with torch.no_grad():
        assert torch.equal(student.eval()(x), teacher(x))
    up = num_up_feat or 16
    assert cfg.provenance["init"] == "teacher" and cfg.provenance["blocks"] == [0, 1, 2]
    assert cfg.provenance["up_feat"] == up and student.conv_up1.out_channels == up


@pytest.mark.parametrize("width", FRACTIONS)
@pytest.mark.parametrize("blocks", [[1], [0, 2]])
def test_width_and_depth_cut_copies_consistent_teacher_filters(width, blocks, tmp_path):
    teacher = tiny_teacher()
    student, cfg = build_student(teacher, width=width, init="teacher", blocks=blocks)
    folder = save_model(tmp_path / "student", student, cfg)
    reloaded = load_model(folder)  # strict load from the folder alone
    with torch.no_grad():
        out = reloaded(lr_batch())
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()

    s, t = student.state_dict(), teacher.state_dict()
    trunk = rows_of(s["conv_first.weight"], t["conv_first.weight"])
    assert len(trunk) == round(16 * width) and trunk == sorted(trunk)
    assert torch.equal(s["conv_first.bias"], t["conv_first.bias"][trunk])
    assert torch.equal(s["conv_body.weight"], t["conv_body.weight"][trunk][:, trunk])
    for new, old in enumerate(blocks):
        for rdb in ("rdb1", "rdb2", "rdb3"):
            _check_rdb_layout(s, t, f"body.{new}.{rdb}.", f"body.{old}.{rdb}.", trunk)
    up1 = rows_of(s["conv_up1.weight"], t["conv_up1.weight"][:, trunk])
    up2 = rows_of(s["conv_up2.weight"], t["conv_up2.weight"][:, up1])
    hr = rows_of(s["conv_hr.weight"], t["conv_hr.weight"][:, up2])
    assert torch.equal(s["conv_last.weight"], t["conv_last.weight"][:, hr])


def _check_rdb_layout(s: dict, t: dict, new: str, old: str, trunk: list[int]) -> None:
    # conv_i reads cat(x, x1, .., x_{i-1}): its inputs are the trunk set then each grow set, offset by position.
    inputs = list(trunk)
    for i in range(1, 5):
        grow = rows_of(s[f"{new}conv{i}.weight"], t[f"{old}conv{i}.weight"][:, inputs])
        assert torch.equal(s[f"{new}conv{i}.bias"], t[f"{old}conv{i}.bias"][grow])
        inputs += [16 + (i - 1) * 8 + g for g in grow]
    assert torch.equal(s[f"{new}conv5.weight"], t[f"{old}conv5.weight"][trunk][:, inputs])
    assert torch.equal(s[f"{new}conv5.bias"], t[f"{old}conv5.bias"][trunk])


def test_width_cut_keeps_the_highest_l1_filters():
    teacher = tiny_teacher()
    trunk, grow, up = [2, 7, 11, 14], [1, 6], [0, 5, 9, 15]  # width 1/4: 4 of 16 features, 2 of 8 grow channels
    with torch.no_grad():
        for name, param in teacher.named_parameters():
            if name.endswith("weight") and ("conv_first" in name or "conv_body" in name or "conv5" in name):
                param[trunk] *= 10
            elif name.endswith("weight") and "body." in name:
                param[grow] *= 10
            elif name.endswith("weight") and name.startswith(("conv_up", "conv_hr")):
                param[up] *= 10
    student, _ = build_student(teacher, width=0.25, init="teacher")
    s, t = student.state_dict(), teacher.state_dict()
    assert rows_of(s["conv_first.weight"], t["conv_first.weight"]) == trunk
    assert rows_of(s["body.1.rdb2.conv3.weight"], t["body.1.rdb2.conv3.weight"][:, trunk + [16 + g for g in grow]
                                                                                + [24 + g for g in grow]]) == grow
    assert rows_of(s["conv_up1.weight"], t["conv_up1.weight"][:, trunk]) == up


def test_even_blocks_spacing():
    for n in (1, 3, 6, 23):
        for k in range(1, n + 1):
            kept = even_blocks(n, k)
            assert len(set(kept)) == k and kept == sorted(kept) and kept[0] == 0
            assert k == 1 or kept[-1] == n - 1
            assert all(abs(b - i * (n - 1) / max(k - 1, 1)) <= 0.5 for i, b in enumerate(kept))


@pytest.mark.parametrize("blocks,kept", [("even", [0, 2]), ([1], [1]), ([2, 0], [0, 2])])
def test_depth_cut_drops_blocks_as_identities(blocks, kept):
    teacher = tiny_teacher()
    student, cfg = build_student(teacher, depth=len(kept), init="teacher", blocks=blocks)
    assert cfg.provenance["blocks"] == kept and cfg.kwargs["num_block"] == len(kept)
    reference = copy.deepcopy(teacher)
    reference.body = nn.Sequential(*[reference.body[i] for i in kept])  # a dropped RRDB is the identity
    x = lr_batch()
    with torch.no_grad():
        assert torch.equal(student.eval()(x), reference(x))


def _identity_rrdb(block: nn.Module) -> None:
    # rdb3 returns 0.2 * conv5(...) + y; conv5 = -5 * y makes it 0, so the RRDB returns its input.
    conv5 = block.rdb3.conv5
    with torch.no_grad():
        conv5.weight.zero_()
        conv5.bias.zero_()
        channels = conv5.out_channels
        conv5.weight[torch.arange(channels), torch.arange(channels), 1, 1] = -5.0


def test_greedy_keeps_the_block_that_matters():
    teacher = tiny_teacher(num_block=4)
    for index in (0, 1, 3):
        _identity_rrdb(teacher.body[index])
    calib = lr_batch(8)
    assert greedy_blocks(teacher, 1, calib) == [2]
    for k in range(1, 5):
        kept = greedy_blocks(teacher, k, calib)
        assert len(set(kept)) == k and 2 in kept and all(0 <= b < 4 for b in kept)
    _, cfg = build_student(teacher, depth=1, init="teacher", blocks="greedy", calib_lr=calib)
    assert cfg.provenance["blocks"] == [2] and even_blocks(4, 1) != [2]  # even spacing would have lost it


def test_teacher_init_is_closer_to_the_teacher_than_random_init():
    teacher = tiny_teacher()
    x = lr_batch(seed=5)
    with torch.no_grad():
        target = teacher(x)
        fast, _ = build_student(teacher, depth=2, init="teacher")
        slow, _ = build_student(teacher, depth=2)
        assert psnr(fast.eval()(x), target) > psnr(slow.eval()(x), target) + 10


def test_upsampler_width_is_independent_of_the_trunk(tmp_path):
    teacher = tiny_teacher(num_up_feat=24)
    student, cfg = build_student(teacher, width=0.25, up_feat=12, init="teacher")
    assert (student.conv_first.out_channels, student.conv_up1.in_channels) == (4, 4)
    assert (student.conv_up1.out_channels, student.conv_hr.out_channels, student.conv_last.in_channels) == (12,) * 3
    assert cfg.kwargs["num_up_feat"] == 12 and cfg.provenance["up_feat"] == 12
    x = lr_batch()
    with torch.no_grad():
        assert torch.equal(load_model(save_model(tmp_path / "s", student, cfg))(x), student.eval()(x))
    assert student_config(teacher, width=0.5).kwargs["num_up_feat"] == 12  # default: scaled like the trunk
    random_student, _ = build_student(teacher.gankd_config, width=0.5, up_feat=20)
    assert random_student.conv_up2.weight.shape[:2] == (20, 20)
    assert "num_up_feat" not in student_config(tiny_teacher(), width=0.5).kwargs  # official layout stays as it was


@pytest.mark.parametrize("width", [1.0] + FRACTIONS)
def test_discriminator_channel_selection(width):
    teacher = tiny_discriminator()
    student, cfg = build_student(teacher, width=width, init="teacher")
    assert cfg.kwargs["num_feat"] == round(8 * width) and cfg.provenance["init"] == "teacher"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, expected = student.eval()(x), teacher(x)
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    if width == 1.0:
        assert torch.equal(out, expected)
    s, t = student.state_dict(), teacher.state_dict()
    w = {name: (s[f"{name}.weight_orig"], t[f"{name}.weight_orig"]) for name in ("conv1", "conv2", "conv3",
                                                                                  "conv4", "conv5", "conv6")}
    x0 = rows_of(s["conv0.weight"], t["conv0.weight"])
    x1 = rows_of(w["conv1"][0], w["conv1"][1][:, x0])
    x2 = rows_of(w["conv2"][0], w["conv2"][1][:, x1])
    x3 = rows_of(w["conv3"][0], w["conv3"][1][:, x2])
    # the skip adds x4+x2, x5+x1, x6+x0 need the same channels on both sides
    assert rows_of(w["conv4"][0], w["conv4"][1][:, x3]) == x2
    assert rows_of(w["conv5"][0], w["conv5"][1][:, x2]) == x1
    assert rows_of(w["conv6"][0], w["conv6"][1][:, x1]) == x0
    for name in ("conv1", "conv3", "conv6") if width < 1 else ():  # u, v estimate the cut weight's spectral norm
        mat = s[f"{name}.weight_orig"].flatten(1)
        sigma = s[f"{name}.weight_u"] @ mat @ s[f"{name}.weight_v"]
        assert 0.95 < sigma / torch.linalg.matrix_norm(mat, ord=2) < 1 + 1e-4


def test_random_init_is_unchanged():
    cfg = student_config(tiny_teacher().gankd_config, width=0.5, depth=2)
    assert cfg.provenance["init"] == "random" and cfg.provenance["blocks"] is None
    assert cfg.kwargs["num_block"] == 2 and cfg.provenance["up_feat"] == 8


def test_bad_teacher_init_requests():
    teacher = tiny_teacher()
    with pytest.raises(GankdError, match="init='teacher' needs the loaded teacher model"):
        build_student(teacher.gankd_config, init="teacher")
    with pytest.raises(GankdError, match="unknown init 'copy'"):
        build_student(teacher, init="copy")
    with pytest.raises(GankdError, match="needs the pretrained compact model"):
        build_student(teacher, init="pretrained")
    with pytest.raises(GankdError, match="blocks='greedy' needs calib_lr"):
        build_student(teacher, depth=2, init="teacher", blocks="greedy")
    with pytest.raises(GankdError, match="a srvgg student starts from random weights"):
        build_student(teacher, family="srvgg", init="teacher")
    srvgg = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1}, scale=4)
    srvgg_model = srvgg.build()
    srvgg_model.gankd_config = srvgg
    with pytest.raises(GankdError, match="init='teacher' cuts RRDBNet teachers"):
        build_student(srvgg_model, width=0.5, init="teacher")
    with pytest.raises(GankdError, match="blocks must be distinct indices in 0..2"):
        build_student(teacher, init="teacher", blocks=[0, 3])
    with pytest.raises(GankdError, match="depth 1 does not match the 2 blocks"):
        build_student(teacher, depth=1, init="teacher", blocks=[0, 1])
    with pytest.raises(GankdError, match="applies to rrdb students with init='teacher' only"):
        build_student(teacher, blocks=[0, 1])
    with pytest.raises(GankdError, match="cannot keep 20 of the 16 channels of conv_up1"):
        build_student(teacher, init="teacher", up_feat=20)
    with pytest.raises(GankdError, match="teacher must be a ModelConfig or a model from"):
        build_student(nn.Conv2d(3, 3, 3), init="teacher")
    with pytest.raises(GankdError, match="block and channel cuts need an RRDBNet teacher"):
        greedy_blocks(srvgg_model, 1, lr_batch())
    with pytest.raises(GankdError, match="num_up_feat must be a positive integer or null"):
        ModelConfig(arch="rrdbnet", kwargs={"num_up_feat": 0})
