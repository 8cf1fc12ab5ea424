"""The data pipeline: image files, the embedded sample split, degradations, crop pools, the teacher cache and
epoch batches. Small images and few crops (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gankd.distill import GankdError, ModelConfig
from gankd.distill.data.crops import CropPool, epoch_batches, validation_pool
from gankd.distill.data.teacher_cache import cache_teacher
from gankd.distill.data.images import list_images, load_image, sample_images
from gankd.distill.data.degrade import RealESRGANDegradation, bicubic_lr, make_lr, realesrgan_lr


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _photo_like(n: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth colour structure plus edges: something a degradation visibly changes."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img[..., ::8, :] = 1.0  # sharp lines
    return img.clamp(0, 1)


def _coordinate_image(h: int, w: int, ident: float) -> torch.Tensor:
    """Channel 0 = row, 1 = column, 2 = image id: a crop shows where it came from."""
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w) / 1000
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w) / 1000
    return torch.stack([rows, cols, torch.full((h, w), ident)])


# ----------------------------------------------------------------------------------------------- files


def test_list_images_recursive_filtered_sorted(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.png", "sub/a.JPG", "sub/deeper/c.webp", "sub/d.jpeg"):
        Image.fromarray(_rgb(4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "folder.png").mkdir()  # a folder with an image-like name is not an image
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["b.png", "sub/a.JPG", "sub/d.jpeg", "sub/deeper/c.webp"]


def test_list_images_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(GankdError, match=r"no images .* in folder '.*empty'"):
        list_images(tmp_path / "empty")
    with pytest.raises(GankdError, match=r"'.*missing' does not exist"):
        list_images(tmp_path / "missing")


def test_load_image_rgb_rgba_gray(tmp_path):
    rgb = _rgb(6, 5)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    for name in ("rgb.png", "rgba.png"):
        img = load_image(tmp_path / name)
        assert img.dtype == torch.float32 and img.shape == (3, 6, 5)
        assert torch.allclose(img, expected), name
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (3, 6, 5) and torch.equal(gray[0], gray[2]) and torch.allclose(gray[0], expected[0])


def test_load_image_truncated_and_garbage(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(GankdError, match=r"'.*cut\.jpg' is truncated or corrupted"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(GankdError, match=r"'.*text\.png' is truncated or corrupted"):
        load_image(tmp_path / "text.png")
    assert load_image(tmp_path / "full.jpg").shape == (3, 64, 64)  # the intact file loads


def test_load_image_pixel_limit(tmp_path):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "big.png")
    with pytest.raises(GankdError, match=r"'.*big\.png' is 50x40 = 0\.0 MP, over the limit of 0\.0 MP"):
        load_image(tmp_path / "big.png", max_pixels=1999)
    assert load_image(tmp_path / "big.png", max_pixels=2000).shape == (3, 40, 50)


def test_load_image_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL refuses above 2x this
    with pytest.raises(GankdError, match=r"'.*bomb\.png' is too large to decode safely"):
        load_image(tmp_path / "bomb.png")


# ----------------------------------------------------------------------------------------------- samples


def test_sample_split_disjoint_with_astronaut_in_validation():
    pytest.importorskip("skimage.data", reason="scikit-image ships the sample photos (gankd[all])")
    train, val = sample_images("train"), sample_images("validation")
    assert len(train) >= 5 and len(val) >= 2
    assert "astronaut" in dict(val)
    assert not set(dict(train)) & set(dict(val))
    for name, img in train + val:
        assert img.dtype == torch.float32 and img.dim() == 3 and img.shape[0] == 3, name
        assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.05, name
    for tname, timg in train:  # the same photo under two names would leak too
        for vname, vimg in val:
            assert timg.shape != vimg.shape or not torch.equal(timg, vimg), (tname, vname)
    holdout = sample_images("holdout")
    assert len(holdout) == 4 and not set(dict(holdout)) & (set(dict(train)) | set(dict(val)))
    with pytest.raises(GankdError, match="unknown sample split 'test'; expected one of train, validation, holdout"):
        sample_images("test")


# ----------------------------------------------------------------------------------------------- degradations


def test_bicubic_lr_shape_and_range():
    hr = _photo_like(2, 64)
    lr = bicubic_lr(hr, 4)
    assert lr.shape == (2, 3, 16, 16) and lr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1
    assert torch.allclose(bicubic_lr(torch.full((1, 3, 32, 32), 0.3), 4), torch.tensor(0.3))
    assert torch.equal(make_lr(hr, 4, "bicubic", seed=5), lr)
    with pytest.raises(GankdError, match="HR size 30x30 is not a multiple of scale 4"):
        bicubic_lr(torch.rand(1, 3, 30, 30), 4)


def test_realesrgan_lr_shape_range_quantised():
    lr = realesrgan_lr(_photo_like(2, 64), 4, 0)
    assert lr.shape == (2, 3, 16, 16) and lr.dtype == torch.float32
    assert 0 <= lr.min() and lr.max() <= 1
    assert torch.allclose(lr * 255, (lr * 255).round(), atol=1e-4)  # rounded to 1/255 like a saved image


def test_realesrgan_lr_deterministic_and_seed_dependent():
    hr = _photo_like(1, 64)
    a, b, c = realesrgan_lr(hr, 4, 7), realesrgan_lr(hr, 4, 7), realesrgan_lr(hr, 4, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = realesrgan_lr(hr, 4, g1)
    assert torch.equal(first, realesrgan_lr(hr, 4, g2))
    assert not torch.equal(first, realesrgan_lr(hr, 4, g1))  # the generator advanced


def test_realesrgan_lr_actually_degrades():
    hr = _photo_like(4, 64)
    diffs = [(realesrgan_lr(hr, 4, seed) - bicubic_lr(hr, 4)).abs().mean().item() for seed in range(3)]
    assert min(diffs) > 0.01, diffs


def test_realesrgan_lr_leaves_global_rng_alone():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    realesrgan_lr(_photo_like(1, 32), 4, 0)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_import_is_light_and_basicsr_import_leaves_numpy_alone():
    """In a fresh interpreter: importing the module loads neither basicsr nor scikit-image, and basicsr's
    import-time ``np.seterr`` does not leak out of the first degradation."""
    code = ("import sys, numpy as np, torch; from gankd.distill.data import images, crops, teacher_cache, degrade; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('basicsr', 'skimage', 'cv2')); "
            "before = np.geterr(); degrade.realesrgan_lr(torch.rand(1, 3, 16, 16), 4, 0); "
            "print(heavy, before == np.geterr())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-2:] == ["[]", "True"], out.stdout + out.stderr


@pytest.mark.parametrize("size,scale", [(16, 4), (8, 2), (24, 1)])
def test_realesrgan_lr_small_images_many_seeds(size, scale):
    """Crops smaller than the 21-tap kernels' padding still work, over seeds that reach every branch."""
    hr = _photo_like(1, size)
    for seed in range(8):
        lr = realesrgan_lr(hr, scale, seed)
        assert lr.shape == (1, 3, size // scale, size // scale) and torch.isfinite(lr).all()


def test_realesrgan_lr_equals_basicsr_pipeline(tmp_path):
    """Bit-exact against basicsr's own RealESRGANDataset (kernels) + RealESRGANModel.feed_data (the rest), run with
    the same seeds: the reimplementation of their glue changes nothing."""
    dataset_mod = pytest.importorskip("basicsr.data.realesrgan_dataset", reason="basicsr-fixed is part of gankd[all]")
    from basicsr.models.realesrgan_model import RealESRGANModel
    from basicsr.utils import DiffJPEG, USMSharp

    hr = (_photo_like(1, 64) * 255).round() / 255
    rgb = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "gt.png")
    (tmp_path / "meta.txt").write_text("gt.png\n")
    opt = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(RealESRGANDegradation()).items()}
    opt.update(io_backend={"type": "disk"}, dataroot_gt=str(tmp_path), meta_info=str(tmp_path / "meta.txt"),
               use_hflip=False, use_rot=False, blur_kernel_size=21, blur_kernel_size2=21, scale=4, gt_size=64)
    dataset = dataset_mod.RealESRGANDataset(opt)
    model = types.SimpleNamespace(is_train=True, opt=opt, device=torch.device("cpu"), usm_sharpener=USMSharp(),
                                  jpeger=DiffJPEG(differentiable=False), _dequeue_and_enqueue=lambda: None)
    compared = 0
    for seed in range(4):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        with np.errstate(divide="ignore", invalid="ignore"):  # basicsr's sinc divides 0/0 at its centre
            item = dataset[0]  # pads the image to 400 px (no random draws); only its kernels are used
        batch = {"gt": hr, **{k: item[k][None] for k in ("kernel1", "kernel2", "sinc_kernel")}}
        try:
            RealESRGANModel.feed_data(model, batch)
        except RuntimeError:  # basicsr cannot reflect-pad a crop shrunk below 11 px; we replicate-pad (documented)
            continue
        assert torch.equal(realesrgan_lr(hr, 4, seed), model.lq), seed
        compared += 1
    assert compared >= 3


def test_make_lr_unknown_kind_and_bad_options():
    with pytest.raises(GankdError, match="unknown degradation 'jpeg'; expected one of bicubic, realesrgan"):
        make_lr(_photo_like(1, 16), 4, "jpeg")
    with pytest.raises(GankdError, match="differ in length"):
        RealESRGANDegradation(kernel_prob=(1.0,))


def test_realesrgan_options_change_the_result():
    hr = _photo_like(1, 64)
    clean = RealESRGANDegradation(noise_range=(0, 0.001), poisson_scale_range=(0, 0.001), noise_range2=(0, 0.001),
                                  poisson_scale_range2=(0, 0.001), jpeg_range=(95, 95), jpeg_range2=(95, 95))
    assert not torch.equal(realesrgan_lr(hr, 4, 0, clean), realesrgan_lr(hr, 4, 0))


# ----------------------------------------------------------------------------------------------- crop pools


def _images():
    return [_coordinate_image(64, 80, 0.1), _coordinate_image(48, 48, 0.2), _coordinate_image(16, 16, 0.3)]


def test_crop_pool_shapes_skips_and_true_crops():
    pool = CropPool.build(_images(), count=6, hr_size=32, scale=4, degradation="bicubic", seed=0)
    assert pool.hr.shape == (6, 3, 32, 32) and pool.lr.shape == (6, 3, 8, 8) and len(pool) == 6
    assert pool.hr.dtype == pool.lr.dtype == torch.float32
    assert pool.skipped == 1
    sources = {0.1: _images()[0], 0.2: _images()[1]}
    for crop in pool.hr:
        ident = round(crop[2, 0, 0].item(), 1)
        top, left = round(crop[0, 0, 0].item() * 1000), round(crop[1, 0, 0].item() * 1000)
        assert torch.equal(crop, sources[ident][:, top:top + 32, left:left + 32])
    assert [round(c[2, 0, 0].item(), 1) for c in pool.hr] == [0.1, 0.2] * 3  # round-robin over fitting images
    assert torch.allclose(pool.lr, bicubic_lr(pool.hr, 4))
    assert pool.memory_bytes() == (6 * 3 * 32 * 32 + 6 * 3 * 8 * 8) * 4
    hr, lr = pool.batch([4, 1])
    assert torch.equal(hr, pool.hr[[4, 1]]) and torch.equal(lr, pool.lr[[4, 1]])


def test_crop_pool_deterministic_in_seed():
    build = lambda seed, count=5: CropPool.build(_images(), count, 32, 4, "realesrgan", seed)  # noqa: E731
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr)
    assert not torch.equal(a.hr, c.hr)
    small = build(0, count=3)  # a larger pool extends a smaller one
    assert torch.equal(small.hr, a.hr[:3]) and torch.equal(small.lr, a.lr[:3])
    assert torch.allclose(a.lr * 255, (a.lr * 255).round(), atol=1e-4)


@pytest.mark.parametrize("hr_size,scale,message", [
    (30, 2, "hr_size 30 must be a multiple of scale 2 and of 8"),
    (36, 4, "hr_size 36 must be a multiple of scale 4 and of 8"),
    (24, 16, "hr_size 24 must be a multiple of scale 16 and of 8"),
    (128, 4, r"no image is at least hr_size=128 px on each side \(3 images, largest 64x80\)"),
])
def test_crop_pool_validates_hr_size(hr_size, scale, message):
    with pytest.raises(GankdError, match=message):
        CropPool.build(_images(), count=2, hr_size=hr_size, scale=scale, degradation="bicubic", seed=0)


def test_crop_pool_unknown_degradation():
    with pytest.raises(GankdError, match="unknown degradation 'blur'"):
        CropPool.build(_images(), count=1, hr_size=16, scale=2, degradation="blur", seed=0)


def test_validation_pool_fixed_crops():
    images = [_coordinate_image(64, 64, 0.1), _coordinate_image(8, 8, 0.2)]
    pool = validation_pool(images, hr_size=32, scale=4, degradation="realesrgan", seed=0, per_image=3)
    positions = [(round(c[0, 0, 0].item() * 1000), round(c[1, 0, 0].item() * 1000)) for c in pool.hr]
    assert positions == [(16, 16), (0, 0), (0, 32)]  # centre, then the grid
    assert pool.skipped == 1 and pool.lr.shape == (3, 3, 8, 8)
    again = validation_pool(images, hr_size=32, scale=4, degradation="realesrgan", seed=0, per_image=3)
    assert torch.equal(pool.lr, again.lr)
    one = validation_pool(images, hr_size=32, scale=4, degradation="bicubic", per_image=1)
    assert torch.equal(one.hr, pool.hr[:1])


# ----------------------------------------------------------------------------------------------- teacher cache


def _tiny_teacher():
    return ModelConfig(arch="rrdbnet", kwargs={"scale": 4, "num_feat": 8, "num_block": 1, "num_grow_ch": 4},
                       task="sr", scale=4).build()


def test_cache_teacher_matches_direct_forward():
    teacher = _tiny_teacher().train()
    lr = torch.rand(5, 3, 8, 8)
    outputs, feats = cache_teacher(teacher, lr, batch_size=2, max_cache_mb=10)
    with torch.no_grad():
        out, all_feats = teacher.eval().forward_with_features(lr)
    assert outputs.shape == (5, 3, 32, 32) and feats.shape == (5, 8, 8, 8)
    assert torch.allclose(outputs, out, atol=1e-6) and torch.allclose(feats, all_feats[-1], atol=1e-6)
    assert (outputs < 0).any() or (outputs > 1).any()  # raw, not clamped (a random net overshoots)
    assert not outputs.is_inference() and not feats.is_inference()
    student = torch.zeros_like(outputs, requires_grad=True)
    F.l1_loss(student, outputs).backward()  # usable as a loss target
    teacher.train()
    cache_teacher(teacher, lr, batch_size=5, max_cache_mb=10)
    assert teacher.training  # the caller's mode is restored


def test_cache_teacher_memory_limit():
    lr = torch.rand(5, 3, 8, 8)
    # per crop: out 3*32*32*4 B + feature 8*8*8*4 B = 14336 B; 5 crops = 0.068 MB
    with pytest.raises(GankdError, match=r"needs 0\.1 MB for 5 crops, over max_cache_mb=0\.05; lower .* crop count"):
        cache_teacher(_tiny_teacher(), lr, batch_size=2, max_cache_mb=0.05)
    cache_teacher(_tiny_teacher(), lr, batch_size=2, max_cache_mb=0.07)


# ----------------------------------------------------------------------------------------------- batches


def test_epoch_batches_deterministic_and_covering():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    batches = epoch_batches(10, 3, g)
    assert [len(b) for b in batches] == [3, 3, 3]
    flat = torch.cat(batches)
    assert len(set(flat.tolist())) == 9 and flat.max() < 10
    g.set_state(state)  # a resumed run restores the generator and replays the same order
    assert all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(10, 3, g)))
    assert not all(torch.equal(a, b) for a, b in zip(batches, epoch_batches(10, 3, g)))  # the next epoch differs
    seen = set()
    for _ in range(30):
        seen.update(torch.cat(epoch_batches(10, 3, g)).tolist())
    assert seen == set(range(10))  # the dropped tail changes from epoch to epoch


def test_epoch_batches_small_pool_and_errors():
    (only,) = epoch_batches(2, 4, torch.Generator().manual_seed(0))
    assert sorted(only.tolist()) == [0, 1]
    assert [len(b) for b in epoch_batches(8, 4, torch.Generator())] == [4, 4]
    with pytest.raises(GankdError, match="batch_size=0"):
        epoch_batches(4, 0, torch.Generator())


# ----------------------------------------------------------------------------------------------- photo mix


@pytest.mark.parametrize("kind", ["clean", "jpeg", "noise", "blur", "resize"])
def test_photo_kinds_are_seeded_8bit_and_degrade(kind):
    from gankd.distill.data.degrade import degrade_lr

    hr = _photo_like(2, 64)
    a, b, c = (degrade_lr(hr, 4, kind, seed) for seed in (3, 3, 4))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    assert torch.equal((a * 255).round(), a * 255)  # 8-bit values, as a decoded photo
    clean = degrade_lr(hr, 4, "clean", 0)
    if kind == "clean":
        assert torch.equal(a, c) and (clean - bicubic_lr(hr, 4)).abs().max() <= 0.5 / 255 + 1e-6
    else:  # a different seed draws another strength; every kind moves the input away from the clean LR
        assert not torch.equal(a, c) and (a - clean).abs().mean() > 1 / 255


def test_photo_strengths_are_what_the_mix_says():
    from gankd.distill.data.degrade import PhotoMix, degrade_lr

    hr = _photo_like(1, 256)  # 64² LR: JPEG's 4:2:0 chroma error stays below the noise compared
    clean = degrade_lr(hr, 4, "clean", 0)
    strong = degrade_lr(hr, 4, "noise", 0, PhotoMix(noise_sigma=(20, 20), jpeg_quality=(100, 100)))
    mild = degrade_lr(hr, 4, "noise", 0, PhotoMix(noise_sigma=(1, 1), jpeg_quality=(100, 100)))
    assert (strong - clean).std() > 3 * (mild - clean).std()
    low_q = degrade_lr(hr, 4, "jpeg", 0, PhotoMix(jpeg_quality=(10, 10)))
    high_q = degrade_lr(hr, 4, "jpeg", 0, PhotoMix(jpeg_quality=(98, 98)))
    assert (low_q - clean).abs().mean() > 2 * (high_q - clean).abs().mean()


def test_photo_pool_records_kinds_and_validation_scores_every_kind():
    from gankd.distill.data.degrade import PhotoMix

    images = [_photo_like(1, 96)[0] for _ in range(2)]
    pool = CropPool.build(images, count=24, hr_size=32, scale=4, degradation="photo", seed=0,
                          mix=PhotoMix(clean_share=0.5))
    assert len(pool.kinds) == 24 and {"clean"} < set(pool.kinds) <= {"clean", "jpeg", "noise", "blur", "resize"}
    again = CropPool.build(images, count=24, hr_size=32, scale=4, degradation="photo", seed=0)
    assert torch.equal(pool.lr, again.lr) and pool.kinds == again.kinds  # fixed per crop: the teacher cache holds
    assert set(CropPool.build(images, count=8, hr_size=32, scale=4, degradation="photo",
                              mix=PhotoMix(clean_share=1.0)).kinds) == {"clean"}
    val = validation_pool(images, 32, 4, degradation="photo", per_image=2)
    assert len(val) == 4 * 5 and val.kinds == tuple(k for k in ("clean", "jpeg", "noise", "blur", "resize")
                                                    for _ in range(4))
    assert torch.equal(val.hr[:4], val.hr[4:8])  # the same crops in every kind


def test_min_texture_redraws_flat_crops():
    """A half-flat image: without the bar many crops are sky; with it, crops come from the textured half."""
    image = torch.zeros(3, 128, 256) + 0.5
    image[:, :, 128:] = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    from gankd.distill.data.crops import texture

    plain = CropPool.build([image], count=16, hr_size=32, scale=4, seed=0)
    textured = CropPool.build([image], count=16, hr_size=32, scale=4, seed=0, min_texture=20)
    assert sum(texture(c) < 1 for c in plain.hr) >= 4  # negative control: the flat half is drawn without the bar
    assert all(texture(c) >= 20 for c in textured.hr)
    assert torch.equal(textured.hr, CropPool.build([image], count=16, hr_size=32, scale=4, seed=0,
                                                   min_texture=20).hr)  # still a function of the seed
