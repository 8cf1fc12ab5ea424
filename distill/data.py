"""Data for distilling SR GANs (SDAKD on Real-ESRGAN): images in, a fixed pool of HR/LR crops and the frozen
teacher's outputs out.

Pipeline: ``list_images`` / ``load_image`` (or the embedded ``sample_images``) -> ``CropPool.build`` (random HR crops
and their LR counterparts, made once) -> ``cache_teacher`` (the frozen teacher run once over the pool) ->
``epoch_batches`` (a seeded permutation, so a resumed run restores the generator and sees the same batches).

Each crop's LR comes from :mod:`.degrade` (``bicubic``, ``realesrgan`` or the ``photo`` mix), drawn from the crop's
own seed; a ``photo`` validation pool holds every crop clean and in each kind of the mix.

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
  generalisation: ``motorcycle_left`` shows the scene of a validation photo from the other eye, and hubble is 72%
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
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.serve.errors import first_line

from .degrade import DEGRADATIONS, Degradation, PhotoMix, RealESRGANDegradation, _make_lr, degrade_lr
from .errors import GankdError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
TEXTURE_TRIES = 20
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


# ----------------------------------------------------------------------------------------------- crop pools


@dataclass(frozen=True, eq=False)
class CropPool:
    """A fixed set of HR crops (N×3×S×S) and their LR counterparts (N×3×S/scale×S/scale), made once.

    Distillation only needs the teacher's answers on a fixed set of inputs, so the pool is built (and degraded) once
    and the teacher's outputs on it can be cached exactly (``cache_teacher``). ``skipped`` counts the source images
    smaller than the crop size.
    """

    hr: torch.Tensor
    lr: torch.Tensor
    scale: int
    degradation: str
    skipped: int = 0
    kinds: tuple[str, ...] = ()  # each crop's degradation kind (degrade.KINDS), e.g. to score clean and degraded

    def __post_init__(self):
        n, _, size, _ = self.hr.shape
        if self.lr.shape != (n, 3, size // self.scale, size // self.scale):
            raise GankdError(f"LR crops {list(self.lr.shape)} do not match HR crops {list(self.hr.shape)} "
                             f"at scale {self.scale}")

    @classmethod
    def build(cls, images: Sequence[torch.Tensor], count: int, hr_size: int, scale: int,
              degradation: Degradation = "bicubic", seed: int = 0,
              opts: RealESRGANDegradation | None = None, augment: bool = False, mix=None,
              min_texture: float = 0.0) -> "CropPool":
        """``count`` crops at uniformly random positions; images are used round-robin (each image equally often,
        so one large image cannot crowd out the rest). Crop i (its image, position and degradation seed) depends
        only on ``seed`` and i, so a larger pool extends a smaller one. ``augment`` turns each HR crop by one of
        the 8 flips/rotations (seeded per crop) before it is degraded, so the cached teacher outputs are the
        teacher's answers to the turned crops, not turned answers."""
        fitting, skipped = _fitting_images(images, hr_size, scale)
        if count < 1:
            raise GankdError(f"crop count must be at least 1, got {count}")
        generator = torch.Generator().manual_seed(seed)
        crops, seeds = [], []
        for i in range(count):
            image = fitting[i % len(fitting)]
            for _ in range(TEXTURE_TRIES if min_texture > 0 else 1):  # sky, fog and bokeh teach nothing: redraw
                top = int(torch.randint(0, image.shape[-2] - hr_size + 1, (1,), generator=generator))
                left = int(torch.randint(0, image.shape[-1] - hr_size + 1, (1,), generator=generator))
                crop = image[:, top:top + hr_size, left:left + hr_size]
                if min_texture <= 0 or texture(crop) >= min_texture:
                    break
            crops.append(crop)
            seeds.append(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if augment:  # drawn from its own generator, so the positions match the pool built without augment
            turns = torch.Generator().manual_seed(seed + 7919)
            crops = [dihedral(crop, int(torch.randint(0, 8, (1,), generator=turns))) for crop in crops]
        return cls._degrade(crops, seeds, scale, degradation, skipped, opts, mix)

    @classmethod
    def _degrade(cls, crops, seeds, scale, degradation, skipped, opts, mix=None) -> "CropPool":
        """One LR per crop with its own seed, so each crop gets its own resize factors (Real-ESRGAN needs a
        180-pair queue to get that diversity from batched degradation) and, for ``photo``, its own kind."""
        if degradation not in DEGRADATIONS:
            raise GankdError(f"unknown degradation {degradation!r}; expected one of {', '.join(DEGRADATIONS)}")
        hr = torch.stack(crops).float().contiguous()
        made = [_make_lr(hr[i:i + 1], scale, degradation, seeds[i], opts, mix)
                for i in _progress(len(crops), f"{degradation} LR")]
        return cls(hr=hr, lr=torch.cat([lr for lr, _ in made]), scale=scale, degradation=degradation,
                   skipped=skipped, kinds=tuple(k for _, kinds in made for k in kinds))

    def __len__(self) -> int:
        return self.hr.shape[0]

    def batch(self, indices: torch.Tensor | Sequence[int],
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(HR, LR) crops at ``indices``, optionally moved to ``device``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        hr, lr = self.hr[indices], self.lr[indices]
        return (hr.to(device), lr.to(device)) if device is not None else (hr, lr)

    def memory_bytes(self) -> int:
        return self.hr.nbytes + self.lr.nbytes


def texture(crop: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels, in 8-bit levels: near 0 on sky, fog and bokeh, a few
    levels on fur, foliage and fabric. ``min_texture`` redraws a crop's position (up to ``TEXTURE_TRIES`` times)
    while its texture is below the bar."""
    return 255 * 0.5 * float((crop[..., 1:, :] - crop[..., :-1, :]).abs().mean()
                             + (crop[..., :, 1:] - crop[..., :, :-1]).abs().mean())


def dihedral(image: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: a horizontal flip when ``k >= 4``, then ``k % 4`` quarter turns."""
    image = image.flip(-1) if k >= 4 else image
    return torch.rot90(image, k % 4, dims=(-2, -1)).contiguous()


def validation_pool(images: Sequence[torch.Tensor], hr_size: int, scale: int, degradation: Degradation = "bicubic",
                    seed: int = 0, per_image: int = 1, opts: RealESRGANDegradation | None = None,
                    mix=None) -> CropPool:
    """Fixed crops for validation: each image's centre, then an evenly spaced grid (row by row), up to
    ``per_image`` distinct crops. Nothing depends on a random position, so scores compare across runs."""
    fitting, skipped = _fitting_images(images, hr_size, scale)
    if per_image < 1:
        raise GankdError(f"per_image must be at least 1, got {per_image}")
    generator = torch.Generator().manual_seed(seed)
    crops, seeds = [], []
    for image in fitting:
        for top, left in _grid_positions(image.shape[-2], image.shape[-1], hr_size, per_image):
            crops.append(image[:, top:top + hr_size, left:left + hr_size])
            seeds.append(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if degradation == "photo":
        return _every_kind(crops, seeds, scale, skipped, mix)
    return CropPool._degrade(crops, seeds, scale, degradation, skipped, opts, mix)


def _every_kind(crops, seeds, scale, skipped, mix) -> CropPool:
    """Validation of a photo mix: every crop clean and in each of the mix's kinds, so clean and degraded inputs
    are scored on the same crops and neither share depends on a draw."""
    mix = mix or PhotoMix()
    kinds = ("clean", *mix.kinds)
    hr = torch.stack(crops).float().contiguous()
    lr = torch.cat([degrade_lr(hr[i:i + 1], scale, kind, seeds[i] + j, mix)
                    for kind, j in zip(kinds, range(len(kinds))) for i in range(len(crops))])
    return CropPool(hr=hr.repeat(len(kinds), 1, 1, 1), lr=lr, scale=scale, degradation="photo", skipped=skipped,
                    kinds=tuple(kind for kind in kinds for _ in crops))


def _grid_positions(height: int, width: int, size: int, count: int) -> list[tuple[int, int]]:
    positions = [((height - size) // 2, (width - size) // 2)]
    side = max(2, math.ceil(math.sqrt(count - 1))) if count > 1 else 1
    tops = np.linspace(0, height - size, side).round().astype(int)
    lefts = np.linspace(0, width - size, side).round().astype(int)
    positions += [(int(t), int(le)) for t in tops for le in lefts]
    return list(dict.fromkeys(positions))[:count]  # distinct, in order


def _fitting_images(images: Sequence[torch.Tensor], hr_size: int, scale: int) -> tuple[list[torch.Tensor], int]:
    """Check the crop size and keep the images at least that large (3×H×W each)."""
    if not isinstance(scale, int) or scale < 1:
        raise GankdError(f"scale must be a positive integer, got {scale!r}")
    if hr_size < 8 or hr_size % scale or hr_size % 8:
        raise GankdError(f"hr_size {hr_size} must be a multiple of scale {scale} and of 8 (the U-Net discriminator "
                         "halves it three times)")
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise GankdError(f"images must be 3×H×W, got shape {list(image.shape)}")
    fitting = [img for img in images if min(img.shape[-2:]) >= hr_size]
    skipped = len(images) - len(fitting)
    if not fitting:
        largest = max(images, key=lambda img: img.shape[-2] * img.shape[-1], default=None)
        largest = "none" if largest is None else f"{largest.shape[-2]}x{largest.shape[-1]}"
        raise GankdError(f"no image is at least hr_size={hr_size} px on each side ({len(images)} images, "
                         f"largest {largest}); lower hr_size")
    if skipped:
        log.warning("skipped %d of %d images smaller than hr_size=%d", skipped, len(images), hr_size)
    return fitting, skipped


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(range(total), desc=desc, unit="crop", disable=not sys.stderr.isatty(), leave=False)


# ----------------------------------------------------------------------------------------------- teacher cache


def cache_teacher(teacher: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int,
                  max_cache_mb: float, folder: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher once over the pool: (raw outputs, last feature maps), stored where the inputs are.

    ``inputs`` is the LR pool (N×C×H×W), or a tuple of what the teacher takes (GCFSR: LQ faces and their scales).
    Stages 2-3 of SDAKD keep the teacher frozen, so these cached answers are exactly what it would say each step.
    Outputs are kept raw (not clamped): the student matches the teacher, not the teacher's display image. The size
    is estimated from the first batch and checked against ``max_cache_mb`` before anything large is allocated.

    With ``folder`` the answers live on disk as ``.npy`` files, memory-mapped, under a key made of the teacher's
    weights and the exact input bytes: a resumed run, or any run on the same crops with the same teacher, maps them
    instead of running the teacher again (an hour-long run's pool costs the x4plus teacher many CPU minutes). Files
    are written to a temporary folder renamed when complete, so an interrupted run leaves no half-written cache.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    lr = inputs[0]
    if lr.dim() != 4 or lr.shape[0] < 1:
        raise GankdError(f"LR pool must be N×C×H×W with N ≥ 1, got shape {list(lr.shape)}")
    if batch_size < 1:
        raise GankdError(f"batch_size must be at least 1, got {batch_size}")
    if _world_size() > 1:
        return _shared_cache(teacher, inputs, batch_size, max_cache_mb, None if folder is None else Path(folder))
    if folder is not None:
        return _disk_cache(teacher, inputs, batch_size, max_cache_mb, Path(folder))
    # allocated outside inference mode: inference tensors could not be used as loss targets later
    return _run_teacher(teacher, inputs, batch_size, max_cache_mb, lambda name, shape: lr.new_empty(shape))


def _run_teacher(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                 allocate, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    lr = inputs[0]
    n = lr.shape[0]
    device = next(teacher.parameters(), lr).device
    was_training = teacher.training
    teacher.eval()
    try:
        outputs = features = None
        for start in _progress_batches(n, batch_size):
            with torch.inference_mode():
                out, feats = teacher.forward_with_features(*(x[start:start + batch_size].to(device) for x in inputs))
            if outputs is None:
                _check_cache_size(out, feats[-1], total or n, max_cache_mb)
                outputs = allocate("outputs", (n, *out.shape[1:]))
                features = allocate("features", (n, *feats[-1].shape[1:]))
            outputs[start:start + batch_size] = out.to(outputs.device, outputs.dtype)
            features[start:start + batch_size] = feats[-1].to(features.device, features.dtype)
    finally:
        teacher.train(was_training)
    return outputs, features


def _cache_key(teacher: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    tap = getattr(teacher, "feature_tap", None)  # a foreign teacher's named feature module (archs.foreign)
    if tap is not None:
        digest.update(f"feature_tap={tap}".encode())
    for x in inputs:
        digest.update(str(tuple(x.shape)).encode())
        digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _disk_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import shutil
    import tempfile

    final = folder / _cache_key(teacher, inputs)
    if (final / "outputs.npy").is_file():
        log.info("teacher outputs mapped from %s (cached by an earlier run)", final)
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
        except OSError as exc:
            raise GankdError(f"teacher_cache_dir {str(folder)!r} is not writable ({first_line(exc)})") from None
        maps = {}

        def allocate(name, shape):
            maps[name] = np.lib.format.open_memmap(work / f"{name}.npy", "w+", np.float32, shape)
            return torch.from_numpy(maps[name])

        try:
            _run_teacher(teacher, inputs, batch_size, max_cache_mb, allocate)
            for array in maps.values():
                array.flush()
            maps.clear()
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("teacher outputs cached on disk in %s", final)
    # copy-on-write maps: writable tensors that never change the files
    return tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in ("outputs", "features"))


def _world_size() -> int:
    """Processes of this run: > 1 under torchrun once :mod:`.distributed` joined the process group."""
    return torch.distributed.get_world_size() \
        if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def _shared_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                  folder: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchrun: the pool's teacher answers computed once, split over the ranks, and summed into every rank.

    Each rank runs the teacher on a contiguous 1/N of the pool (the ranks' rows change every epoch, so every rank
    needs every answer); an all-reduce of zero-filled copies gives each rank the whole cache. Against every rank
    running the whole pool this divides the cache's wall time by up to N (docs/distill.md, "Many devices"). With
    ``folder``, rank 0 alone decides whether the disk cache is there and alone writes it; the other ranks keep theirs
    in memory, so nodes need not share a filesystem.
    """
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    final = folder / _cache_key(teacher, inputs) if folder is not None and rank == 0 else None
    hit = [final is not None and (final / "outputs.npy").is_file()]
    dist.broadcast_object_list(hit, src=0)
    if hit[0]:
        mapped = tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in
                       ("outputs", "features")) if rank == 0 else None
        shapes = [None if mapped is None else [tuple(t.shape) for t in mapped]]
        dist.broadcast_object_list(shapes, src=0)
        cache = mapped or tuple(inputs[0].new_zeros(shape, dtype=torch.float32) for shape in shapes[0])
        for tensor in cache:  # rank 0 adds a copy of its map (which stays read-only) to the others' zeros
            _sum_over_ranks(tensor.clone() if rank == 0 else tensor)
        log.info("teacher outputs mapped from %s (cached by an earlier run) and shared by %d processes", final, size)
        return cache
    n = inputs[0].shape[0]
    per_rank = math.ceil(n / size)
    start, stop = min(rank * per_rank, n), min((rank + 1) * per_rank, n)
    mine = _run_teacher(teacher, tuple(x[start:stop] for x in inputs), batch_size, max_cache_mb,
                        lambda name, shape: inputs[0].new_empty(shape), total=n) if stop > start else None
    shapes = [None if mine is None else [tuple(t.shape[1:]) for t in mine]]
    dist.broadcast_object_list(shapes, src=0)  # rank 0 always has rows: a rank past the end learns the shapes
    cache = tuple(inputs[0].new_zeros((n, *shape), dtype=torch.float32) for shape in shapes[0])
    for i, tensor in enumerate(cache):
        if mine is not None:
            tensor[start:stop] = mine[i]
        _sum_over_ranks(tensor)
    if final is not None:
        _write_disk_cache(final, cache)
    return cache


def _sum_over_ranks(tensor: torch.Tensor, rows_per_call: int = 64) -> None:
    """In-place sum over ranks; nccl reduces on the GPU, so CPU tensors go through it in blocks of rows."""
    import torch.distributed as dist

    if dist.get_backend() != "nccl" or tensor.is_cuda:
        dist.all_reduce(tensor)
        return
    device = torch.device("cuda", torch.cuda.current_device())
    for start in range(0, tensor.shape[0], rows_per_call):
        block = tensor[start:start + rows_per_call].to(device)
        dist.all_reduce(block)
        tensor[start:start + rows_per_call] = block.cpu()


def _write_disk_cache(final: Path, cache: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Rank 0 keeps the shared cache on disk as a one-process run would (tmp folder renamed when complete)."""
    import shutil
    import tempfile

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-", dir=final.parent))
    except OSError as exc:
        raise GankdError(f"teacher_cache_dir {str(final.parent)!r} is not writable ({first_line(exc)})") from None
    try:
        for name, tensor in zip(("outputs", "features"), cache):
            np.save(work / f"{name}.npy", tensor.numpy())
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("teacher outputs cached on disk in %s", final)


def _check_cache_size(out: torch.Tensor, feat: torch.Tensor, n: int, max_cache_mb: float) -> None:
    per_crop = (out[0].numel() * out.element_size()) + (feat[0].numel() * feat.element_size())
    needed_mb = per_crop * n / 2**20
    if needed_mb > max_cache_mb:
        raise GankdError(f"the teacher cache needs {needed_mb:.1f} MB for {n} crops, over max_cache_mb="
                         f"{max_cache_mb:g}; lower the pool's crop count or hr_size, or raise max_cache_mb")


def _progress_batches(n: int, batch_size: int):
    from tqdm import tqdm

    return tqdm(range(0, n, batch_size), desc="teacher cache", unit="batch", disable=not sys.stderr.isatty(),
                leave=False)


# ----------------------------------------------------------------------------------------------- batches


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of index batches from a random permutation. The incomplete last batch is dropped (every step sees
    a full batch) unless the pool is smaller than one batch, when the whole pool is the batch. Deterministic given
    the generator's state, which a checkpoint saves so a resumed run replays the same order."""
    if n < 1 or batch_size < 1:
        raise GankdError(f"need at least one sample and a batch size of at least 1, got n={n}, "
                         f"batch_size={batch_size}")
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return [order]
    return list(order[: n - n % batch_size].split(batch_size))
