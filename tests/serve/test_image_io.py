"""The one image reader (gankd.serve.images) and `gankd-demo upscale` on top of it: EXIF orientation, every PIL
mode at its real range, the same size limits as the demo, animated files (first frame, and it says so)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gankd.serve import ServeError, Session
from gankd.serve.cli import main as demo_main
from gankd.serve.images import MIN_SIDE_PX, read_image, to_array

ORIENTATION = 0x0112

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(height: int = 24, width: int = 16) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[50:50 + height, 200:200 + width])


def _with_orientation(array: np.ndarray, path, value: int, **kwargs):
    exif = Image.Exif()
    exif[ORIENTATION] = value
    Image.fromarray(array).save(path, exif=exif, **kwargs)
    return path


# ----------------------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("value, turn", [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)),
                                         (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                         (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, value, turn):
    photo = _photo()
    picture = read_image(_with_orientation(photo, tmp_path / "p.png", value), max_pixels=10_000)
    assert np.array_equal(picture.array, turn(photo))


def test_sixteen_bit_gray_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 16 * 20).reshape(16, 20).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g.png")
    picture = read_image(tmp_path / "g.png", max_pixels=10_000)
    assert picture.source_mode == "I;16" and picture.array.dtype == np.uint16
    assert np.array_equal(picture.array, ramp)  # no clip to 255, no 8-bit rounding


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"])
def test_every_pil_mode_maps_to_a_session_input(mode):
    base = Image.fromarray(_photo(12, 10))
    image = base.convert("LA").convert(mode) if mode == "La" else base.convert(mode)
    array = to_array(image)
    assert array.dtype in (np.uint8, np.uint16, np.float32), mode
    assert array.shape[:2] == (12, 10)
    assert array.ndim == 2 or array.shape[2] in (3, 4), (mode, array.shape)
    top = 1.0 if array.dtype == np.float32 else np.iinfo(array.dtype).max
    assert 0 < array.max() <= top, (mode, array.max())  # a real range, not all black or clipped out of it
    if mode == "F":  # values 0..255 after convert: read as such, not as a nearly black [0, 1] image
        assert array.max() > 0.5 * top


def test_gray_alpha_and_wide_integers_keep_their_range():
    gray = np.asarray(Image.fromarray(_photo(12, 10)).convert("L"))
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(np.full_like(gray, 128))])
    rgba = to_array(la)
    assert rgba.shape == (12, 10, 4) and np.array_equal(rgba[:, :, 0], gray) and (rgba[:, :, 3] == 128).all()
    wide = Image.fromarray(gray.astype(np.int32) << 23)  # a 32-bit integer image using its range
    assert wide.mode == "I"
    values = to_array(wide)
    assert values.dtype == np.float32 and abs(float(values.max()) - int(gray.max()) * 2 ** 23 / (2 ** 31 - 1)) < 1e-6


def test_limits_and_animations(tmp_path):
    Image.fromarray(_photo(1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ServeError, match=f"it needs at least {MIN_SIDE_PX} px on each side"):
        read_image(tmp_path / "dot.png", max_pixels=10_000)
    Image.fromarray(_photo(40, 40)).save(tmp_path / "big.png")
    with pytest.raises(ServeError, match="over the limit of 1000"):
        read_image(tmp_path / "big.png", max_pixels=1000)
    frames = [Image.fromarray(np.full((12, 12, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    picture = read_image(tmp_path / "anim.gif", max_pixels=10_000)
    assert picture.note == "the file has 3 frames: used the first"
    assert picture.array.shape == (12, 12, 3) and abs(int(picture.array.mean()) - 10) <= 2
    (tmp_path / "text.png").write_text("no pixels here")
    with pytest.raises(ServeError, match="not an image"):
        read_image(tmp_path / "text.png", max_pixels=10_000)


# ----------------------------------------------------------------------------------------------- upscale CLI


@pytest.fixture(scope="module")
def artifact(shared_artifacts):
    return shared_artifacts["sr_small"][1]  # a tiny x2 SRVGG, ONNX only


def test_upscale_reads_as_the_demo_reads(artifact, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    photo = _photo(24, 16)
    _with_orientation(photo, src / "portrait.jpg", 6, quality=95)
    Image.fromarray(_photo(1, 1)).save(src / "dot.png")  # the demo refuses 1x1; so does upscale now
    ramp = np.linspace(300, 60000, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(src / "gray16.png")
    frames = [Image.fromarray(_photo(12, 12)), Image.fromarray(_photo(12, 12)[::-1])]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert demo_main(["upscale", str(artifact), str(src), str(out), "--tile", "0"]) == 1
    err = capsys.readouterr().err
    assert "skipped dot.png: the image is 1x1 px; it needs at least 8 px on each side" in err
    assert "note anim.gif: the file has 2 frames: used the first" in err
    assert Image.open(out / "portrait.png").size == (48, 32)  # upright: 24 wide, 16 high, x2
    gray = Image.open(out / "gray16.png")
    assert gray.mode == "I;16" and np.array_equal(np.asarray(gray), Session(artifact).run(ramp))
    assert sorted(p.name for p in out.iterdir()) == ["anim.png", "gray16.png", "portrait.png"]
