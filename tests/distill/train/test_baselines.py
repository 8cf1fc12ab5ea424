"""The baselines SDAKD is measured against (OMGD, DCD, DCD with modified adversarial training): which modules each
stage updates, on all three tasks; their losses on hand-computed tensors; what D_T trains against; a kill -9 resume
of each mode; `compare` and the D-output histograms of a finished run."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from gankd.distill import ModelConfig, load_model
from gankd.distill.train import losses
from gankd.distill.train.adapters import FeatureMLP
from gankd.distill.errors import GankdError
from gankd.distill.train.recipe import load_recipe, recipe_from_dict
from gankd.distill.train.stages import Batch, Nets, needs_teacher_d, plan_stages, step

from helpers.runs import DISTILL_CLI, kill_run_after, metrics_lines

MODES = ("omgd", "dcd", "dcd_modified")
pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: one torch thread is faster
CLI = DISTILL_CLI

# --- tiny nets of the three tasks --------------------------------------------------------------------------------

SR_T = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 16, "num_block": 2, "num_grow_ch": 8}, task="sr",
                   scale=4)
SR_S = ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 4, "num_block": 1, "num_grow_ch": 2}, task="sr",
                   scale=4)
SG2 = {"size": 32, "style_dim": 32, "n_mlp": 2}
GC = {"out_size": 32, "num_style_feat": 32, "cond_norm": 32.0}


def _sr(adapter: bool):
    d = ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": 8}, task="sr", scale=None).build()
    lr = torch.rand(2, 3, 8, 8)
    return SR_T.build(), SR_S.build(), d, (lr,), torch.rand(2, 3, 32, 32), (FeatureMLP(4, 16) if adapter else None)


def _gan(task: str, adapter: bool):
    arch, kwargs = ("stylegan2_generator", SG2) if task == "generate" else ("gcfsr", GC)
    config = lambda narrow: ModelConfig(arch=arch, kwargs={**kwargs, "narrow": narrow}, task=task,  # noqa: E731
                                        input_range=(-1.0, 1.0))
    teacher, student = config(0.0625).build(), config(0.03125).build()
    stddev = {"stddev_group": 0} if task == "face_sr" else {}
    d = ModelConfig(arch="stylegan2_discriminator", kwargs={"size": 32, "narrow": 0.0625, **stddev}, task=task,
                    input_range=(-1.0, 1.0)).build()
    inputs = (torch.randn(2, 32),) if task == "generate" else (torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([8., 8.]))
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    if adapter:
        with torch.no_grad():
            s_c = student.forward_features(*inputs)[-1].shape[1]
            t_c = teacher.forward_features(*inputs)[-1].shape[1]
        adapter = FeatureMLP(s_c, t_c)
    return teacher, student, d, inputs, hr, adapter or None


def _setup(task: str, recipe):
    torch.manual_seed(0)
    adapter = recipe.mode == "omgd" and recipe.feature_kd
    teacher, student, d, inputs, hr, adapter = _sr(adapter) if task == "sr" else _gan(task, adapter)
    teacher.eval().requires_grad_(recipe.mode == "omgd")
    nets = Nets(teacher=teacher, student=student, adapter=adapter, teacher_d=d)
    nets.optimizers = {"g": torch.optim.Adam([*student.parameters(), *(adapter.parameters() if adapter else [])],
                                             lr=1e-3),
                       "teacher_d": torch.optim.Adam(d.parameters(), lr=1e-3)}
    if recipe.mode == "omgd":
        nets.optimizers["teacher_g"] = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    with torch.no_grad():
        out, feats = teacher.forward_with_features(*inputs)
    return nets, Batch(inputs=inputs, hr=hr, teacher_out=out, teacher_feat=feats[-1])


def _snapshot(nets: Nets) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in getattr(nets, name).parameters()]
            for name in ("teacher", "student", "adapter", "teacher_d") if getattr(nets, name) is not None}


@pytest.mark.parametrize("task", ["sr", "face_sr", "generate"])
@pytest.mark.parametrize("mode", MODES)
def test_each_stage_updates_exactly_its_modules(mode, task):
    recipe = recipe_from_dict({"mode": mode, "adversarial": "logistic" if task != "sr" else "vanilla",
                               "teacher_adversarial": "logistic" if task != "sr" else "vanilla", "r1_every": 2})
    stages = plan_stages(recipe, have_teacher_d=False, task_kind=task)
    assert [s.name for s in stages] == (["stage1", "online"] if mode == "omgd" else ["stage1", "stage2", "stage3"])
    for stage in stages:
        nets, batch = _setup(task, recipe)
        before = _snapshot(nets)
        for i in range(2):
            logs = step(stage, nets, batch, recipe, where=f"{stage.name} step {i}")
            assert logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        after = _snapshot(nets)
        for name in before:
            changed = any(not torch.equal(a, b) for a, b in zip(before[name], after[name]))
            assert changed == (name in stage.trains), f"{mode} {task} {stage.name}: {name} changed={changed}"


def test_the_stages_name_each_method_s_terms():
    plans = {mode: plan_stages(recipe_from_dict({"mode": mode}), have_teacher_d=True) for mode in MODES}
    (online,) = plans["omgd"]
    assert online.trains == ("teacher", "student", "adapter", "teacher_d") and online.d_fake == "teacher"
    assert "adv" not in online.g_terms and {"ssim", "cd"} <= set(online.g_terms)  # the student: KD only
    assert online.t_terms == ("l1", "perceptual", "adv")
    assert plan_stages(recipe_from_dict({"mode": "omgd"}), True, "generate")[0].t_terms == ("adv",)
    for mode, fake in (("dcd", "teacher"), ("dcd_modified", "both")):
        stage2, stage3 = plans[mode]
        assert stage2.trains == ("student", "teacher_d") == stage3.trains
        assert "dcd" in stage2.g_terms and "adv" not in stage2.g_terms
        assert {"dcd", "adv"} <= set(stage3.g_terms) and stage3.adv_net == "teacher_d"
        assert stage2.d_fake == stage3.d_fake == fake
    assert all(needs_teacher_d(recipe_from_dict({"mode": m})) for m in MODES)
    with pytest.raises(GankdError, match="n1 is 0"):
        plan_stages(recipe_from_dict({"mode": "dcd", "n1": 0}), have_teacher_d=False)
    with pytest.raises(GankdError, match="SDAKD option"):
        recipe_from_dict({"mode": "dcd", "discriminator": "teacher"})


@pytest.mark.parametrize("mode, fakes", [("dcd", 2), ("dcd_modified", 4), ("omgd", 2)])
def test_what_the_teacher_d_is_trained_against(mode, fakes, monkeypatch):
    recipe = recipe_from_dict({"mode": mode})
    stage = plan_stages(recipe, have_teacher_d=True)[-1]
    nets, batch = _setup("sr", recipe)
    seen = []
    real_loss = losses.d_adversarial_loss

    def recording(real_logits, fake_logits, kind):
        seen.append(fake_logits.shape[0])
        return real_loss(real_logits, fake_logits, kind)

    monkeypatch.setattr(losses, "d_adversarial_loss", recording)
    logs = step(stage, nets, batch, recipe, where="t")
    assert seen == [fakes]  # dcd: the teacher's 2 outputs; modified: teacher's and student's; omgd: the teacher's
    if mode == "omgd":
        assert {"t_l1", "t_adv", "t_total", "g_ssim", "g_cd"} <= set(logs) and "g_adv" not in logs
    else:
        assert {"g_dcd", "g_adv", "d_adv"} <= set(logs)


# --- losses on hand-computed tensors -------------------------------------------------------------------------------

def test_ssim_loss_is_zero_on_equal_images_and_known_on_constants():
    x = torch.rand(1, 3, 16, 16)
    assert losses.ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # constant images a, b: every variance is a²(w - w²), b²(w - w²) and the covariance ab(w - w²), where w(p) is
    # the window mass inside the image at pixel p (zero padding), w = wx(i)·wy(j) from the 1-D Gaussian
    a, b, c1, c2, n = 0.2, 0.6, 0.01**2, 0.03**2, 16
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5**2))
    g = g / g.sum()
    mass = torch.tensor([sum(g[k].item() for k in range(11) if 0 <= i + k - 5 < n) for i in range(n)],
                        dtype=torch.float64)
    w = mass[:, None] * mass[None, :]
    mu_a, mu_b, spread = a * w, b * w, w - w * w
    expected = ((2 * mu_a * mu_b + c1) * (2 * a * b * spread + c2)
                / ((mu_a**2 + mu_b**2 + c1) * ((a * a + b * b) * spread + c2))).mean().item()
    loss = losses.ssim_loss(torch.full((1, 1, n, n), a), torch.full((1, 1, n, n), b))
    assert 1 - loss.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(0.5, abs=0.15)  # interior alone: (2ab + c1) / (a² + b² + c1) = 0.60
    x2 = x * 2 - 1
    assert losses.ssim_loss(x2, x2, data_range=2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_gram_style_channel_and_dcd_losses_on_known_tensors():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # channel 0 = [1, 2], channel 1 = [3, 4]
    gram = losses.gram_matrix(f)
    assert torch.allclose(gram, torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)  # / (C·H·W) = 4
    assert losses.style_loss([f], [torch.zeros_like(f)]).item() == pytest.approx((5 + 11 + 11 + 25) / 4 / 4)
    # channel-wise: only the spatial means count — means [1.5, 3.5] vs [0, 0]
    assert losses.channel_distill_loss(f, torch.zeros_like(f)).item() == pytest.approx((1.5**2 + 3.5**2) / 2)
    moved = f.flip(-1)  # the same values elsewhere: the same channel means
    assert losses.channel_distill_loss(moved, f).item() == 0.0
    s = [torch.zeros(1, 2, 2, 2), torch.ones(1, 4)]
    t = [torch.full((1, 2, 2, 2), 0.5), torch.full((1, 4), 3.0)]
    assert losses.dcd_feature_loss(s, t).item() == pytest.approx(0.5 + 2.0)  # summed over the D maps


def test_dcd_term_reaches_the_student_through_the_frozen_teacher_d():
    recipe = recipe_from_dict({"mode": "dcd", "l1_weight": 0.0, "lambda_adv": 0.0})
    stage = plan_stages(recipe, have_teacher_d=True)[0]
    nets, batch = _setup("sr", recipe)
    from gankd.distill.train.stages import generator_loss

    total, terms, _ = generator_loss(stage, nets, batch, recipe)
    total.backward()
    assert set(terms) == {"l1", "dcd"} and terms["dcd"].item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets.student.parameters())
    assert all(p.grad is None for p in nets.teacher_d.parameters())  # D_T is not trained by the G step
    assert all(p.requires_grad for p in nets.teacher_d.parameters())  # and is left trainable for its own step


# --- a few-step run of each mode resumes bit-identically after kill -9 -----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_after_kill_9_replays_the_same_losses(tiny_teacher, tiny_recipe, tmp_path, mode, capsys):
    from gankd.distill.cli import main
    from gankd.distill.train.loop import run

    base = tiny_recipe(tmp_path / "a", name=f"tiny_{mode}", mode=mode, steps_per_epoch=4)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "b")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run(recipe_from_dict(base), log=lambda msg: None)  # run A, uninterrupted, in this process (one thread, as B)
    total = 12 if mode != "omgd" else 4 + 8  # stage1 + (stage2, stage3) or stage1 + online (n2 + n3 epochs)

    saved_step = kill_run_after(tmp_path / "b.yaml", tmp_path / "b", 6, env)
    assert 0 < saved_step < total

    messages = []
    run(load_recipe(str(tmp_path / "b.yaml")), resume=True, log=messages.append)
    assert f"resumed at step {saved_step}" in "\n".join(messages)
    a, b = metrics_lines(tmp_path / "a" / "metrics.jsonl"), metrics_lines(tmp_path / "b" / "metrics.jsonl")
    assert len(a) == len(b) and a == b  # every loss (the online teacher's too) and validation score, bit for bit
    assert torch.equal(load_model(tmp_path / "a" / "student").conv_first.weight,
                       load_model(tmp_path / "b" / "student").conv_first.weight)
    steps = [line for line in a if "val" not in line]
    assert len(steps) == total
    if mode == "omgd":
        assert all("t_adv" in s and "g_adv" not in s for s in steps if s["stage"] == "online")
        saved = torch.load(tmp_path / "a" / "state" / "last.pt", weights_only=True)["modules"]
        assert not torch.equal(saved["teacher"]["conv_first.weight"],
                               load_model(tiny_teacher).state_dict()["conv_first.weight"])  # trained online
    # the finished run's report: the generalised D-output histograms, and compare reads them
    report = (tmp_path / "a" / "report.md").read_text()
    assert "d_outputs.png" in report and (tmp_path / "a" / "d_outputs.png").is_file()
    summary = json.loads((tmp_path / "a" / "d_outputs.json").read_text())["scores"]
    assert set(summary) == {"D_T(real)", "D_T(teacher)", "D_T(student)"}
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr().out
    assert f"| {mode} |" in shown and "D_T(student) mean" in shown


@pytest.mark.parametrize("name", [f"{vertical}_{mode}_{size}" for vertical in ("realesrgan_x4", "gcfsr")
                                  for mode in MODES for size in ("c025", "cpu")])
def test_shipped_baseline_recipes_load(name):
    recipe = load_recipe(name)
    assert recipe.mode in MODES and recipe.width == 0.25 and needs_teacher_d(recipe)


def test_face_sr_runs_of_the_baselines_report_the_d_outputs(tmp_path):
    """GCFSR: a tiny teacher run, then modified DCD and OMGD from it; the report's D-output histogram (SDAKD Fig. 2)."""
    from gankd.distill.train.loop import run

    tiny = ["arch_kwargs={out_size: 32, num_style_feat: 32, narrow: 0.0625, cond_norm: 32.0}",
            "teacher_d_narrow=0.0625", "factors=[32, 16, 8, 4]", "val_scales=[8, 16, 32]", "train_crops=16",
            "steps_per_epoch=2", "batch_size=4", "val_every=null", "select_by=psnr", "threads=1", "log_every=1"]
    teacher_run = run(load_recipe("gcfsr_teacher_cpu", [f"out_dir={tmp_path / 't'}", "n1=1", *tiny]),
                      log=lambda msg: None)
    for mode in ("dcd_modified", "omgd"):
        run_dir = run(load_recipe(f"gcfsr_{mode}_cpu", [f"out_dir={tmp_path / mode}", *tiny[1:], "n1=1", "n2=1",
                                                        "n3=0", f"teacher={teacher_run / 'teacher'}"]),
                      log=lambda msg: None)
        assert "d_outputs.png" in (run_dir / "report.md").read_text()
        series = json.loads((run_dir / "d_outputs.json").read_text())["scores"]
        assert set(series) == {"D_T(real)", "D_T(teacher)", "D_T(student)"}
        assert all(0 <= s["mean"] <= 1 for s in series.values())  # logistic loss: D's probability of "real"
