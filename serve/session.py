"""``Session``: one artifact folder, one backend, images in and out.

Reads ``manifest.json`` and the model files only (no architecture code). Pre/post-processing comes from the
manifest: input/output value range, clamp, scale, spatial multiple; channel order is RGB. ``run`` takes and returns
the same kind of image: numpy HxW / HxWxC (uint8, uint16 or float in [0, 1]) or a PIL image; RGBA keeps its alpha
(upscaled bicubic), grayscale goes through the model as RGB and comes back grayscale, 16-bit stays 16-bit.

A Session is safe to share between threads: ONNX Runtime's ``InferenceSession.run`` and a torch.export module's
forward are re-entrant, and every request works on its own arrays (``tiling.upscale`` keeps no state).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import tiling
from .errors import ServeError

MANIFEST_FILE = "manifest.json"
FORMAT = "gankd-artifact"
BACKENDS = ("auto", "torch", "ort", "ort-cuda", "trt")
VARIANTS = {"fp32": "onnx", "int8": "onnx-int8", "fp16": "onnx-fp16"}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, what PIL's convert("L") uses
DEFAULT_PAD = 10


def read_manifest(artifact_dir: Path) -> dict:
    if not artifact_dir.exists():
        raise ServeError(f"artifact folder {str(artifact_dir)!r} does not exist")
    if not artifact_dir.is_dir():
        raise ServeError(f"{str(artifact_dir)!r} is a file, not an artifact folder")
    path = artifact_dir / MANIFEST_FILE
    if not path.is_file():
        raise ServeError(f"{str(artifact_dir)!r} is not a gankd artifact folder: {MANIFEST_FILE} is missing "
                         "(make one with gankd-export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServeError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ServeError(f"{path} is not a gankd artifact manifest (format is not {FORMAT!r})")
    for key in ("scale", "inputs", "outputs", "files"):
        if key not in manifest:
            raise ServeError(f"{path} lacks the key {key!r}")
    return manifest


class Session:
    def __init__(self, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None,
                 variant: str = "fp32"):
        if backend not in BACKENDS:
            raise ServeError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
        if variant not in VARIANTS:
            raise ServeError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
        if threads is not None and threads < 1:
            raise ServeError(f"threads must be at least 1, got {threads}")
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        self.scale = int(self.manifest["scale"])
        spec_in, spec_out = self.manifest["inputs"][0], self.manifest["outputs"][0]
        self.input_name = spec_in.get("name", "input")
        self.in_range = tuple(float(v) for v in spec_in.get("range", (0.0, 1.0)))
        self.out_range = tuple(float(v) for v in spec_out.get("range", self.in_range))
        self.clamp = bool(spec_out.get("clamp", True))
        self.multiple = int(spec_in.get("spatial_multiple") or 1)
        self.in_channels = int(spec_in["shape"][1])
        self.variant = variant
        self.backend = self._resolve_backend(backend)
        self._forward = self._load(threads)

    # ------------------------------------------------------------------------------------------- backends

    def _file(self, kind: str, required_by: str) -> Path:
        entry = self.manifest["files"].get(kind)
        if not entry:
            raise ServeError(f"{str(self.artifact_dir)!r} has no {kind} file for the {required_by} backend "
                             f"(exported: {', '.join(sorted(self.manifest['files'])) or 'nothing'})")
        path = self.artifact_dir / entry["path"]
        if not path.is_file():
            raise ServeError(f"{str(self.artifact_dir)!r}: the manifest lists {entry['path']} but the file is missing")
        return path

    def _resolve_backend(self, backend: str) -> str:
        if backend != "auto":
            return backend
        if self.manifest["files"].get(VARIANTS[self.variant]) and _has_onnxruntime():
            return "ort"
        if self.variant == "fp32" and self.manifest["files"].get("pt2"):
            return "torch"
        raise ServeError(f"{str(self.artifact_dir)!r} has nothing the auto backend can run for variant "
                         f"{self.variant!r} (needs {VARIANTS[self.variant]} with onnxruntime, or pt2)")

    def _load(self, threads: int | None):
        if self.backend == "trt":
            raise ServeError("the trt backend is not supported by gankd.serve yet; use ort-cuda or ort")
        if self.backend == "torch":
            if self.variant != "fp32":
                raise ServeError(f"the torch backend runs model.pt2 (fp32) only, not variant {self.variant!r}")
            return self._load_torch(self._file("pt2", "torch"), threads)
        path = self._file(VARIANTS[self.variant], self.backend)
        if not _has_onnxruntime():
            raise ServeError(f"the {self.backend} backend needs onnxruntime: it is not installed here")
        return self._load_ort(path, threads, cuda=self.backend == "ort-cuda")

    def _load_torch(self, path: Path, threads: int | None):
        import torch

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        try:
            module = torch.export.load(str(path)).module()
        except Exception as exc:  # noqa: BLE001 - a corrupt or incompatible file, reported in one line
            raise ServeError(f"cannot load {path}: {_first_line(exc)}") from None

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return forward

    def _load_ort(self, path: Path, threads: int | None, cuda: bool):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ServeError("the ort-cuda backend needs onnxruntime-gpu (CUDAExecutionProvider): it is "
                                 "missing here")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001
            raise ServeError(f"cannot load {path}: {_first_line(exc)}") from None
        if cuda and "CUDAExecutionProvider" not in session.get_providers():
            raise ServeError("the ort-cuda backend could not start CUDAExecutionProvider (CUDA/cuDNN libraries?)")
        name = self.input_name
        return lambda x: session.run(None, {name: x})[0]

    # ------------------------------------------------------------------------------------------- running

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The raw network: 1xCxHxW float32 in the manifest's input range -> its output range."""
        return self._forward(x)

    def run_array(self, rgb: np.ndarray, tile: int | None = None, pad: int = DEFAULT_PAD) -> np.ndarray:
        """HxWx3 float32 RGB in [0, 1] -> (H*scale)x(W*scale)x3 float32 in [0, 1]."""
        lo, hi = self.in_range
        x = (rgb.transpose(2, 0, 1)[None] * (hi - lo) + lo).astype(np.float32)
        y = tiling.upscale(self._forward, x, self.scale, tile=tile, pad=pad, multiple=self.multiple)
        lo, hi = self.out_range
        y = (y[0].transpose(1, 2, 0) - lo) / (hi - lo)
        return np.clip(y, 0.0, 1.0) if self.clamp else y

    def run(self, image, tile: int | None = None, pad: int = DEFAULT_PAD):
        """Upscale a numpy or PIL image; returns the same kind (dtype, channels, PIL mode). ``tile``: LR tile size
        (None or 0: whole image); ``pad``: reflect padding and tile overlap in LR px."""
        if _is_pil(image):
            return self._run_pil(image, tile, pad)
        if not isinstance(image, np.ndarray):
            raise ServeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
        return self._run_numpy(image, tile, pad)

    def _run_numpy(self, image: np.ndarray, tile, pad) -> np.ndarray:
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ServeError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ServeError(f"the image is empty (shape {image.shape})")
        dtype = image.dtype
        if dtype == np.uint8 or dtype == np.uint16:
            peak = float(np.iinfo(dtype).max)
        elif np.issubdtype(dtype, np.floating):
            peak = 1.0
        else:
            raise ServeError(f"unsupported pixel type {dtype}; use uint8, uint16 or float in [0, 1]")
        values = image.astype(np.float32) / peak
        if np.issubdtype(dtype, np.floating) and not np.isfinite(values).all():
            raise ServeError("the image has NaN or infinite values")
        squeeze = image.ndim == 2
        if squeeze:
            values = values[:, :, None]
        channels = values.shape[2]
        rgb = np.repeat(values, 3, axis=2) if channels == 1 else values[:, :, :3]
        out = self.run_array(np.clip(rgb, 0.0, 1.0), tile=tile, pad=pad)
        if channels == 1:
            out = (out @ LUMA)[:, :, None]
        elif channels == 4:
            out = np.concatenate([out, _bicubic(values[:, :, 3], self.scale)[:, :, None]], axis=2)
        if squeeze:
            out = out[:, :, 0]
        if peak == 1.0:
            return out.astype(dtype)
        return np.clip(np.rint(out * peak), 0, peak).astype(dtype)

    def _run_pil(self, image, tile, pad):
        from PIL import Image

        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
            return Image.fromarray(self._run_numpy(array, tile, pad))
        if mode == "F":
            return Image.fromarray(self._run_numpy(np.asarray(image, dtype=np.float32), tile, pad))
        if mode not in ("L", "RGB", "RGBA"):
            has_alpha = "A" in mode or (mode == "P" and "transparency" in image.info)
            mode = "RGBA" if has_alpha else "RGB"
            image = image.convert(mode)
        return Image.fromarray(self._run_numpy(np.asarray(image), tile, pad))


def _bicubic(channel: np.ndarray, scale: int) -> np.ndarray:
    from PIL import Image

    height, width = channel.shape
    resized = Image.fromarray(channel.astype(np.float32)).resize((width * scale, height * scale),
                                                                          Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
