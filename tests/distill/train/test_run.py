"""`gankd-distill run` end to end on a tiny teacher: run folder contract, ablations, resume after kill -9,
Ctrl-C, NaN, and refusals. Real sample photos, tiny crops, a few steps each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from gankd.distill import ModelConfig, load_model, save_model
from gankd.distill.errors import GankdError
from gankd.distill.train.recipe import recipe_from_dict
from gankd.distill.train.stages import NonFiniteLoss, needs_teacher_d
from gankd.distill.train.loop import run

from helpers.runs import DISTILL_CLI, kill_run_after, metrics_lines

CLI = DISTILL_CLI


@pytest.mark.parametrize("overrides", [
    {"init": "teacher"},
    {"init": "random", "feature_kd": False, "adversarial": "lsgan"},
    {"init": "random", "n2": 0},
    {"init": "random", "discriminator": "teacher"},
    {"init": "random", "mode": "scratch", "d_width": 1.0},
    {"init": "teacher", "depth": 1, "width": 1.0, "blocks": "greedy", "degradation": "realesrgan"},
], ids=["sdakd-teacher-init", "no-feature-kd-lsgan", "n2-0", "teacher-d", "scratch-C-1", "depth-cut-greedy"])
def test_run_writes_the_run_folder_contract(tiny_recipe, tmp_path, overrides):
    recipe = recipe_from_dict(tiny_recipe(tmp_path / "run", **overrides))
    run_dir = run(recipe, log=lambda msg: None)
    for name in ("config.resolved.yaml", "state/last.pt", "report.md", "strip.png", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").iterdir())
    student = load_model(run_dir / "student")
    assert student.gankd_config.provenance["init"] == recipe.init
    assert student(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    assert recipe_from_dict(yaml.safe_load((run_dir / "config.resolved.yaml").read_text())) == recipe
    lines = metrics_lines(run_dir / "metrics.jsonl")
    stages = [line["stage"] for line in lines if "val" not in line]
    if recipe.mode == "scratch":
        assert stages == ["stage2"] * 3 + ["stage3"] * 3 and not (run_dir / "teacher_d").exists()
    elif recipe.n2 == 0:
        assert stages == ["stage3"] * 3
    else:
        assert stages == ["stage1"] * 3 + ["stage2"] * 3 + ["stage3"] * 3
        assert load_model(run_dir / "teacher_d").gankd_config.kind == "discriminator"
    report = (run_dir / "report.md").read_text()
    assert "| student (best) |" in report and "PSNR→teacher" in report
    has_d = recipe.discriminator != "none"  # every D of the run on real, teacher and student images (Figs. 2-3)
    assert ("d_outputs.png" in report) == has_d == (run_dir / "d_outputs.png").exists()
    if has_d:
        series = set(json.loads((run_dir / "d_outputs.json").read_text())["scores"])
        assert ("D_T(student)" in series) == needs_teacher_d(recipe)
        assert ("D_S(student)" in series) == (recipe.mode == "scratch" or recipe.discriminator == "student")


@pytest.mark.slow
def test_resume_after_kill_9_replays_the_same_losses(tiny_recipe, tmp_path):
    base = tiny_recipe(tmp_path / "a", steps_per_epoch=12, checkpoint_every=3, init="teacher")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**base, "out_dir": str(tmp_path / "b")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run([*CLI, "run", str(tmp_path / "a.yaml")], check=True, capture_output=True, env=env, timeout=600)

    saved_step = kill_run_after(tmp_path / "b.yaml", tmp_path / "b", 14, env)
    assert 0 < saved_step < 36

    resumed = subprocess.run([*CLI, "run", str(tmp_path / "b.yaml"), "--resume"], capture_output=True, text=True,
                             env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {saved_step}" in resumed.stderr
    a, b = metrics_lines(tmp_path / "a" / "metrics.jsonl"), metrics_lines(tmp_path / "b" / "metrics.jsonl")
    assert len(a) == len(b) and a == b  # every loss and validation score, bit for bit
    assert torch.equal(load_model(tmp_path / "a" / "student").conv_first.weight,
                       load_model(tmp_path / "b" / "student").conv_first.weight)


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tiny_recipe, tmp_path):
    recipe = tiny_recipe(tmp_path / "run", steps_per_epoch=200, checkpoint_every=1000)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen([*CLI, "run", str(tmp_path / "r.yaml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopped: SIGINT at step" in err and "continue with --resume" in err
    assert "Traceback" not in err
    step = int(err.split("SIGINT at step ")[1].split(":")[0])
    assert torch.load(tmp_path / "run" / "state" / "last.pt", weights_only=True)["progress"]["position"]["step"] == step
    refused = subprocess.run([*CLI, "run", str(tmp_path / "r.yaml")], capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    changed = subprocess.run([*CLI, "run", str(tmp_path / "r.yaml"), "--resume", "width=0.25"], capture_output=True,
                             text=True)
    assert changed.returncode == 2 and "--resume: width is 0.25 but the run was started with 0.5" in changed.stderr


def test_nan_stops_the_run_and_keeps_the_last_good_state(tiny_recipe, tmp_path, monkeypatch):
    from gankd.distill.train import losses

    recipe = recipe_from_dict(tiny_recipe(tmp_path / "run", n3=2))
    real_l1, calls = losses.l1_loss, {"n": 0}

    def l1_turning_nan(out, target):
        calls["n"] += 1
        value = real_l1(out, target)
        return value * float("nan") if calls["n"] == 5 else value  # 5th G step = stage3 step 8 (3 D-only steps first)

    monkeypatch.setattr(losses, "l1_loss", l1_turning_nan)
    with pytest.raises(NonFiniteLoss) as info:
        run(recipe, log=lambda msg: None)
    message = str(info.value)
    assert "stage3 step 8: loss 'l1' is nan" in message and "state/last.pt (step 6)" in message
    assert "\n" not in message
    state = torch.load(tmp_path / "run" / "state" / "last.pt", weights_only=True)
    assert state["progress"]["position"]["step"] == 6
    student = load_model(tmp_path / "run" / "student")
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert student.gankd_config.provenance["step"] == 6


def test_bad_run_inputs_are_one_line_errors(tiny_recipe, tmp_path):
    with pytest.raises(GankdError, match="does not exist|not a model folder|no such"):
        run(recipe_from_dict(tiny_recipe(tmp_path / "r1", teacher=str(tmp_path / "missing"))), log=lambda m: None)
    with pytest.raises(GankdError, match="no saved state"):
        run(recipe_from_dict(tiny_recipe(tmp_path / "r2")), resume=True, log=lambda m: None)
    (tmp_path / "photos").mkdir()
    with pytest.raises(GankdError, match="photos"):
        run(recipe_from_dict(tiny_recipe(tmp_path / "r3", train_images=str(tmp_path / "photos"))),
            log=lambda m: None)
    d_dir = tmp_path / "d"
    d_conf = ModelConfig(arch="unet_discriminator_sn", kwargs={"num_feat": 8}, task="sr", scale=None)
    save_model(d_dir, d_conf.build(), d_conf)
    with pytest.raises(GankdError, match="not a generator"):
        run(recipe_from_dict(tiny_recipe(tmp_path / "r4", teacher=str(d_dir))), log=lambda m: None)


@pytest.mark.slow
def test_compare_lists_each_run_with_its_best_validation(tiny_recipe, tmp_path):
    for init in ("random", "teacher"):
        run(recipe_from_dict(tiny_recipe(tmp_path / init, init=init, n3=2)), log=lambda m: None)
    out = subprocess.run([*CLI, "compare", str(tmp_path / "random"), str(tmp_path / "teacher"), "--out",
                          str(tmp_path / "cmp.md")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| random") or line.startswith("| teacher")]
    assert [r.split("|")[3].strip() for r in rows] == ["random", "teacher"]
    best = {}
    for init in ("random", "teacher"):
        records = metrics_lines(tmp_path / init / "metrics.jsonl")
        step = load_model(tmp_path / init / "student").gankd_config.provenance["step"]
        best[init] = next(r["val"]["psnr_teacher"] for r in records if "val" in r and r["step"] == step)
        assert f"{best[init]:.2f}" in out.stdout
    assert (tmp_path / "cmp.md").read_text().strip() == out.stdout.strip()
    missing = subprocess.run([*CLI, "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a finished run folder" in missing.stderr


@pytest.mark.real_weights
def test_fid_selection_with_the_offline_inception(tiny_recipe, tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tmp_path / "run", select_by="fid", n1=1, n2=1, n3=1))
    run_dir = run(recipe, log=lambda msg: None)
    vals = [r["val"] for r in metrics_lines(run_dir / "metrics.jsonl") if "val" in r]
    assert len(vals) == 2 and all("fid" in v and v["fid"] >= 0 for v in vals)
    best = load_model(run_dir / "student").gankd_config.provenance
    assert best["selected_by"] == "fid" and best["validation"]["fid"] == min(v["fid"] for v in vals)
    report = (run_dir / "report.md").read_text()
    assert "chosen by FID" in report and "| FID |" in report


def test_out_dir_is_checked_before_any_work(tiny_teacher, tiny_recipe, tmp_path, monkeypatch):
    """Case 3: an out_dir that cannot be created is one line before the teacher loads; a folder of other files and
    the shared teacher cache are refused too, and nothing is written."""
    import gankd.distill.train.loop as train

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded before out_dir was checked")

    monkeypatch.setattr(train, "load_teacher", no_teacher)
    for out_dir, message in (("/proc/gankd-run", "cannot be written"),
                             (str(tiny_teacher / "config.json" / "run"), "is a file, not a folder")):
        with pytest.raises(GankdError, match=message) as info:
            run(recipe_from_dict(tiny_recipe(Path(out_dir))), log=lambda msg: None)
        assert "\n" not in str(info.value)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(GankdError, match="not a gankd run folder"):
        run(recipe_from_dict(tiny_recipe(theirs)), log=lambda msg: None)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    cache = tmp_path / "runs" / "teacher_cache"
    with pytest.raises(GankdError, match="overlap"):
        run(recipe_from_dict(tiny_recipe(tmp_path / "runs", teacher_cache_dir=str(cache))),
            log=lambda msg: None)
    assert not (tmp_path / "runs").exists()


def test_select_min_vol_prefers_a_sharp_student_over_a_blurrier_better_scored_one():
    """select_min_vol: PSNR alone rewards blur; a student above the sharpness floor beats any below it."""
    import types

    from gankd.distill.train.run_state import Progress
    from gankd.distill.train.loop import Loop

    task = types.SimpleNamespace(better=lambda score, best: best is None or score > best)

    def loop(floor):
        progress = Progress(best_score=28.0, best_step=10,
                            history=[{"step": 10, "val": {"psnr_teacher": 28.0, "vol_teacher": 0.1}}])
        return types.SimpleNamespace(recipe=types.SimpleNamespace(select_min_vol=floor), progress=progress,
                                     task=task)

    sharp_lower = {"psnr_teacher": 27.5, "vol_teacher": 0.3}
    assert not Loop.beats_best(loop(0.0), sharp_lower, 27.5)  # negative control: PSNR alone keeps the blur
    assert Loop.beats_best(loop(0.25), sharp_lower, 27.5)
    assert Loop.beats_best(loop(0.25), {"psnr_teacher": 29.0, "vol_teacher": 0.2}, 29.0)  # both blurry: PSNR
    blurry_higher = loop(0.25)
    blurry_higher.progress.history[0]["val"]["vol_teacher"] = 0.3  # the kept one is sharp: blur never beats it
    assert not Loop.beats_best(blurry_higher, {"psnr_teacher": 29.0, "vol_teacher": 0.2}, 29.0)
    assert Loop.beats_best(blurry_higher, {"psnr_teacher": 28.5, "vol_teacher": 0.4}, 28.5)  # both sharp: PSNR
