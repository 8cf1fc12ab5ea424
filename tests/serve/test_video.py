"""Video in, video out (``gankd-demo upscale`` on video files, ``gankd.serve.video``): every frame is the image
path's output for that frame, the frame rate, frame count and timestamps are kept, audio is copied packet for
packet, a truncated file keeps the frames written, a bad one is one line. The videos are made here with PyAV: a few
16x16 frames, lossless FFV1 in Matroska (with FLAC audio) and H.264 in MP4 (with and without AAC audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankd.serve import ServeError, Session
from gankd.serve.cli import main as demo_main
from gankd.serve.psnr import psnr

av = pytest.importorskip("av", reason="video needs PyAV (pip install 'gankd[video]')")

FRAMES, FPS, SIDE = 6, 12, 16
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artifact(shared_artifacts) -> Path:
    return shared_artifacts["sr"][1]  # a tiny x4 SRVGG (gankd-demo upscale's auto backend picks its ONNX)


@pytest.fixture(scope="module")
def session(artifact):
    return Session(artifact, backend="ort")


def _frames() -> list[np.ndarray]:
    """Smooth moving colour fields (a lossy codec keeps them close), one per frame."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    return [np.clip(np.dstack([0.5 + 0.4 * np.sin(6 * x + i), y, 0.5 + 0.4 * np.cos(5 * y - i)]) * 255, 0,
                    255).astype(np.uint8) for i in range(FRAMES)]


def make_video(path: Path, codec: str, pix_fmt: str, audio: str | None) -> Path:
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=FPS)
        video.width = video.height = SIDE
        video.pix_fmt = pix_fmt
        sound = out.add_stream(audio, rate=8000, layout="mono") if audio else None
        for i, rgb in enumerate(_frames()):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        if sound is not None:
            samples = 8000 * FRAMES // FPS
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 8000)).astype(np.float32)[None]
            step = sound.codec_context.frame_size or 1024
            for start in range(0, samples, step):
                chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + step]), format="flt",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = 8000, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        out.mux(video.encode(None))
    return path


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _packets(path: Path, kind: str) -> list[tuple]:
    with av.open(str(path)) as container:
        streams = getattr(container.streams, kind)
        return [(p.pts, bytes(p)) for p in container.demux(*streams) if p.dts is not None] if streams else []


def _info(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return {"rate": video.average_rate, "time_base": video.time_base, "codec": video.codec_context.name,
                "size": (video.codec_context.width, video.codec_context.height),
                "audio": [a.codec_context.name for a in container.streams.audio]}


def test_lossless_video_frames_equal_the_image_path_and_audio_is_copied(artifact, session, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    clip = make_video(src / "clip.mkv", "ffv1", "bgr0", audio="flac")
    Image.fromarray(_decoded(clip)[2]).save(src / "still.png")  # frame 2 as an image: the image path
    out = tmp_path / "out"
    assert demo_main(["upscale", str(artifact), str(src), str(out), "--tile", "8"]) == 0
    captured = capsys.readouterr()
    assert "upscaled 2 of 2 files" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["clip.mkv", "still.png"]
    frames_in, frames_out = _decoded(clip), _decoded(out / "clip.mkv")
    assert len(frames_in) == len(frames_out) == FRAMES
    for rgb, upscaled in zip(frames_in, frames_out):
        assert np.array_equal(upscaled, session.run(rgb, tile=8))  # FFV1 is lossless: equal to the bit
    assert np.array_equal(frames_out[2], np.asarray(Image.open(out / "still.png")))
    before, after = _info(clip), _info(out / "clip.mkv")
    assert after == {**before, "size": (SIDE * 4, SIDE * 4)}  # rate, time base, codec, audio kept
    assert [pts for pts, _ in _packets(out / "clip.mkv", "video")] == [pts for pts, _ in _packets(clip, "video")]
    assert _packets(out / "clip.mkv", "audio") == _packets(clip, "audio") != []  # copied, not re-encoded


@pytest.mark.parametrize("audio", ["aac", None])
def test_h264_mp4_keeps_rate_count_and_audio(session, tmp_path, audio):
    from gankd.serve.video import upscale_video

    clip = make_video(tmp_path / "clip.mp4", "libx264", "yuv420p", audio)
    result = upscale_video(session, clip, tmp_path / "big.mp4", tile=None, progress=False)
    assert (result.frames, result.expected, result.stopped, result.codec) == (FRAMES, FRAMES, "", "libx264")
    assert result.audio_streams == (1 if audio else 0)
    before, after = _info(clip), _info(tmp_path / "big.mp4")
    assert after == {**before, "size": (SIDE * 4, SIDE * 4)}
    assert _packets(tmp_path / "big.mp4", "audio") == _packets(clip, "audio")
    frames_in, frames_out = _decoded(clip), _decoded(tmp_path / "big.mp4")
    assert len(frames_out) == FRAMES
    expected = [session.run(rgb) for rgb in frames_in]
    # lossy (CRF 18, 4:2:0 chroma) on top of the image path's output: each frame is nearest its own
    for i, upscaled in enumerate(frames_out):
        db = [psnr(upscaled, other, peak=255.0) for other in expected]
        assert db[i] > 22 and db[i] == max(db), (i, db)


def test_truncated_video_keeps_the_frames_written(artifact, session, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    whole = make_video(tmp_path / "whole.mkv", "ffv1", "bgr0", audio=None)
    data = whole.read_bytes()
    (src / "cut.mkv").write_bytes(data[:len(data) * 6 // 10])
    assert demo_main(["upscale", str(artifact), str(src), str(tmp_path / "out"), "--tile", "0"]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("partial cut.mkv: ")]
    assert len(lines) == 1 and "kept the " in lines[0] and "(truncated?)" in lines[0]
    assert "1 video cut short" in captured.out
    kept = _decoded(tmp_path / "out" / "cut.mkv")
    assert 0 < len(kept) < FRAMES and f"kept the {len(kept)} frames written" in lines[0]
    for rgb, upscaled in zip(_decoded(whole), kept):
        assert np.array_equal(upscaled, session.run(rgb, tile=0))


def test_bad_video_is_one_line_and_writes_nothing(artifact, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad.mp4").write_bytes(b"not a video at all" * 20)
    whole = make_video(tmp_path / "whole.mp4", "libx264", "yuv420p", audio=None)  # moov at the end: a cut file
    (src / "cut.mp4").write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])  # has no index to read
    assert demo_main(["upscale", str(artifact), str(src), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    for name in ("bad.mp4", "cut.mp4"):
        assert f"skipped {name}: cannot open it as a video (Invalid data found when processing input)\n" in err
    assert list((tmp_path / "out").iterdir()) == []  # nor a partial file


def test_video_over_the_pixel_limit_is_one_line(artifact, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "clip.mkv", "ffv1", "bgr0", audio=None)
    assert demo_main(["upscale", str(artifact), str(src), str(tmp_path / "out"), "--max-pixels", "100"]) == 1
    assert "skipped clip.mkv: the image is 16x16 px = 256 pixels, over the limit of 100\n" in capsys.readouterr().err


def test_progress_shows_frames_per_second_and_time_left(session, tmp_path, capsys):
    from gankd.serve.video import upscale_video

    clip = make_video(tmp_path / "clip.mkv", "ffv1", "bgr0", audio=None)
    upscale_video(session, clip, tmp_path / "out.mkv")
    err = capsys.readouterr().err
    assert "clip.mkv: 100%" in err and f"{FRAMES}/{FRAMES}" in err and "frame/s" in err and "<00:00" in err


def test_without_pyav_a_video_is_one_line(session, tmp_path, monkeypatch):
    import sys

    from gankd.serve.video import upscale_video

    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ServeError, match=r"^video files need PyAV \(pip install av, or 'gankd\[video\]'\): it is "
                                         "missing here$"):
        upscale_video(session, tmp_path / "clip.mp4", tmp_path / "out.mp4")


def test_in_place_video_names_never_replace_an_input():
    from gankd.serve.cli import output_names
    from gankd.serve.video import is_video

    files = [Path("in/clip.mp4"), Path("in/clip.png"), Path("in/b.MKV")]
    names = output_names(files, taken={"clip.mp4", "clip.png", "b.MKV"},
                         extension=lambda p: p.suffix.lower() if is_video(p) else ".png")
    assert names == {Path("in/clip.mp4"): "clip.mp4.mp4", Path("in/clip.png"): "clip.png.png",
                     Path("in/b.MKV"): "b.MKV.mkv"}
