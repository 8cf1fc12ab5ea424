"""The shared loop on the two GAN families: StyleGAN2 teacher training (DiffAugment, lazy R1, KD-DLGAN with a tiny
random CLIP), generator compression (MSE and joint), GCFSR teacher + SDAKD + the (C,C) baseline, and resume.
Tiny widths, 32x32 images, a few steps each; selection by PSNR so the Inception is not loaded."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from gankd.distill import load_model
from gankd.distill.train import stages as stages_module
from gankd.distill.errors import GankdError, RunInterrupted
from gankd.distill.train.recipe import load_recipe
from gankd.distill.train.loop import run

from helpers.tiny_clip import save_tiny_clip

SG2 = ["arch_kwargs={size: 32, style_dim: 32, n_mlp: 2, narrow: 0.0625}", "teacher_d_narrow=0.0625"]
GCFSR = ["arch_kwargs={out_size: 32, num_style_feat: 32, narrow: 0.0625, cond_norm: 32.0}",
         "teacher_d_narrow=0.0625", "factors=[32, 16, 8, 4]", "val_scales=[8, 16, 32]", "train_crops=16"]
FAST = ["steps_per_epoch=3", "batch_size=4", "val_every=null", "val_samples=8", "select_by=psnr", "threads=1",
        "checkpoint_every=2", "log_every=1"]


def _run(recipe: str, out: Path, *overrides: str) -> Path:
    return run(load_recipe(recipe, [f"out_dir={out}", *FAST, *overrides]), log=lambda msg: None)


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _steps(run_dir: Path) -> list[dict]:
    return [line for line in _lines(run_dir) if "val" not in line]


@pytest.fixture(scope="module")
def sg2_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sg2") / "teacher_run"
    return _run("stylegan2_lfw100_teacher", out, *SG2, "n1=2", "r1_every=2")


@pytest.fixture(scope="module")
def gcfsr_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gcfsr") / "teacher_run"
    return _run("gcfsr_teacher_cpu", out, *GCFSR, "n1=2")


def test_stylegan2_teacher_run_leaves_a_teacher_pair(sg2_teacher):
    teacher, teacher_d = load_model(sg2_teacher / "teacher"), load_model(sg2_teacher / "teacher_d")
    assert teacher.gankd_config.arch == "stylegan2_generator" and teacher.gankd_config.task == "generate"
    assert teacher_d.gankd_config.kind == "discriminator"
    assert teacher(torch.randn(2, 32)).shape == (2, 3, 32, 32)
    steps = _steps(sg2_teacher)
    assert [s["stage"] for s in steps] == ["stage1"] * 6
    assert all("g_adv" in s and "d_adv" in s for s in steps)
    assert [("d_r1" in s) for s in steps] == [s["step"] % 2 == 0 for s in steps]  # lazy R1 every 2 D steps
    report = (sg2_teacher / "report.md").read_text()
    assert "samples.png" in report and (sg2_teacher / "samples.png").is_file()
    assert "DiffAugment: color,translation,cutout" in report


def test_generator_compression_mse_and_joint(sg2_teacher, tmp_path):
    teacher = ["teacher=" + str(sg2_teacher / "teacher")]
    mse = _run("stylegan2_compress_c025_mse", tmp_path / "mse", *teacher, "n2=4", "steps_per_epoch=4",
               "lr_g=5e-3")
    student = load_model(mse / "student")
    assert student.gankd_config.kwargs["narrow"] == pytest.approx(0.0625 * 0.25)
    steps = _steps(mse)
    assert {s["stage"] for s in steps} == {"stage2"} and all(set(s) >= {"g_mse"} for s in steps)
    assert not any("d_adv" in s or "d_distill" in s for s in steps)
    first, last = sum(s["g_mse"] for s in steps[:3]) / 3, sum(s["g_mse"] for s in steps[-3:]) / 3
    assert last < first, (first, last)  # the student moves towards the teacher
    val = [line["val"] for line in _lines(mse) if "val" in line]
    assert "mse_teacher" in val[-1] and "psnr_teacher" in val[-1]
    report = (mse / "report.md").read_text()
    assert "| model | params (M) | MMACs |" in report and "| teacher |" in report and "| student (best) |" in report
    assert "mse_teacher" in report.split("## Validation history")[0]

    joint = _run("stylegan2_compress_c025_joint", tmp_path / "joint", *teacher,
                 "teacher_d=" + str(sg2_teacher / "teacher_d"), "n2=1", "n3=1")
    steps = _steps(joint)
    assert [s["stage"] for s in steps] == ["stage2"] * 3 + ["stage3"] * 3
    assert all("d_distill" in s and "g_adv" not in s for s in steps[:3])
    assert all("d_adv" in s and "g_adv" in s and "g_mse" in s for s in steps[3:])


def test_kddlgan_terms_train_the_discriminator_and_reach_g(tmp_path):
    name, weights = save_tiny_clip(tmp_path)
    config = tmp_path / f"{name}.json"
    from helpers.tiny_clip import TINY_CLIP_CONFIG

    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    run_dir = _run("stylegan2_lfw100_kddlgan", tmp_path / "kd", *SG2, "n1=1", f"clip_model={config}",
                   f"clip_weights={weights}")
    steps = _steps(run_dir)
    assert all({"d_agkd", "d_cgkd", "g_div", "d_adv"} <= set(s) for s in steps)
    assert all(s["d_agkd"] > 0 and math.isfinite(s["g_div"]) and math.isfinite(s["d_cgkd"]) for s in steps)
    state = torch.load(run_dir / "state" / "last.pt", weights_only=True)
    assert "d_head" in state["modules"]


def test_kddlgan_without_clip_weights_refuses_in_one_line(tmp_path):
    with pytest.raises(GankdError) as info:
        _run("stylegan2_lfw100_kddlgan", tmp_path / "kd", *SG2)
    assert "clip_weights" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "kd").exists()


def test_generation_resume_replays_latents_and_augmentation(sg2_teacher, tmp_path, monkeypatch):
    overrides = [*SG2, "n1=2", "r1_every=2", "checkpoint_every=1"]
    full = _run("stylegan2_lfw100_teacher", tmp_path / "a", *overrides)
    real_step = stages_module.step

    def interrupt_at_step_4(stage, nets, batch, recipe, where, world=None):
        logs = real_step(stage, nets, batch, recipe, where, world)
        if batch.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: the loop saves and stops after this step
        return logs

    monkeypatch.setattr("gankd.distill.train.loop.step", interrupt_at_step_4)
    with pytest.raises(RunInterrupted):
        _run("stylegan2_lfw100_teacher", tmp_path / "b", *overrides)
    monkeypatch.setattr("gankd.distill.train.loop.step", real_step)
    resumed = run(load_recipe("stylegan2_lfw100_teacher", [f"out_dir={tmp_path / 'b'}", *FAST, *overrides]),
                  resume=True, log=lambda msg: None)
    a, b = _steps(full), _steps(resumed)
    assert [s["step"] for s in b] == list(range(1, 7))
    for x, y in zip(a, b):
        for key in ("g_adv", "d_adv"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["step"], key)


def test_gcfsr_teacher_sdakd_and_baseline(gcfsr_teacher, tmp_path):
    teacher = load_model(gcfsr_teacher / "teacher")
    assert teacher.gankd_config.task == "face_sr"
    assert load_model(gcfsr_teacher / "teacher_d").gankd_config.kwargs["stddev_group"] == 0  # official: no_std
    teacher_steps = _steps(gcfsr_teacher)
    assert all("g_l1" in s and "g_adv" in s for s in teacher_steps)
    val = [line["val"] for line in _lines(gcfsr_teacher) if "val" in line][-1]
    assert {"psnr_gt_x8", "psnr_gt_x16", "psnr_gt_x32", "psnr_gt"} <= set(val)

    sdakd = _run("gcfsr_sdakd_cpu", tmp_path / "sdakd", "teacher=" + str(gcfsr_teacher / "teacher"), *GCFSR,
                 "n1=1", "n2=1", "n3=1")
    steps = _steps(sdakd)
    assert [s["stage"] for s in steps] == ["stage1"] * 3 + ["stage2"] * 3 + ["stage3"] * 3
    assert all("g_mlp" in s and "d_distill" in s for s in steps[3:6])
    student = load_model(sdakd / "student")
    assert student.gankd_config.kwargs["narrow"] == pytest.approx(0.0625 * 0.25)
    lq, scale = torch.rand(2, 3, 32, 32) * 2 - 1, torch.tensor([8.0, 32.0])
    assert student(lq, scale).shape == (2, 3, 32, 32)
    val = [line["val"] for line in _lines(sdakd) if "val" in line][-1]
    assert {f"psnr_teacher_x{s}" for s in (8, 16, 32)} <= set(val)
    report = (sdakd / "report.md").read_text()
    assert "| teacher |" in report and "| student (best) |" in report and (sdakd / "strip.png").is_file()
    assert "| model | params (M) | MMACs |" in report and "psnr_teacher_x16" in report.split("## Validation")[0]

    baseline = _run("gcfsr_sdakd_cpu", tmp_path / "cc", "teacher=" + str(gcfsr_teacher / "teacher"), *GCFSR,
                    "mode=scratch", "d_width=0.25", "n2=1", "n3=1")
    steps = _steps(baseline)
    assert [s["stage"] for s in steps] == ["stage2"] * 3 + ["stage3"] * 3 and "g_mlp" not in steps[0]


def test_face_sr_scales_must_divide_the_output(gcfsr_teacher, tmp_path):
    with pytest.raises(GankdError, match="factor 64 does not divide the output size 32"):
        _run("gcfsr_sdakd_cpu", tmp_path / "bad", "teacher=" + str(gcfsr_teacher / "teacher"), *GCFSR,
             "val_scales=[16, 64]")
