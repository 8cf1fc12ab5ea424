"""A 10-second 480p clip upscaled x4, end to end, as ``gankd-demo upscale`` does it, and the teacher's projected time.

    python demos/video_480p.py exports/student --teacher exports/teacher [--variant int8] [--backend auto] \\
        [--seconds 10] [--fps 30] --out docs/results/video_480p.json

The clip is made here (PyAV, H.264 + an AAC tone, so the audio copy is exercised): a slow pan across a held-out
photo (``motorcycle_left``), 640x480. It is then upscaled through ``gankd.serve.video.upscale_video`` with the
Session ``upscale`` opens (its default 256 px tiles), and the wall time covers decoding, the network, encoding and
the audio copy. The teacher is not run on the whole clip (hours on 2 cores): its time for one frame, through the same
Session path, times the frame count is its projection. Not a test: minutes; run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SIZE = (640, 480)  # W x H


def make_clip(path: Path, seconds: float, fps: int) -> int:
    """A pan across a held-out photo, with a 440 Hz tone as audio; returns the frame count."""
    import av

    from gankd.distill.data.images import sample_images

    photo = dict(sample_images("holdout"))["motorcycle_left"]  # 3 x 500 x 741, [0, 1]
    image = (photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = np.ascontiguousarray(np.pad(image, ((0, max(0, SIZE[1] - image.shape[0])), (0, 0), (0, 0)), "edge"))
    frames = int(round(seconds * fps))
    span = image.shape[1] - SIZE[0]
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        for i in range(frames):
            x = int(round(span * i / max(1, frames - 1)))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:SIZE[1], x:x + SIZE[0]]), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = int(seconds * 44100)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[start:start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            frame.sample_rate = 44100
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher artifact: one frame, projected")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    args = parser.parse_args(argv)

    from gankd.export.int8 import cpu_features
    from gankd.serve import Session
    from gankd.serve.timing import timed_ms
    from gankd.serve.video import upscale_video

    with tempfile.TemporaryDirectory(prefix="gankd-video-") as tmp:
        clip, out = Path(tmp) / "clip_480p.mp4", Path(tmp) / "clip_x4.mp4"
        frames = make_clip(clip, args.seconds, args.fps)
        session = Session(args.artifact, backend=args.backend, variant=args.variant, threads=args.threads)
        result, wall_ms = timed_ms(upscale_video, session, clip, out, tile=256, progress=True)
        wall_s = wall_ms / 1e3
        record = {"artifact": str(args.artifact), "backend": session.backend, "variant": args.variant,
                  "clip": {"size": list(SIZE), "seconds": args.seconds, "fps": args.fps, "frames": frames},
                  "frames_written": result.frames, "audio_streams": result.audio_streams, "wall_s": wall_s,
                  "fps_achieved": result.frames / wall_s, "cpu": cpu_features(), "tile": 256}
        if args.teacher:
            import av

            teacher = Session(args.teacher, backend=args.backend, threads=args.threads)
            with av.open(str(clip)) as source:
                rgb = next(source.decode(video=0)).to_ndarray(format="rgb24")
            frame_s = timed_ms(teacher.run, rgb, tile=256)[1] / 1e3
            record["teacher"] = {"artifact": str(args.teacher), "backend": teacher.backend, "one_frame_s": frame_s,
                                 "projected_s": frame_s * frames, "speedup": frame_s * frames / wall_s}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
