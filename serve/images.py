"""The one image reader of gankd.serve: the demo and ``gankd-demo upscale`` open every file through :func:`read_image`.

It returns a numpy array a Session takes as it is, so no entry point converts modes on its own (a PIL
``convert("RGB")`` of a 16-bit image clips it to white):

- EXIF orientation is applied, so a portrait phone photo stays upright.
- Every PIL mode maps to uint8, uint16 or float32 at its real range: 16-bit gray (``I;16*``) stays uint16; 32-bit
  integer (``I``) is uint16 when its values fit, else scaled from [0, 2^31 - 1]; float (``F``) is taken as [0, 1],
  or 0–255 / 0–65535 when its values say so; gray+alpha, palette with transparency and premultiplied alpha become
  RGBA; CMYK, YCbCr, LAB, HSV, RGBX and palette become RGB. (PIL reads a 16-bit gray+alpha PNG as 8-bit RGBA.)
- The same limits everywhere: at least ``MIN_SIDE_PX`` on each side, at most ``max_pixels`` (checked from the
  header, so a decompression bomb is never expanded); an animated or multi-frame file gives its first frame and
  says so (``Picture.note``).

:func:`check_size` is the one home of those limits and of their message: the reader, ``Session`` (``run``,
``run_array``, ``forward`` of sr; the face methods), the demo, ``gankd-demo upscale`` and the Triton model all call
it, with ``MAX_PIXELS`` as every front end's default maximum (``--max-pixels``, ``Session(max_pixels=...)``).

Errors are :class:`ServeError` with one line; the caller adds the file name.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ServeError, first_line
from .files import atomic_write

MIN_SIDE_PX = 8  # a 1x1 "photo" is not one; reflect padding wants a few pixels anyway
MAX_PIXELS = 1024 * 1024  # per image: a request's output (x4: 16.8 Mpx) and activations stay in memory on a server
# `gankd-demo upscale` works on the user's own files, tile by tile, one at a time, writing each to disk: a 12 Mpx phone
# photo must not need a flag. The check and its message are the same; only the bar is a local tool's.
MAX_PIXELS_LOCAL = 4096 * 4096
INT32_PEAK = float(2 ** 31 - 1)


@dataclass(frozen=True)
class Picture:
    """A decoded image: ``array`` is HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA); uint8, uint16, or
    float32 in [0, 1]. ``note`` says what the reader did that a user should know (first frame of an animation)."""

    array: np.ndarray
    source_mode: str
    note: str = ""

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE_PX) -> Picture:
    """Open, check and decode one image file (see the module docstring); ServeError in one line otherwise."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_size(*image.size, max_pixels, min_side)
                frames = int(getattr(image, "n_frames", 1) or 1)
                if frames > 1:
                    image.seek(0)
                image.load()
                upright = ImageOps.exif_transpose(image)
                upright.load()
                array = to_array(upright)
                mode = image.mode
    except ServeError:
        raise
    except UnidentifiedImageError:
        raise ServeError("not an image PIL can read") from None
    except Image.DecompressionBombError as exc:
        raise ServeError(f"too large ({first_line(exc)})") from None
    except FileNotFoundError:
        raise ServeError("the file does not exist") from None
    except IsADirectoryError:
        raise ServeError("it is a folder, not an image file") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error) as exc:
        raise ServeError(f"cannot decode ({first_line(exc)})") from None
    note = f"the file has {frames} frames: used the first" if frames > 1 else ""
    return Picture(array=array, source_mode=mode, note=note)


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE_PX) -> None:
    """ServeError (one line, the same from every front end) unless the image has at least ``min_side`` px on each
    side and at most ``max_pixels`` pixels. Width first, as PIL and the demo's report say sizes."""
    if min(width, height) < min_side:
        raise ServeError(f"the image is {width}x{height} px; it needs at least {min_side} px on each side")
    if width * height > max_pixels:
        raise ServeError(f"the image is {width}x{height} px = {width * height} pixels, over the limit of "
                         f"{max_pixels}")


def to_array(image) -> np.ndarray:
    """A decoded PIL image -> numpy at its real range (uint8 / uint16 / float32 in [0, 1])."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # I;16B is big-endian in memory: astype makes it native
    if mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.min() >= 0 and values.max() <= 65535:
            return values.astype(np.uint16)
        return (np.clip(values, 0, None) / INT32_PEAK).astype(np.float32)
    if mode == "F":
        return _float_unit(np.asarray(image, dtype=np.float32))
    if mode == "La":  # premultiplied: PIL converts it to LA only
        image = image.convert("LA")
    if image.mode in ("LA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _float_unit(values: np.ndarray) -> np.ndarray:
    """A float image -> [0, 1]: as it is when it already is, else by the peak its values reach (255, 65535)."""
    if not np.isfinite(values).all():
        raise ServeError("the image has NaN or infinite values")
    top = float(values.max()) if values.size else 0.0
    for peak in (1.0, 255.0, 65535.0):
        if top <= peak:
            return np.clip(values / peak, 0.0, 1.0).astype(np.float32)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """A Session output (uint8 / uint16 / float in [0, 1]) as 8-bit, for display."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
    return np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def to_unit(array: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float in [0, 1] -> float64 in [0, 1] (for comparing outputs at their full precision)."""
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float64) / np.iinfo(array.dtype).max
    return array.astype(np.float64)


def save_image(array: np.ndarray, path: Path) -> None:
    """Write a Session output as PNG: uint8 as it is, 16-bit gray as 16-bit (``I;16``), any other 16-bit or float
    image as 8-bit (PNG through PIL has no 16-bit colour). Written to a new hidden file next to ``path`` and renamed
    over it: a failed write (a full disk) leaves what ``path`` held, and a symlink at ``path`` is replaced, not
    written through to the file it names."""
    from PIL import Image

    if array.dtype == np.float32 or array.dtype == np.float64:
        array = np.clip(np.rint(array * 65535.0), 0, 65535).astype(np.uint16)
    if array.dtype == np.uint16 and array.ndim != 2:
        array = to_uint8(array)
    atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))
