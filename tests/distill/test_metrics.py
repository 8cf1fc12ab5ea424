"""Metrics (PSNR/SSIM against closed forms and BasicSR, FID with an injected extractor) and report plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gankd.distill import GankdError
from gankd.distill.metrics import FidScorer, bicubic_upscale, evaluate_sr, mean_psnr, psnr, ssim
from gankd.distill.report.plots import markdown_table, save_histograms, save_pareto, save_strip


def _photo(size: int = 48) -> torch.Tensor:
    """A real photo crop (skimage ships it), 1×3×size×size in [0, 1]: structure that random noise lacks."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()[100 : 100 + 4 * size : 4, 180 : 180 + 4 * size : 4].copy())
    return img.permute(2, 0, 1)[None].float() / 255


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_constant_offset_matches_closed_form_per_image():
    base = torch.full((3, 3, 16, 16), 100 / 255)
    k = torch.tensor([1.0, 3.0, 10.0])
    shifted = base + k.view(3, 1, 1, 1) / 255
    got = psnr(base, shifted)
    assert got.shape == (3,)
    expected = 20 * torch.log10(255 / k.double())
    assert torch.allclose(got, expected, atol=1e-9)


def test_psnr_scores_8bit_images_and_mean_caps_identical_pairs():
    a = torch.full((2, 3, 8, 8), 100 / 255)
    below_one_level = a + 0.3 / 255  # rounds to the same 8-bit value
    assert torch.isinf(psnr(a, below_one_level)).all()
    assert mean_psnr(a, below_one_level) == 100.0
    doubled = psnr(a * 2, a * 2 + 2 / 255, max_val=2.0)  # inputs in [0, 2]: one 8-bit level apart
    assert torch.allclose(doubled, torch.full((2,), 20 * math.log10(255), dtype=torch.float64))


def test_psnr_crop_border_ignores_the_border():
    a = _rand(1, 3, 20, 20)
    b = a.clone()
    b[..., :2, :] = 1 - b[..., :2, :]
    b[..., :, -2:] = 1 - b[..., :, -2:]
    assert math.isfinite(psnr(a, b).item())
    assert math.isinf(psnr(a, b, crop_border=2).item())
    with pytest.raises(GankdError, match="crop_border"):
        psnr(a, b, crop_border=10)
    with pytest.raises(GankdError, match="same shape"):
        psnr(a, b[..., :19])


@pytest.mark.parametrize("crop_border", [0, 4])
def test_ssim_equals_basicsr(crop_border):
    from basicsr.metrics import calculate_ssim

    photo = _photo()
    blurred = F.avg_pool2d(photo, 3, stride=1, padding=1, count_include_pad=False)
    noise = _rand(1, 3, 48, 48, seed=1)
    noisy = (photo + 0.1 * (_rand(1, 3, 48, 48, seed=2) - 0.5)).clamp(0, 1)
    a = torch.cat([photo, photo, noise, photo])
    b = torch.cat([blurred, noisy, _rand(1, 3, 48, 48, seed=3), noise])
    got = ssim(a, b, crop_border=crop_border)
    assert got.shape == (4,)

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    expected = [calculate_ssim(to_uint8(x), to_uint8(y), crop_border) for x, y in zip(a, b)]
    assert np.allclose(got.numpy(), expected, atol=1e-3), (got, expected)
    assert len(set(np.round(expected, 3))) == 4  # the cases really differ, so the comparison means something


def test_ssim_of_identical_images_is_one_and_tiny_images_are_refused():
    x = torch.cat([_photo(), _rand(1, 3, 48, 48)])
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(GankdError, match="11×11"):
        ssim(x[..., :10, :10], x[..., :10, :10])


def test_evaluate_sr_keys_and_values():
    hr = torch.cat([_photo(32), _rand(1, 3, 32, 32)])
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    teacher = (hr + 0.02 * (_rand(2, 3, 32, 32, seed=4) - 0.5)).clamp(0, 1)
    student = (teacher + 0.05 * (_rand(2, 3, 32, 32, seed=5) - 0.5)).clamp(0, 1)
    scores = evaluate_sr(student, teacher, hr, lr, scale=4)
    pairs = ["student_teacher", "student_gt", "teacher_gt", "bicubic_teacher", "bicubic_gt"]
    assert set(scores) == {f"{m}_{p}" for m in ("psnr", "ssim") for p in pairs}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert scores["psnr_bicubic_teacher"] < scores["psnr_student_teacher"] < 100
    assert scores["psnr_teacher_gt"] > scores["psnr_bicubic_gt"]
    assert scores["psnr_student_teacher"] == pytest.approx(mean_psnr(student, teacher))

    no_gt = evaluate_sr(student, teacher, None, lr, scale=4)
    assert set(no_gt) == {"psnr_student_teacher", "ssim_student_teacher", "psnr_bicubic_teacher", "ssim_bicubic_teacher"}
    same = evaluate_sr(teacher, bicubic_upscale(lr, 4), None, lr, scale=4)
    assert same["psnr_bicubic_teacher"] == 100.0 and same["ssim_bicubic_teacher"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------- FID


def _tiny_scorer() -> FidScorer:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    return FidScorer(net, input_size=32)


def _textures(n: int, seed: int) -> torch.Tensor:
    """Smooth random images of varied colour: a spread-out feature cloud, not one point."""
    x = F.interpolate(_rand(n, 3, 6, 6, seed=seed), size=(40, 40), mode="bilinear", align_corners=False)
    return x * _rand(n, 1, 1, 1, seed=seed + 100)


def test_fid_with_injected_extractor_orders_sets():
    scorer = _tiny_scorer()
    x = _textures(48, seed=0)
    feats = scorer.features(x, batch_size=7)
    assert feats.shape == (48, 8) and feats.dtype == np.float64
    assert np.allclose(feats, scorer.features(x, batch_size=48), atol=1e-5)  # batching does not change features

    near = scorer.features((x + 0.03 * (_rand(48, 3, 40, 40, seed=1) - 0.5)).clamp(0, 1))
    far = scorer.features(_rand(48, 3, 40, 40, seed=2))
    assert scorer.fid(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert 0 < scorer.fid(feats, near) < scorer.fid(feats, far)
    with pytest.raises(GankdError, match="at least 2 samples"):
        scorer.fid(feats[:1], near)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_fid_equals_clean_fid_frechet_distance_on_both_paths():
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(0)
    for n in (5, 40):  # 5 < D = 12: exact low-rank form; 40 > D: clean-fid's sqrtm
        a, b = rng.normal(size=(n, 12)), rng.normal(1.0, 2.0, size=(n + 3, 12)) @ rng.normal(size=(12, 12))
        reference = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert FidScorer.fid(a, b) == pytest.approx(reference, rel=1e-5)
        assert FidScorer.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_preprocessing_matches_clean_fid_resize_and_range():
    from cleanfid.resize import make_resizer

    scorer = FidScorer(torch.nn.Flatten(), input_size=299)
    img = _photo(40)
    out = scorer.preprocess(img)
    assert out.shape == (1, 3, 299, 299) and out.min() >= -1 and out.max() < 1

    uint8 = (img[0] * 255).round().byte().permute(1, 2, 0).numpy()
    clean = make_resizer("PIL", False, "bicubic", (299, 299))(uint8)  # clean-fid's "clean" mode resize
    ours = (out[0].permute(1, 2, 0).numpy() * 128 + 128)
    assert np.abs(ours - clean).max() < 0.05


def test_fid_unavailable_reason_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "default_1.pt"
    ok, reason = FidScorer.available(missing)
    assert not ok and str(missing) in reason and "\n" not in reason
    with pytest.raises(GankdError, match="not found"):
        FidScorer.load(path=missing)
    wrong = tmp_path / "default_1.pt"
    wrong.write_bytes(b"not an inception")
    assert FidScorer.available(wrong) == (True, str(wrong))
    with pytest.raises(GankdError, match="sha1"):
        FidScorer.load(path=wrong)


@pytest.mark.real_weights
def test_real_inception_features_and_fid():
    ok, reason = FidScorer.available()
    if not ok:
        pytest.skip(reason)
    scorer = FidScorer.load()
    x = torch.cat([_photo(64), F.interpolate(_photo(96)[..., 20:84, 10:74], size=(64, 64), mode="bilinear")])
    feats = scorer.features(x)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    blurred = scorer.features(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    noise = scorer.features(_rand(2, 3, 64, 64))
    assert scorer.fid(feats, feats) == pytest.approx(0.0, abs=1e-2)
    assert scorer.fid(feats, noise) > scorer.fid(feats, blurred) > 0


# -------------------------------------------------------------------------------------------------------- plots


def _assert_png(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
        return img.size


def test_save_strip_writes_a_png_grid(tmp_path):
    hr = torch.cat([_photo(32), _rand(1, 3, 32, 32)])
    lr = F.avg_pool2d(hr, 4)
    rows = [{"LR": lr[i], "bicubic": bicubic_upscale(lr[i : i + 1], 4)[0], "teacher": hr[i], "student": hr[i]}
            for i in range(2)]
    del rows[1]["student"]  # a missing cell is drawn blank, not an error
    captions = [{"student": "31.20 dB"}, {"bicubic": "24.00 dB"}]
    width, height = _assert_png(save_strip(tmp_path / "sub" / "strip.png", rows * 3, captions=captions, max_rows=3))
    assert width > height > 0  # 4 columns, 3 rows
    with pytest.raises(GankdError, match="3×H×W"):
        save_strip(tmp_path / "bad.png", [{"LR": lr}])


def test_save_histograms_and_pareto_write_pngs(tmp_path):
    scores = {"teacher D": torch.randn(200) + 1, "student D": np.random.default_rng(0).normal(size=150)}
    _assert_png(save_histograms(tmp_path / "hist.png", scores, title="D outputs on student SR"))
    with pytest.raises(GankdError, match="NaN"):
        save_histograms(tmp_path / "nan.png", {"d": np.array([0.0, np.nan])}, title="x")

    points = [{"name": "C=1/4", "latency_ms": 140.0, "psnr": 27.1}, {"name": "SRVGG-32", "latency_ms": 40.0, "psnr": 26.0},
              {"name": "C=1/8", "latency_ms": 150.0, "psnr": 25.0}]
    _assert_png(save_pareto(tmp_path / "pareto.png", points, front=[0, 1]))
    with pytest.raises(GankdError, match="latency_ms"):
        save_pareto(tmp_path / "bad.png", [{"name": "x", "psnr": 1.0}])


def test_markdown_table_formats_numbers_and_missing_values():
    rows = [{"name": "teacher", "psnr": 28.456, "params": 16697987}, {"name": "a|b", "psnr": None}]
    assert markdown_table(rows, ["name", "psnr", "params", "latency_ms"]) == "\n".join([
        "| name | psnr | params | latency_ms |",
        "|---|---:|---:|---|",
        "| teacher | 28.46 | 16697987 | — |",
        "| a\\|b | — | — | — |",
    ])
    assert markdown_table([{"x": 1 / 3}], ["x"], floatfmt=".4f").splitlines()[-1] == "| 0.3333 |"
