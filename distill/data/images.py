"""Images in: every image under a folder (``list_images``), one image file checked and decoded (``load_image``:
size limit, corrupt files as one-line errors), and the embedded real photos by split (``sample_images``). The
first step of the data pipeline (see :mod:`gankd.distill.data`).

Embedded sample set (``sample_images``), real photos bundled with scikit-image (offline); grayscale ones are
repeated to 3 channels:

- train: ``coffee``, ``chelsea``, ``rocket``, ``immunohistochemistry``, ``retina``, ``camera`` (gray), ``coins``
  (gray).
- train_large: train plus every other real photo installed offline that no other split uses: scikit-image's
  ``brick``, ``grass``, ``cell``, ``moon``, ``page``, ``text`` (gray) and two JPEGs that ship inside gradio
  (``cheetah_cub``: fur; ``groot``: a film still, bark texture). For runs longer than the quickstart.
- validation: ``astronaut`` (a face), ``motorcycle_right`` (the right view of ``stereo_motorcycle``).
- holdout: ``hubble_deep_field``, ``motorcycle_left``, ``gravel`` (gray), ``clock`` (gray): never trained,
  calibrated, validated or selected on; benchmarks report on them (``demos/int8_holdout.py``). Not a clean test of
  generalisation: ``motorcycle_left`` shows the scene of a validation photo from the other eye, and hubble is mostly
  black sky; they are what scikit-image has offline beyond the other splits.
- holdout_photos: three colour JPEG photos from other installed packages, nothing like any train photo:
  ``grace_hopper`` (matplotlib's sample portrait), ``eiffel`` (gradio's tower) and ``cheetah`` (gradio's running
  cheetah, motion blur). With ``holdout`` they are the held-out set students are reported on
  (``demos/compact_holdout.py``).
- left out on purpose: ``cat`` (the same photo as ``chelsea``) and the synthetic images (``colorwheel``, ``logo``,
  ...).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from gankd.distill.errors import GankdError
from gankd.serve.errors import first_line

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MAX_PIXELS = 64_000_000  # below PIL's own decompression-bomb limit (~89 MP), so our check speaks first

SAMPLE_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins"),
    "validation": ("astronaut", "motorcycle_right"),
    "holdout": ("hubble_deep_field", "motorcycle_left", "gravel", "clock"),
    "train_large": ("coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "camera", "coins", "brick",
                    "grass", "cell", "moon", "page", "text", "cheetah_cub", "groot"),
    "holdout_photos": ("grace_hopper", "eiffel", "cheetah"),
}
# photos that ship inside other installed packages (name -> package, file inside it)
PACKAGE_PHOTOS = {"cheetah_cub": ("gradio", "test_data/cheetah2.jpg"),
                  "groot": ("gradio", "media_assets/images/groot.jpeg"),
                  "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                  "eiffel": ("gradio", "media_assets/images/tower.jpg"),
                  "cheetah": ("gradio", "media_assets/images/cheetah.jpg")}


# ----------------------------------------------------------------------------------------------- images on disk


def list_images(folder: str | Path) -> list[Path]:
    """All images under ``folder`` (recursive), sorted so that crop pools built from a folder are reproducible.
    ``photos`` and ``photos_holdout`` name the train and held-out scenes of the photo pool fetched by ``make
    photos`` (:mod:`.photos`); ``./photos`` is a folder."""
    if isinstance(folder, str) and folder in ("photos", "photos_holdout"):
        from .photos import pool_images

        return pool_images(folder)
    folder = Path(folder)
    if not folder.exists():
        raise GankdError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise GankdError(f"image folder {str(folder)!r} is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise GankdError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {str(folder)!r}")
    return found


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Read an image as float32 3xHxW RGB in [0, 1]; the size is checked from the header before decoding so a
    huge or malicious file fails fast instead of filling memory. Alpha is dropped (as basicsr's cv2 reader does)."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise GankdError(f"image {str(path)!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our max_pixels check replaces it
        try:
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise GankdError(f"image {str(path)!r} is {width}x{height} = {width * height / 1e6:.1f} MP, "
                                     f"over the limit of {max_pixels / 1e6:.1f} MP (max_pixels)")
                img.load()
                return _to_tensor(ImageOps.exif_transpose(img))
        except Image.DecompressionBombError as exc:
            raise GankdError(f"image {str(path)!r} is too large to decode safely ({first_line(exc)})") from None
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying truncated / not an image
            raise GankdError(f"image {str(path)!r} is truncated or corrupted ({first_line(exc)})") from None


def _to_tensor(img) -> torch.Tensor:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float grayscale: PIL's RGB convert would clip
        gray = np.asarray(img, dtype=np.float32)
        gray = gray / 65535.0 if img.mode != "F" else gray
        return torch.from_numpy(np.clip(gray, 0, 1)).expand(3, -1, -1).contiguous()
    return _array_to_tensor(np.asarray(img.convert("RGB")))


def _array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8/bool/float HxW or HxWxC (C = 1, 3, 4) -> float32 3xHxW in [0, 1]."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).clamp_(0, 1)


# ----------------------------------------------------------------------------------------------- embedded samples


def sample_images(split: str) -> list[tuple[str, torch.Tensor]]:
    """The embedded photos of one split (module docstring), as (name, 3xHxW) pairs: a real dataset that needs no
    download, for the quickstart and tests."""
    if split not in SAMPLE_SPLITS:
        raise GankdError(f"unknown sample split {split!r}; expected one of {', '.join(SAMPLE_SPLITS)}")
    try:
        from skimage import data
    except ImportError:
        raise GankdError("the sample images need scikit-image: pip install 'gankd[all]'") from None
    return [(name, _package_photo(name) if name in PACKAGE_PHOTOS else _array_to_tensor(_skimage_photo(data, name)))
            for name in SAMPLE_SPLITS[split]]


def _package_photo(name: str) -> torch.Tensor:
    import importlib.util

    package, relative = PACKAGE_PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GankdError(f"the sample photo {name!r} ships inside {package}, which is not installed: "
                         "pip install 'gankd[all]'")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise GankdError(f"the sample photo {name!r} is missing from this {package} install ({path.name})")
    return load_image(path)


def _skimage_photo(data, name: str) -> np.ndarray:
    try:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            return left if name == "motorcycle_left" else right
        return getattr(data, name)()
    except Exception as exc:  # noqa: BLE001 - a photo missing from this scikit-image build
        raise GankdError(f"scikit-image has no usable sample photo {name!r} ({first_line(exc)})") from None


# ----------------------------------------------------------------------------------------------- degradations


