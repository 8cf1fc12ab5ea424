"""Video in, video out: ``gankd-demo upscale`` runs each frame of a video file through ``Session.run``.

Frames are decoded and encoded with PyAV (PyPI ``av``, FFmpeg's libraries in the wheel; ``pip install
'gankd[video]'``), which imports on first use:

- Each frame is decoded to 8-bit RGB and upscaled by ``Session.run`` with the same tile and pad as an image file,
  so a frame's output is the image path's output for that frame (equal to the bit with a lossless codec; a lossy
  one adds its own error on top).
- The output has the input's container (its suffix) and video codec where FFmpeg can encode it (h264 through
  libx264 at CRF 18, ffv1, vp9, mpeg4, ...; otherwise libx264, or vp9 for WebM), the input's pixel format where
  the encoder takes it, the input's time base and each frame's timestamp: the frame rate and the frame count are
  kept (variable frame rates too). Audio streams are copied packet by packet, not re-encoded (the container is the
  input's, so it takes them).
- A progress bar (tqdm, on stderr) shows frames per second and the time left.
- A file that is not a video, or a frame size over the limits, is one line (:class:`ServeError`) and nothing is
  written. A video that breaks off (truncated, damaged) stops at the first frame that cannot be decoded: the frames
  written so far are kept in a playable file and :class:`VideoResult` says why it stopped.

The output is written to a hidden file beside the destination and renamed into place at the end, as images are
(``serve.files.atomic_write``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ServeError, first_line
from .files import atomic_write
from .images import check_size

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
CRF = "18"  # libx264 / libx265 quality: visually lossless for upscaled content
X26X = ("libx264", "libx265")
FALLBACK_CODEC = {".webm": "libvpx-vp9"}  # what a container takes when the input's codec has no encoder here
DEFAULT_CODEC = "libx264"
MAX_BIT_RATE = 50_000_000


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av():
    try:
        import av
    except ImportError:
        raise ServeError("video files need PyAV (pip install av, or 'gankd[video]'): it is missing here") from None
    return av


@dataclass(frozen=True)
class VideoResult:
    """What :func:`upscale_video` wrote: ``frames`` frames (of ``expected``, when the file says), the audio
    streams copied, and ``stopped``: why it ended early ("" when it did not)."""

    frames: int
    expected: int | None
    audio_streams: int
    codec: str
    stopped: str = ""


def upscale_video(session, src: str | Path, dst: str | Path, tile: int | None = None, pad: int = 10,
                  progress: bool = True) -> VideoResult:
    """Upscale every frame of ``src`` with ``session`` (an SR Session) into ``dst`` (see the module docstring)."""
    av = require_av()
    src, dst = Path(src), Path(dst)
    try:
        source = av.open(str(src))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"cannot open it as a video ({_reason(exc)})") from None
    with source:
        if not source.streams.video:
            raise ServeError("the file has no video stream")
        video_in = source.streams.video[0]
        width, height = video_in.codec_context.width, video_in.codec_context.height
        check_size(width, height, session.max_pixels)
        results: list[VideoResult] = []

        def write(partial: Path) -> None:
            results.append(_transcode(av, session, source, video_in, partial, dst.suffix.lower(), tile, pad,
                                      progress, src.name))
            if results[0].frames == 0:  # refused: atomic_write removes the partial file, dst stays as it was
                raise ServeError(f"no frame could be decoded ({results[0].stopped or 'the video stream is empty'})")

        try:
            atomic_write(dst, write)
        except OSError as exc:  # the destination folder takes no new file
            raise ServeError(f"cannot write {dst.suffix} video here ({first_line(exc)})") from None
    return results[0]


def _transcode(av, session, source, video_in, partial: Path, suffix: str, tile, pad, progress: bool,
               name: str) -> VideoResult:
    from tqdm import tqdm

    audio_in = list(source.streams.audio)
    expected = video_in.frames or _frames_from_duration(source, video_in)
    try:
        target = av.open(str(partial), "w")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise ServeError(f"cannot write {partial.suffix} video here ({_reason(exc)})") from None
    frames, stopped = 0, ""
    bar = tqdm(total=expected, desc=name, unit="frame", file=sys.stderr, disable=not progress)
    try:
        video_out = _video_stream(av, target, video_in, session.scale, suffix)
        audio_out = {stream.index: target.add_stream_from_template(stream) for stream in audio_in}
        try:
            for packet in source.demux(video_in, *audio_in):
                if packet.stream.index in audio_out:
                    if packet.dts is not None:  # the flush packet at the end of a stream carries nothing
                        packet.stream = audio_out[packet.stream.index]
                        target.mux(packet)
                    continue
                for frame in packet.decode():
                    _write(av, target, video_out, frame, session.run(frame.to_ndarray(format="rgb24"), tile=tile,
                                                                      pad=pad))
                    frames += 1
                    bar.update(1)
        except (av.FFmpegError, EOFError) as exc:  # damaged or truncated: keep what was written
            stopped = f"decoding stopped after frame {frames}: {_reason(exc)}"
        target.mux(video_out.encode(None))
    except ServeError:
        raise
    except av.FFmpegError as exc:
        raise ServeError(f"cannot encode the video ({_reason(exc)})") from None
    finally:
        bar.close()
        target.close()
    # a count derived from the duration may be one off (rounding); a declared one is exact
    if not stopped and expected and frames < expected - (0 if video_in.frames else 1):
        stopped = (f"the video ends after frame {frames} of the {expected} its "
                   f"{'header declares' if video_in.frames else 'duration implies'} (truncated?)")
    return VideoResult(frames=frames, expected=expected or None, audio_streams=len(audio_in),
                       codec=video_out.codec_context.name, stopped=stopped)


def _frames_from_duration(source, video_in) -> int | None:
    """The frame count the duration and average rate imply (containers such as Matroska store no count)."""
    rate = video_in.average_rate or video_in.guessed_rate
    duration = video_in.duration * video_in.time_base if video_in.duration and video_in.time_base else \
        (source.duration / 1_000_000 if source.duration else None)
    return round(float(duration * rate)) if rate and duration else None


def _video_stream(av, target, video_in, scale: int, suffix: str):
    """The output video stream: the input's codec where it can be encoded here, at the input's rate and time base,
    ``scale`` times the size, the input's pixel format where the encoder takes it."""
    codec = _encoder(av, video_in.codec_context.name, suffix)
    stream = target.add_stream(codec, rate=video_in.average_rate or video_in.guessed_rate or 25)
    stream.width = video_in.codec_context.width * scale
    stream.height = video_in.codec_context.height * scale
    formats = [f.name for f in (av.Codec(codec, "w").video_formats or [])]
    pix_fmt = video_in.codec_context.pix_fmt
    stream.pix_fmt = pix_fmt if pix_fmt in formats else ("yuv420p" if "yuv420p" in formats or not formats
                                                          else formats[0])
    stream.time_base = video_in.time_base
    stream.codec_context.time_base = video_in.time_base
    if stream.codec_context.name in X26X:
        stream.options = {"crf": CRF}
    elif codec not in ("ffv1", "png", "rawvideo", "libx264rgb") and video_in.codec_context.bit_rate:
        stream.bit_rate = min(MAX_BIT_RATE, video_in.codec_context.bit_rate * scale * scale)
    return stream


def _encoder(av, decoder_name: str, suffix: str) -> str:
    for name in (decoder_name, FALLBACK_CODEC.get(suffix, DEFAULT_CODEC)):
        try:
            return av.Codec(name, "w").name
        except (av.FFmpegError, ValueError):
            continue
    raise ServeError(f"no encoder for {decoder_name} or {FALLBACK_CODEC.get(suffix, DEFAULT_CODEC)} in this PyAV")


def _write(av, target, stream, frame, rgb) -> None:
    out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    out.pts, out.time_base = frame.pts, frame.time_base
    target.mux(stream.encode(out))


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for an error, without PyAV's ``[Errno N]`` and the file name it appends."""
    return getattr(exc, "strerror", None) or first_line(exc)
