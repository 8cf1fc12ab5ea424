"""The one term table (gankd.distill.train.objective): every stage of every shipped recipe names terms and loop
actions that exist, weights are applied from the table, and freezing gives the flags back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gankd.distill.train.loop import Loop, task_kind
from gankd.distill.train.objective import TERMS, Step, describe, frozen, objective
from gankd.distill.train.recipe import RECIPES_DIR, load_recipe, recipe_from_dict
from gankd.distill.train.stages import plan_stages


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("have_teacher_d", [False, True])
def test_every_planned_stage_names_known_terms_and_actions(path, have_teacher_d):
    recipe = load_recipe(str(path))
    for stage in plan_stages(recipe, have_teacher_d=have_teacher_d or bool(recipe.teacher_d),
                             task_kind=task_kind(recipe)):
        assert set(stage.g_terms) | set(stage.t_terms) <= TERMS.keys(), stage
        assert set(stage.begin) | set(stage.end) <= Loop.ACTIONS.keys(), stage
        assert stage.adversarial in ("vanilla", "logistic", "wgan", "lsgan")
        if stage.name == "stage1":
            assert stage.adversarial == recipe.teacher_adversarial and "save_teacher_d" in stage.end


def test_qat_stage_is_marked_and_begins_with_qat():
    recipe = recipe_from_dict({"name": "q", "family": "srvgg", "n_qat": 2, "discriminator": "none", "n3": 0})
    qat = plan_stages(recipe, have_teacher_d=False)[-1]
    assert qat.fake_quant and qat.begin == ("begin_qat",)


def test_objective_weights_from_the_recipe_and_skips_zero_weights():
    recipe = recipe_from_dict({"name": "w", "l1_weight": 2.0, "fft_weight": 0.0})
    out, target = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    step = Step(nets=None, batch=None, recipe=recipe, out=out, feats=[], target=target, augment=lambda x: x)
    total, terms = objective(("l1", "fft"), step)
    assert list(terms) == ["l1"] and terms["l1"].item() == pytest.approx(1.0) and total.item() == pytest.approx(2.0)
    with pytest.raises(KeyError, match="no loss term"):
        objective(("l1", "no_such_term"), step)
    assert {row["term"] for row in describe()} >= set(TERMS)


def test_frozen_gives_the_flags_back():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].requires_grad_(False)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, False]
    with pytest.raises(RuntimeError), frozen(net):
        raise RuntimeError("the flags come back on errors too")
    assert net[0].weight.requires_grad
