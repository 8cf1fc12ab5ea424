"""The Gradio demo live on 127.0.0.1, driven by gradio_client: one request per model configuration, bad uploads
with their messages (the server stays up), concurrent requests each getting their own output, and the
`make quickstart` hint when there are no artifacts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankd.serve import Session
from gankd.serve.app import QUICKSTART_HINT, build_app
from gankd.serve.ports import free_port
from helpers.images import astronaut_crop

gradio_client = pytest.importorskip("gradio_client")

MAX_PIXELS = 64 * 64
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def client(demo_artifacts):
    demo = build_app(demo_artifacts, max_pixels=MAX_PIXELS, default_tile=16)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                   httpx_kwargs={"timeout": TIMEOUT_S})
    finally:
        demo.close()


def _upscale(client, path, backend="auto", tile=0, teacher="teacher", student="student"):
    job = client.submit(gradio_client.handle_file(str(path)), teacher, student, backend, tile, api_name="/upscale")
    return job.result(timeout=TIMEOUT_S)


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("backend, tile", [("ort", 0), ("torch", 16), ("auto", 16)])
def test_each_model_configuration(client, tmp_path, backend, tile):
    photo = astronaut_crop(0, 20)
    out_teacher, out_student, report = _upscale(client, _save(photo, tmp_path / "in.png"), backend, tile)
    for out in (out_teacher, out_student):
        assert np.asarray(Image.open(out)).shape == (80, 80, 3)
    assert report.count(" ms") == 2 and "teacher" in report and "student" in report
    assert "PSNR to teacher" in report and " dB" in report


def _bad_uploads(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    text = tmp_path / "notes.png"
    text.write_text("not an image at all\n")
    good = _save(astronaut_crop(1), tmp_path / "good.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[:len(good) // 2])
    big = _save(np.zeros((80, 80, 3), np.uint8), tmp_path / "big.png")
    tiny = _save(np.zeros((1, 1, 3), np.uint8), tmp_path / "tiny.png")
    bomb = tmp_path / "bomb.png"  # a few KB on disk, 400 Mpx once decoded: refused from the header
    Image.new("1", (20000, 20000)).save(bomb)
    return {"text": (text, "not an image"), "truncated": (truncated, "cannot decode"),
            "too many pixels": (big, "over the limit"), "1x1": (tiny, "at least 8 px"),
            "decompression bomb": (bomb, "too large")}


def test_bad_uploads_get_a_message_and_the_server_stays_up(client, tmp_path):
    for kind, (path, message) in _bad_uploads(tmp_path).items():
        with pytest.raises(Exception) as info:
            _upscale(client, path)
        assert message in str(info.value), (kind, str(info.value))
    out_teacher, _, _ = _upscale(client, _save(astronaut_crop(2), tmp_path / "ok.png"))
    assert np.asarray(Image.open(out_teacher)).shape == (96, 96, 3)


def test_concurrent_requests_each_get_their_own_output(client, demo_artifacts, tmp_path):
    photos = [astronaut_crop(i) for i in range(50)]  # different crops: a mixed-up response cannot match
    paths = [_save(p, tmp_path / f"in{i}.png") for i, p in enumerate(photos)]
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda path: _upscale(client, path, "ort", 16), paths))
    teacher, student = (Session(d, backend="ort") for d in demo_artifacts)
    for photo, (out_teacher, out_student, _) in zip(photos, results):
        assert np.array_equal(np.asarray(Image.open(out_teacher)), teacher.run(photo, tile=16))
        assert np.array_equal(np.asarray(Image.open(out_student)), student.run(photo, tile=16))


def test_concurrent_requests_for_the_same_image_all_get_it_whole(client, demo_artifacts, tmp_path):
    """Two users on one example get byte-identical outputs, which Gradio stores at one content-hashed path: each
    fetch gets the whole PNG (Gradio rewrote the file in place, and a fetch could read it half written:
    demos/soak.py saw undecodable PNGs)."""
    import io

    import httpx

    raw = gradio_client.Client(client.src, verbose=False, download_files=False, httpx_kwargs={"timeout": TIMEOUT_S})
    path = _save(astronaut_crop(3, 32), tmp_path / "same.png")

    def fetch(_):
        out_teacher, _, _ = raw.submit(gradio_client.handle_file(str(path)), "teacher", "student", "ort", 16,
                                       api_name="/upscale").result(timeout=TIMEOUT_S)
        return httpx.get(out_teacher["url"], timeout=TIMEOUT_S).content

    with ThreadPoolExecutor(12) as pool:
        downloads = list(pool.map(fetch, range(12)))
    expected = Session(demo_artifacts[0], backend="ort").run(astronaut_crop(3, 32), tile=16)
    for content in downloads:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(content))), expected)


def test_cached_outputs_are_renamed_into_place(tmp_path):
    """The writer under the live test above, many threads on one output while others read it back."""
    import threading

    from gradio.processing_utils import hash_file

    from gankd.serve.app import _cached_png

    image = astronaut_crop(4, 64)
    path = Path(_cached_png(image, str(tmp_path)))
    assert path.parent.name == hash_file(path) and path.name == "image.png"  # where Gradio's copy step looks
    path.unlink()
    stop, failures = threading.Event(), []

    def read():
        while not stop.is_set():
            if path.exists():
                try:
                    assert np.array_equal(np.asarray(Image.open(path)), image)
                except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                    failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: _cached_png(image, str(tmp_path)), range(200)))
    stop.set()
    for thread in readers:
        thread.join()
    assert paths == {str(path)} and not failures
    assert sorted(p.name for p in path.parent.iterdir()) == ["image.png"]  # no partial file left


def _markdown_values(demo) -> list[str]:
    import gradio as gr

    return [str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown)]


def test_no_artifacts_shows_the_quickstart_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no exports/ here
    for demo in (build_app(None), build_app([])):
        assert any("make quickstart" in value for value in _markdown_values(demo))
        assert QUICKSTART_HINT in _markdown_values(demo)
