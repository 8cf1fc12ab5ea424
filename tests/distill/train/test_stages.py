"""Each stage updates exactly the modules it names; three steps of every stage run on tiny images."""

from __future__ import annotations

import pytest
import torch

from gankd.distill import ModelConfig
from gankd.distill.train.adapters import FeatureMLP
from gankd.distill.train.recipe import recipe_from_dict
from gankd.distill.train.stages import Batch, Nets, NonFiniteLoss, plan_stages, step

TEACHER = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8},
                      task="sr", scale=4)
STUDENT = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 4, "num_block": 1, "num_grow_ch": 2},
                      task="sr", scale=4)


def _d(num_feat: int) -> torch.nn.Module:
    return ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": num_feat}, task="sr", scale=None).build()


def _nets(recipe) -> Nets:
    teacher = TEACHER.build().eval().requires_grad_(False)
    nets = Nets(teacher=teacher, student=STUDENT.build(), adapter=FeatureMLP(4, 16), teacher_d=_d(8),
                student_d=_d(4))
    betas = (0.9, 0.99)
    nets.optimizers = {"g": torch.optim.Adam([*nets.student.parameters(), *nets.adapter.parameters()], lr=1e-3,
                                             betas=betas),
                       "teacher_d": torch.optim.Adam(nets.teacher_d.parameters(), lr=1e-3, betas=betas),
                       "student_d": torch.optim.Adam(nets.student_d.parameters(), lr=1e-3, betas=betas)}
    return nets


def _batch(nets: Nets) -> Batch:
    lr = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        out, feats = nets.teacher.forward_with_features(lr)
    return Batch(inputs=(lr,), hr=torch.rand(2, 3, 32, 32), teacher_out=out, teacher_feat=feats[-1])


def _snapshot(nets: Nets) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in getattr(nets, name).parameters()]
            for name in ("teacher", "student", "adapter", "teacher_d", "student_d")}


CASES = [
    ({}, None),
    ({"feature_kd": False}, None),
    ({"discriminator": "teacher"}, None),
    ({"mode": "scratch"}, None),
    ({"adversarial": "logistic"}, None),
    ({"adversarial": "wgan"}, None),
    ({"adversarial": "lsgan"}, None),
]


@pytest.mark.parametrize("overrides", [c[0] for c in CASES], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "sdakd")
def test_each_stage_updates_exactly_its_modules(overrides):
    recipe = recipe_from_dict({"init": "random", **overrides})
    for stage in plan_stages(recipe, have_teacher_d=False):
        nets = _nets(recipe)
        batch = _batch(nets)
        before = _snapshot(nets)
        for i in range(3):  # three steps of the stage on tiny images
            logs = step(stage, nets, batch, recipe, where=f"{stage.name} step {i}")
            assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        after = _snapshot(nets)
        for name in before:
            changed = any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))
            assert changed == (name in stage.trains), f"{stage.name}: {name} changed={changed}"


def test_stage_losses_are_the_named_terms():
    recipe = recipe_from_dict({"init": "random"})
    names = {}
    for stage in plan_stages(recipe, have_teacher_d=False):
        nets = _nets(recipe)
        names[stage.name] = set(step(stage, nets, _batch(nets), recipe, where="t"))
    assert names["stage1"] == {"d_adv"}
    assert names["stage2"] == {"g_l1", "g_mlp", "g_total", "d_distill"}  # perceptual skipped: no VGG given
    assert names["stage3"] == {"g_l1", "g_mlp", "g_adv", "g_total", "d_adv"}


def test_r1_is_added_for_the_logistic_loss():
    recipe = recipe_from_dict({"init": "random", "adversarial": "logistic"})
    stage = plan_stages(recipe, have_teacher_d=False)[-1]
    nets = _nets(recipe)
    assert "d_r1" in step(stage, nets, _batch(nets), recipe, where="t")


def test_a_nan_loss_stops_before_any_update():
    recipe = recipe_from_dict({"init": "random"})
    stage = plan_stages(recipe, have_teacher_d=False)[1]
    nets = _nets(recipe)
    batch = _batch(nets)
    batch.teacher_out[0, 0, 0, 0] = float("nan")
    before = _snapshot(nets)
    with pytest.raises(NonFiniteLoss, match="stage2 step 7: loss 'l1' is nan"):
        step(stage, nets, batch, recipe, where="stage2 step 7")
    after = _snapshot(nets)
    assert all(torch.equal(a, b) for name in before for a, b in zip(before[name], after[name]))
