"""gankd.serve on tiny exported models: Session on ONNX and pt2 against the PyTorch model, image kinds (dtype,
alpha, grayscale, 16-bit), seam-free tiling on a real photo, thread safety, the ``gankd-demo upscale`` batch command
and one-line errors. (Tests may import distill/export to make artifacts; gankd.serve itself never does.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gankd.distill import load_model
from gankd.serve import ServeError, Session
from gankd.serve.cli import main as demo_main

from helpers.sessions import assert_same_output_under_threads

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(height: int = 80, width: int = 96, top: int = 60, left: int = 150) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[top:top + height, left:left + width])


@pytest.fixture(scope="module")
def artifacts(shared_artifacts):
    """(model folder, artifact folder) of the shared x4 SRVGG and x2 RRDB (onnx + pt2; outputs around 0.5)."""
    return {"srvgg4": shared_artifacts["sr"], "rrdb2": shared_artifacts["sr_x2"]}


def _reference(model_dir, rgb_float: np.ndarray, pad: int = 10) -> np.ndarray:
    """The PyTorch model on the reflect-padded image, cropped: what Session.run_array must return."""
    model = load_model(model_dir)
    x = torch.from_numpy(rgb_float.transpose(2, 0, 1)[None].copy())
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    with torch.no_grad():
        y = model(x)[0].numpy().transpose(1, 2, 0)
    s = model.gankd_config.scale
    return np.clip(y[pad * s:(pad + rgb_float.shape[0]) * s, pad * s:(pad + rgb_float.shape[1]) * s], 0, 1)


# ----------------------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("name", ["srvgg4", "rrdb2"])
@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_session_matches_the_torch_model(artifacts, name, backend):
    model_dir, art = artifacts[name]
    session = Session(art, backend=backend)
    assert session.backend == backend
    rgb = _photo(40, 36).astype(np.float32) / 255
    out = session.run_array(rgb)
    ref = _reference(model_dir, rgb)
    assert out.shape == ref.shape == (40 * session.scale, 36 * session.scale, 3)
    assert np.abs(out - ref).max() < 1e-4
    assert ref.std() > 0.01  # a real, non-constant output


def test_auto_picks_ort_and_falls_back_to_torch(artifacts, tmp_path):
    _, art = artifacts["srvgg4"]
    assert Session(art).backend == "ort"
    copy = tmp_path / "pt2only"
    shutil.copytree(art, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert Session(copy).backend == "torch"


def test_odd_size_on_pixel_unshuffle_model(artifacts):
    model_dir, art = artifacts["rrdb2"]  # needs inputs that are a multiple of 2
    rgb = _photo(33, 31).astype(np.float32) / 255
    out = Session(art, backend="ort").run_array(rgb, pad=0)
    assert out.shape == (66, 62, 3)


# ----------------------------------------------------------------------------------------------- image kinds


@pytest.fixture(scope="module")
def srvgg(artifacts):
    return Session(artifacts["srvgg4"][1], backend="ort")


def test_uint8_in_uint8_out_and_pil(srvgg):
    img = _photo(24, 20)
    out = srvgg.run(img)
    assert out.dtype == np.uint8 and out.shape == (96, 80, 3)
    expected = np.rint(srvgg.run_array(img.astype(np.float32) / 255) * 255).astype(np.uint8)
    assert np.array_equal(out, expected)
    pil = srvgg.run(Image.fromarray(img))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (80, 96)
    assert np.array_equal(np.asarray(pil), out)
    as_float = srvgg.run(img.astype(np.float64) / 255)
    assert as_float.dtype == np.float64 and np.abs(as_float * 255 - out).max() <= 0.5 + 1e-6


def test_sixteen_bit_stays_sixteen_bit(srvgg):
    img16 = _photo(24, 20).astype(np.uint16) * 257 + 100  # values a uint8 path could not hold
    out = srvgg.run(img16)
    assert out.dtype == np.uint16 and out.shape == (96, 80, 3)
    expected = srvgg.run_array(img16.astype(np.float32) / 65535) * 65535
    assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-3
    assert len(np.unique(out % 257)) > 1  # not 8-bit values scaled up
    gray16 = Image.fromarray(img16[:, :, 0])
    assert gray16.mode == "I;16"
    out_pil = srvgg.run(gray16)
    assert out_pil.mode == "I;16" and out_pil.size == (80, 96)


def test_rgba_alpha_is_bicubic_and_rgb_goes_through_the_model(srvgg):
    rgb = _photo(24, 20)
    alpha = np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (24, 1))
    out = srvgg.run(np.dstack([rgb, alpha]))
    assert out.shape == (96, 80, 4) and out.dtype == np.uint8
    assert np.array_equal(out[:, :, :3], srvgg.run(rgb))
    bicubic = np.asarray(Image.fromarray(alpha.astype(np.float32) / 255).resize((80, 96), Image.Resampling.BICUBIC))
    assert np.abs(out[:, :, 3].astype(float) - np.clip(bicubic, 0, 1) * 255).max() <= 0.5 + 1e-3
    pil = srvgg.run(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    assert pil.mode == "RGBA" and np.array_equal(np.asarray(pil), out)


def test_grayscale_goes_through_rgb_and_comes_back_gray(srvgg):
    gray = _photo(24, 20)[:, :, 1]
    out = srvgg.run(gray)
    assert out.shape == (96, 80) and out.dtype == np.uint8
    rgb = srvgg.run_array(np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32) / 255)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out - luma * 255).max() <= 0.5 + 1e-3
    assert srvgg.run(gray[:, :, None]).shape == (96, 80, 1)
    assert srvgg.run(Image.fromarray(gray)).mode == "L"


# ----------------------------------------------------------------------------------------------- tiling


def test_tiled_equals_untiled_on_a_real_photo(srvgg):
    photo = _photo(80, 96)  # SRVGG with 2 body convs: receptive-field radius 4 LR px, inside the 10 px pad
    whole = srvgg.run(photo.astype(np.float32) / 255)
    tiled = srvgg.run(photo.astype(np.float32) / 255, tile=32, pad=10)
    assert tiled.shape == whole.shape == (320, 384, 3)
    assert np.abs(tiled - whole).max() <= 1e-4  # the contract is 1/255; with the field inside the pad it is exact
    assert np.abs(srvgg.run(photo, tile=32).astype(int) - srvgg.run(photo).astype(int)).max() <= 1
    # without overlap the seams show: the check above can fail
    seams = srvgg.run(photo.astype(np.float32) / 255, tile=32, pad=0)
    assert np.abs(seams - srvgg.run(photo.astype(np.float32) / 255, pad=0)).max() > 1 / 255


def test_tiling_with_ragged_tiles_and_a_spatial_multiple(artifacts):
    model_dir, art = artifacts["rrdb2"]
    session = Session(art, backend="ort")
    photo = _photo(45, 37).astype(np.float32) / 255
    # the pad covers the receptive field: 17 convs at the pixel-unshuffled half resolution = 34 px, plus the HR convs
    whole = session.run(photo, pad=40)
    tiled = session.run(photo, tile=16, pad=40)
    assert tiled.shape == whole.shape == (90, 74, 3)
    assert np.abs(tiled - whole).max() <= 1e-4  # exact up to float rounding (a 1 px shift differs by ~4e-3 here)
    assert np.abs(session.run(photo, tile=16, pad=0) - session.run(photo, pad=0)).max() > 1 / 255


# ----------------------------------------------------------------------------------------------- threads


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_one_session_many_threads(artifacts, backend):
    srvgg = Session(artifacts["srvgg4"][1], backend=backend)
    images = [_photo(24 + 2 * i, 20 + i, top=10 * i, left=200 + 7 * i) for i in range(8)]
    assert_same_output_under_threads(srvgg, images)


# ----------------------------------------------------------------------------------------------- errors


def test_bad_inputs_give_one_line_errors(artifacts, tmp_path):
    _, art = artifacts["srvgg4"]
    cases = [
        (lambda: Session(tmp_path / "missing"), "does not exist"),
        (lambda: Session(tmp_path), "manifest.json is missing"),
        (lambda: Session(art, backend="tpu"), "unknown backend 'tpu'"),
        (lambda: Session(art, variant="int8"), "nothing the auto backend can run"),
        (lambda: Session(art, backend="ort", variant="int8"), "no onnx-int8 file"),
        (lambda: Session(art, backend="torch", variant="fp16"), "fp32"),
        (lambda: Session(art, backend="trt"), "the trt backend needs the tensorrt Python package"),
        (lambda: Session(art).run(np.zeros((4, 4, 2), np.uint8)), "HxWx3"),
        (lambda: Session(art).run(np.zeros((4, 4, 3), np.int32)), "unsupported pixel type"),
        (lambda: Session(art).run("image.png"), "numpy array or a PIL image"),
    ]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((lambda: Session(art, backend="ort-cuda"), "CUDAExecutionProvider"))
    for call, words in cases:
        with pytest.raises(ServeError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
    broken = tmp_path / "broken"
    shutil.copytree(art, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(ServeError, match="the manifest lists model.onnx but the file is missing"):
        Session(broken, backend="ort")
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ServeError, match="not valid JSON"):
        Session(broken)


# ----------------------------------------------------------------------------------------------- CLI


def test_upscale_cli_skips_bad_files(artifacts, tmp_path, capsys):
    _, art = artifacts["srvgg4"]
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(20, 24)).save(src / "a.png")
    Image.fromarray(_photo(16, 12)[:, :, 0]).save(src / "b.jpg")
    Image.fromarray(np.dstack([_photo(10, 14), np.full((10, 14), 200, np.uint8)])).save(src / "c.png")
    (src / "notes.txt").write_text("not an image")
    good = (src / "a.png").read_bytes()
    (src / "truncated.png").write_bytes(good[:len(good) // 2])
    Image.fromarray(_photo(64, 64)).save(src / "huge.png")
    out = tmp_path / "out"
    code = demo_main(["upscale", str(art), str(src), str(out), "--tile", "8", "--max-pixels", "1000"])
    err = capsys.readouterr().err
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert sorted(line.split(":")[0] for line in skipped) == ["skipped huge.png", "skipped notes.txt",
                                                             "skipped truncated.png"]
    assert "over the limit of 1000" in err
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"a.png": (96, 80), "b.png": (48, 64), "c.png": (56, 40)}
    assert Image.open(out / "b.png").mode == "L" and Image.open(out / "c.png").mode == "RGBA"

    (src / "notes.txt").unlink()
    (src / "truncated.png").unlink()
    (src / "huge.png").unlink()
    assert demo_main(["upscale", str(art), str(src), str(tmp_path / "out2")]) == 0


def test_upscale_cli_errors_and_the_demo_stub(artifacts, tmp_path, capsys):
    assert demo_main(["upscale", str(tmp_path / "nope"), str(tmp_path), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert demo_main(["upscale", str(artifacts["srvgg4"][1]), str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    exe = shutil.which("gankd-demo", path=str(BIN))
    for args, message in (([str(tmp_path / "nope")], "does not exist"), ([str(tmp_path)], "manifest.json")):
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)  # the demo's folder check
        assert proc.returncode == 2 and message in proc.stderr
        assert proc.stderr.count("\n") == 1
