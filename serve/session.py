"""Sessions: one artifact folder, one backend, inputs in and images out; one class per task.

Reads ``manifest.json`` (through ``serve.manifest``, the one reader) and the model files only (no architecture
code). Pre/post-processing comes from the manifest: input/output value range, clamp, scale, spatial multiple;
channel order is RGB. ``Session(artifact_dir, ...)`` opens the class of the manifest's ``task`` (:data:`SESSIONS`);
:class:`Session` itself holds what every task shares (backend loading, verification, the raw ``forward``), and a
method of another task is a one-line ServeError that names the right one.

- ``sr`` (:class:`SRSession`): ``run`` takes and returns the same kind of image: numpy HxW / HxWxC (uint8, uint16
  or float in [0, 1]) or a PIL image; RGBA keeps its alpha (upscaled bicubic; PIL gray+alpha comes back RGBA),
  grayscale goes through the model as RGB and comes back grayscale, 16-bit stays 16-bit. ``budget_s`` stops a
  tiled run between tiles once it has taken longer (the demo's per-request budget).
- ``generate`` (:class:`GenerateSession`): ``generate(seeds or z, psi=None)`` -> SxSx3 uint8 images. z of seed s
  is ``numpy.random.default_rng(s).standard_normal(style_dim, dtype=float32)`` (:func:`seed_z`, the manifest's
  ``seeding``), so a seed gives the same z on every backend and for every artifact of the same style_dim: teacher
  and student artifacts show the same face.
- ``face_sr`` (:class:`FaceSession`): ``restore_face(face, scale)`` makes GCFSR's low-quality input from a clean
  face (square centre crop, resized to the artifact's size S, MATLAB-bicubic down by ``scale`` and back up, 8-bit:
  ``serve.faces``) and restores it; ``restore_face_lq(lq, scale)`` takes a face that is already low quality;
  ``face_lq`` returns the low-quality input itself (what the demo shows).

Every image a Session takes (``run``, ``run_array`` and ``forward`` of sr; the face methods) has at least
``images.MIN_SIDE_PX`` px a side and at most ``max_pixels`` pixels (``Session(..., max_pixels=...)``, default
``images.MAX_PIXELS``), checked by ``images.check_size`` before any backend sees it: the demo, ``gankd-demo upscale``
and the Triton model give the same line, never ONNX Runtime's.

Backends (``serve.backends`` opens each): ``ort`` (``model.onnx`` or its int8/fp16 variant in ONNX Runtime, CPU),
``ort-cuda``, ``torch`` (``model.pt2``), ``ncnn`` (``model.ncnn.param``/``.bin`` in the ncnn runtime on CPU
threads; sr only), ``ncnn-vulkan`` (the same on ncnn's first Vulkan device), ``trt`` (the TensorRT engine built for
this GPU and TensorRT version; sr only; windows of a tiled run are sized to its profiles) and ``auto``, the fastest
verified runtime on this machine (``serve.auto``). ``Session.backend`` is the one served and
``Session.backend_note`` says why and how it was checked: every tool prints both.

Opening a Session checks the artifact before anything runs: the manifest (``serve.manifest``: ``format_version``,
the keys of its task) and, with ``verify=True`` (the default), the sha256 of the model file it loads against the
manifest's ``files`` entry, so a graph changed after export is refused instead of served. A file is hashed once per
process (cached by path, inode, size and mtime); ``verify=False`` is for users who edit graphs on purpose. The ncnn
and trt backends also run a seeded image beside the fp32 reference file (model.onnx, else model.pt2) and are
refused in one line when their output breaks the manifest's parity tolerance for their file (the open check:
another ncnn build, a Vulkan driver or an engine that computes differently is caught there; skipped with
``verify=False``).

A Session is safe to share between threads: ONNX Runtime's ``InferenceSession.run``, a torch.export module's
forward and an ncnn net (an extractor per call) are re-entrant, the TensorRT and Vulkan paths lock around their
device work, and every request works on its own arrays (``tiling.upscale`` keeps no state).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from . import auto, backends, faces, tiling
from .backends import Forward
from .errors import ServeError
from .files import sha256_file
from .images import MAX_PIXELS, check_size
from .manifest import MANIFEST_FILE, TOLERANCES, Tolerance, input_names, read_manifest, task_of

BACKENDS = ("auto", "torch", "ort", "ort-cuda", "ncnn", "ncnn-vulkan", "trt")
VARIANTS = {"fp32": "onnx", "int8": "onnx-int8", "fp16": "onnx-fp16"}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, what PIL's convert("L") uses
DEFAULT_PAD = 10
GENERATE_BATCH = 8  # z per forward call of generate: bounds memory for long seed lists
CHECK_SHAPE = (1, 3, 32, 32)  # the open check's input (one of parity's sizes; a multiple of every unshuffle)


def seed_z(seeds, style_dim: int) -> np.ndarray:
    """N×style_dim float32, one standard-normal z per seed (numpy's PCG64 ``default_rng(seed)``)."""
    return np.stack([np.random.default_rng(int(s)).standard_normal(style_dim, dtype=np.float32) for s in seeds])


_VERIFIED: dict[tuple, str] = {}  # (path, device, inode, size, mtime) -> sha256 checked in this process
_VERIFIED_LOCK = threading.Lock()


def verify_file(path: Path, expected: str | None, artifact_dir: Path) -> None:
    """Refuse ``path`` unless its sha256 is ``expected`` (the manifest's); each file version is hashed once per
    process."""
    name = path.name
    if not expected:
        raise ServeError(f"{str(artifact_dir)!r}: the manifest has no sha256 for {name} to check it against; "
                         "re-export it, or pass --no-verify (Session(verify=False)) to load it unchecked")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _VERIFIED_LOCK:
        known = _VERIFIED.get(key)
    actual = known or sha256_file(path)
    if actual != expected:
        raise ServeError(f"{str(artifact_dir)!r}: {name} does not match the sha256 in {MANIFEST_FILE} (changed "
                         "after export?); re-export it, or pass --no-verify (Session(verify=False)) if you edited "
                         "it on purpose")
    with _VERIFIED_LOCK:
        _VERIFIED[key] = actual


def verify_artifact(artifact_dir: str | Path) -> None:
    """Check every model file the manifest lists and that is present (``gankd-demo`` does this at start, so a changed
    file is refused before the server listens; Sessions opened later reuse the hashes)."""
    artifact_dir = Path(artifact_dir)
    for entry in read_manifest(artifact_dir)["files"].values():
        path = artifact_dir / entry["path"] if isinstance(entry, dict) and isinstance(entry.get("path"), str) else None
        if path is not None and path.is_file():
            verify_file(path, entry.get("sha256"), artifact_dir)


def _check_options(backend: str, threads: int | None, variant: str, max_pixels: int) -> None:
    if backend not in BACKENDS:
        raise ServeError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if variant not in VARIANTS:
        raise ServeError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    if threads is not None and threads < 1:
        raise ServeError(f"threads must be at least 1, got {threads}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ServeError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")


def _other_task(method: str):
    """The stand-in of another task's method on a session: calling it is a one-line ServeError that names the
    task it is for and this session's own method."""

    def refuse(self, *args, **kwargs):
        owner = next(task for task, cls in SESSIONS.items() if method in vars(cls))
        raise ServeError(f"Session.{method} is for {owner} artifacts; {str(self.artifact_dir)!r} is a {self.task} "
                         f"artifact: use Session.{self.main_method}")

    refuse.__name__ = method
    return refuse


class Session:
    """What every task's session shares: the checked manifest, the backend, verification and the raw ``forward``.

    ``Session(artifact_dir, ...)`` opens the class of the artifact's task (:data:`SESSIONS`); a task class opened on
    an artifact of another task refuses it in one line."""

    task: str  # the manifest task a subclass serves
    main_method: str  # its entry point, named when a method of another task is called

    def __new__(cls, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None,
                variant: str = "fp32", verify: bool = True, max_pixels: int = MAX_PIXELS):
        if cls is Session:
            _check_options(backend, threads, variant, max_pixels)
            cls = SESSIONS[task_of(read_manifest(artifact_dir))]
        return super().__new__(cls)

    def __init__(self, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None,
                 variant: str = "fp32", verify: bool = True, max_pixels: int = MAX_PIXELS):
        _check_options(backend, threads, variant, max_pixels)
        self.max_pixels = max_pixels
        self.artifact_dir = Path(artifact_dir)
        self.manifest = read_manifest(self.artifact_dir)
        if task_of(self.manifest) != self.task:
            raise ServeError(f"{type(self).__name__} runs {self.task} artifacts; {str(self.artifact_dir)!r} is a "
                             f"{task_of(self.manifest)} artifact (open it with Session)")
        spec_in, spec_out = self.manifest["inputs"][0], self.manifest["outputs"][0]
        self.input_names = input_names(self.manifest)
        self.input_name = self.input_names[0]
        self.in_range = tuple(float(v) for v in spec_in.get("range") or (0.0, 1.0))
        self.out_range = tuple(float(v) for v in spec_out.get("range") or self.in_range)
        self.clamp = bool(spec_out.get("clamp", True))
        self._read_task_keys()
        self.variant = variant
        self.verify = verify
        self.backend, self._forward, self.backend_note = self._open(backend, threads)

    def _read_task_keys(self) -> None:
        """Set what this task reads from the manifest beyond the shared keys."""
        raise NotImplementedError

    # the methods of each task, on the sessions of the others
    run = _other_task("run")
    run_array = _other_task("run_array")
    generate = _other_task("generate")
    face_lq = _other_task("face_lq")
    restore_face = _other_task("restore_face")
    restore_face_lq = _other_task("restore_face_lq")

    # ------------------------------------------------------------------------------------------- backends

    def _file(self, kind: str, required_by: str) -> Path:
        entry = self.manifest["files"].get(kind)
        if not entry:
            raise ServeError(f"{str(self.artifact_dir)!r} has no {kind} file for the {required_by} backend "
                             f"(exported: {', '.join(sorted(self.manifest['files'])) or 'nothing'})")
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ServeError(f"{str(self.artifact_dir)!r}: the manifest's {kind} entry has no path")
        path = self.artifact_dir / entry["path"]
        if not path.is_file():
            raise ServeError(f"{str(self.artifact_dir)!r}: the manifest lists {entry['path']} but the file is missing")
        if self.verify:
            verify_file(path, entry.get("sha256"), self.artifact_dir)
        return path

    def _open(self, backend: str, threads: int | None) -> tuple[str, Forward, str]:
        """(the backend served, its forward, the line that says why and how it was checked)."""
        if backend == "auto":
            return self._open_auto(threads)
        forward, note = self._load(backend, threads)
        return backend, forward, note

    def _open_auto(self, threads: int | None) -> tuple[str, Forward, str]:
        """``auto`` (serve.auto): the fastest verified runtime here, measured at export or on first open; torch
        when no candidate can run."""
        onnx_kind = VARIANTS[self.variant]
        names = auto.candidates(self.manifest, onnx_kind, self.variant)
        if not names:
            if self.variant == "fp32" and self.manifest["files"].get("pt2"):
                forward, _ = self._load("torch", threads)
                return "torch", forward, "auto: torch (model.pt2), the only runtime of this artifact that can run here"
            raise ServeError(f"{str(self.artifact_dir)!r} has nothing the auto backend can run for variant "
                             f"{self.variant!r} (needs {onnx_kind} with onnxruntime, or pt2)")
        if len(names) == 1:
            forward, note = self._load(names[0], threads)
            return names[0], forward, _joined(f"auto: {names[0]}, the only verified runtime that can run here", note)
        gpu = auto.gpu_name() if any(name in auto.GPU_BACKENDS for name in names) else None
        key = auto.machine_key(threads, gpu)
        entry, where = auto.recorded(self.manifest, key)
        refused: list[str] = []
        if entry is not None and set(names) <= set(entry["order"]):
            for name in [n for n in entry["order"] if n in names]:
                try:
                    forward, note = self._load(name, threads)
                except ServeError as exc:
                    refused.append(f"{name} refused: {exc}")
                    continue
                return name, forward, _joined(auto.describe(entry, name, where), note, *refused)
            raise ServeError(f"{str(self.artifact_dir)!r}: auto: every runtime was refused ({'; '.join(refused)})")
        loaded = {}
        for name in names:
            try:
                loaded[name] = self._load(name, threads)
            except ServeError as exc:
                refused.append(f"{name} refused: {exc}")
        if not loaded:
            raise ServeError(f"{str(self.artifact_dir)!r}: auto: every runtime was refused ({'; '.join(refused)})")
        if len(loaded) == 1:
            (name, (forward, note)), = loaded.items()
            return name, forward, _joined(f"auto: {name}, the only verified runtime left here", note, *refused)
        entry = auto.race({name: forward for name, (forward, _) in loaded.items()},
                          auto.measure_inputs(int(self.manifest["inputs"][0]["shape"][1]), self.in_range), threads)
        kept = auto.remember(self.manifest, key, entry) if not refused else None
        where = f"measured now, cached in {kept}" if kept else "measured now, not cached" + \
            (" (a runtime was refused)" if refused else " (the cache folder is not writable)")
        chosen = entry["order"][0]
        return chosen, loaded[chosen][0], _joined(auto.describe(entry, chosen, where), loaded[chosen][1], *refused)

    def _load(self, backend: str, threads: int | None) -> tuple[Forward, str]:
        """The forward of one backend, and what its open check found ("" when there is none)."""
        if backend == "torch":
            if self.variant != "fp32":
                raise ServeError(f"the torch backend runs model.pt2 (fp32) only, not variant {self.variant!r}")
            return backends.torch_runner(self._file("pt2", "torch"), threads), ""
        if backend in ("ort", "ort-cuda"):
            path = self._file(VARIANTS[self.variant], backend)
            if not backends.has_onnxruntime():
                raise ServeError(f"the {backend} backend needs onnxruntime: it is not installed here")
            return backends.ort_runner(path, self.input_names, threads, cuda=backend == "ort-cuda"), ""
        if self.task != "sr":
            raise ServeError(f"the {backend} backend runs sr artifacts; {str(self.artifact_dir)!r} is a {self.task} "
                             "artifact: use ort or torch")
        if self.variant != "fp32":
            own = "the ncnn pair" if "ncnn" in backend else "the engine"
            raise ServeError(f"the {backend} backend runs its own file ({own}), not variant {self.variant!r}: use "
                             "--variant fp32")
        if backend in ("ncnn", "ncnn-vulkan"):
            backends.require_ncnn()
            param, weights = self._file("ncnn", backend), self._file("ncnn-bin", backend)
            entry = self.manifest["files"]["ncnn"]
            forward = backends.ncnn_runner(param, weights, threads, vulkan=backend == "ncnn-vulkan",
                                           input_blob=entry.get("input_blob") or backends.NCNN_INPUT_BLOB,
                                           output_blob=entry.get("output_blob") or backends.NCNN_OUTPUT_BLOB)
            return forward, self._check_output(backend, "ncnn", forward, CHECK_SHAPE)
        backends.require_trt()
        gpu, version = backends.gpu_and_trt_version()
        kind, entry = backends.choose_engine(self.manifest["files"], gpu, version, repr(str(self.artifact_dir)))
        forward = backends.trt_runner(self._file(kind, "trt"), entry, self.input_name,
                                      self.manifest["outputs"][0].get("name", "output"), int(self.manifest["scale"]))
        opt = forward.profiles[0].opt
        parity_kind = "trt-fp16" if entry.get("precision") == "fp16" else "trt"
        return forward, self._check_output(backend, parity_kind, forward, (1, *opt[1:]))

    def _check_output(self, backend: str, kind: str, forward: Forward, shape) -> str:
        """Run a seeded input through ``forward`` and the fp32 reference file (backends' "open check"); refuse in
        one line when the difference breaks the manifest's parity tolerance for ``kind``. Skipped with
        ``verify=False`` (graphs edited on purpose)."""
        if not self.verify:
            return "not checked at open (verify off)"
        tolerance = Tolerance.parse(self.manifest.get("parity", {}).get("tolerances", {}).get(kind)) \
            or TOLERANCES[kind]  # where a manifest does not state it: the export's own
        reference = self._reference()
        if reference is None:
            return ("not checked at open: neither model.onnx with onnxruntime nor model.pt2 can run here as the "
                    "reference (its sha256 is checked)")
        name, run = reference
        x = backends.probe_input((shape[0], self.in_channels, *shape[2:]), self.in_range)
        max_abs, psnr = backends.compare_outputs(run(x), forward(x), self.out_range)
        found = f"max_abs {max_abs:.3g}, PSNR {psnr:.1f} dB" if np.isfinite(max_abs) else \
            "a different shape or NaN/inf"
        if not tolerance.passes(max_abs, psnr, slack=backends.REFERENCE_SLACK):
            raise ServeError(f"{str(self.artifact_dir)!r}: the {backend} backend's output differs from {name}'s by "
                             f"{found} on the open check (the manifest's {kind} tolerance: {tolerance.text()}); "
                             f"refusing it (a damaged file, or a runtime that computes differently here)")
        return f"checked at open against {name}: {found} ({tolerance.text()})"

    def _reference(self) -> tuple[str, Forward] | None:
        """The fp32 file parity held closest to the PyTorch model, in a runtime that can run here."""
        files = self.manifest["files"]
        if files.get("onnx") and backends.has_onnxruntime():
            return files["onnx"]["path"], backends.ort_runner(self._file("onnx", "reference"), self.input_names, 1)
        if files.get("pt2"):
            return files["pt2"]["path"], backends.torch_runner(self._file("pt2", "reference"))
        return None

    # ------------------------------------------------------------------------------------------- running

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        """The raw network: float32 arrays for the manifest's inputs, in order (sr: one NxCxHxW in the input range;
        generate: z [N, style_dim] (+ psi [N]); face_sr: image [N, 3, S, S] in [-1, 1] and scale [N])."""
        if len(xs) != len(self.input_names):
            raise ServeError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(xs)}")
        self._check_inputs(xs)
        return self._forward(*xs)

    def _check_inputs(self, xs: tuple[np.ndarray, ...]) -> None:
        """What ``forward`` checks of its inputs beyond their count before the backend sees them (per task)."""

    def _to_unit(self, y: np.ndarray) -> np.ndarray:
        """Network output in the output range -> [0, 1] (clamped when the manifest says so)."""
        lo, hi = self.out_range
        y = (y - lo) / (hi - lo)
        return np.clip(y, 0.0, 1.0) if self.clamp else y


class SRSession(Session):
    """Super-resolution: an image in, the image ``scale`` times larger out (``run``; ``run_array`` on float RGB)."""

    task, main_method = "sr", "run"

    def _read_task_keys(self) -> None:
        spec_in = self.manifest["inputs"][0]
        self.scale = int(self.manifest["scale"])
        self.multiple = int(spec_in.get("spatial_multiple") or 1)
        self.in_channels = int(spec_in["shape"][1])

    def _check_inputs(self, xs: tuple[np.ndarray, ...]) -> None:
        x = xs[0]
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ServeError(f"the model takes N x {self.in_channels} x H x W, got shape "
                             f"{list(getattr(x, 'shape', []))}")
        check_size(x.shape[3], x.shape[2], self.max_pixels)  # each image of the batch

    def run_array(self, rgb: np.ndarray, tile: int | None = None, pad: int = DEFAULT_PAD,
                  budget_s: float | None = None) -> np.ndarray:
        """HxWx3 float32 RGB in [0, 1] -> (H*scale)x(W*scale)x3 float32 in [0, 1]."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ServeError(f"run_array takes an HxWx3 RGB array, got shape {list(getattr(rgb, 'shape', []))}")
        check_size(rgb.shape[1], rgb.shape[0], self.max_pixels)
        tile = self._fitting_tile(tile, pad, rgb.shape[:2])
        lo, hi = self.in_range
        x = (rgb.transpose(2, 0, 1)[None] * (hi - lo) + lo).astype(np.float32)
        y = tiling.upscale(self._forward, x, self.scale, tile=tile, pad=pad, multiple=self.multiple,
                           budget_s=budget_s)
        return self._to_unit(y[0].transpose(1, 2, 0))

    def _fitting_tile(self, tile: int | None, pad: int, size: tuple[int, int]) -> int | None:
        """``tile``, made small enough that every window (tile + 2 pad) fits a backend with a largest input (a
        TensorRT engine's profiles); unchanged for backends that take any size."""
        largest = getattr(self._forward, "max_spatial", None)
        if not largest:
            return tile
        pad = tiling.round_up(pad, self.multiple)
        height, width = (tiling.round_up(side, self.multiple) for side in size)
        if (not tile or max(size) <= tile) and height + 2 * pad <= largest[0] and width + 2 * pad <= largest[1]:
            return tile  # runs whole
        allowed = (min(largest) - 2 * pad) // self.multiple * self.multiple
        if allowed < 1:
            raise ServeError(f"pad {pad} leaves no room for a tile in the {self.backend} backend's largest input "
                             f"({largest[0]}x{largest[1]}): use a smaller pad")
        return min(tile, allowed) if tile else allowed

    def run(self, image, tile: int | None = None, pad: int = DEFAULT_PAD, budget_s: float | None = None):
        """Upscale a numpy or PIL image; returns the same kind (dtype, channels, PIL mode). ``tile``: LR tile size
        (None or 0: whole image); ``pad``: reflect padding and tile overlap in LR px; ``budget_s``: stop with a
        ServeError between tiles once the run has taken longer."""
        if _is_pil(image):
            check_size(*image.size, self.max_pixels)  # before any conversion copies it
            return self._run_pil(image, tile, pad, budget_s)
        if not isinstance(image, np.ndarray):
            raise ServeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
        return self._run_numpy(image, tile, pad, budget_s)

    def _run_numpy(self, image: np.ndarray, tile, pad, budget_s=None) -> np.ndarray:
        values, peak = _pixels(image, np.float32, self.max_pixels)
        channels = values.shape[2]
        rgb = _as_rgb(values)
        out = self.run_array(np.clip(rgb, 0.0, 1.0), tile=tile, pad=pad, budget_s=budget_s)
        if channels == 1:
            out = (out @ LUMA)[:, :, None]
        elif channels == 4:
            out = np.concatenate([out, _bicubic(values[:, :, 3], self.scale)[:, :, None]], axis=2)
        if image.ndim == 2:
            out = out[:, :, 0]
        if peak == 1.0:
            return out.astype(image.dtype)
        return np.clip(np.rint(out * peak), 0, peak).astype(image.dtype)

    def _run_pil(self, image, tile, pad, budget_s=None):
        from PIL import Image

        mode = image.mode
        if mode.startswith("I;16") or mode == "I":
            array = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
            return Image.fromarray(self._run_numpy(array, tile, pad, budget_s))
        if mode == "F":
            return Image.fromarray(self._run_numpy(np.asarray(image, dtype=np.float32), tile, pad, budget_s))
        if mode not in ("L", "RGB", "RGBA"):
            has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in image.info)
            image = image.convert("RGBA" if has_alpha else "RGB")
        return Image.fromarray(self._run_numpy(np.asarray(image), tile, pad, budget_s))


class GenerateSession(Session):
    """Generation: seeds (or z) in, SxSx3 uint8 images out (``generate``)."""

    task, main_method = "generate", "generate"

    def _read_task_keys(self) -> None:
        # z [N, style_dim] (+ psi [N]); output [N, 3, S, S]
        self.size = int(self.manifest["outputs"][0]["shape"][-1])
        self.style_dim = int(self.manifest["inputs"][0]["shape"][1])
        self.has_psi = "psi" in self.input_names

    def generate(self, seeds, psi: float | None = None) -> list[np.ndarray]:
        """SxSx3 uint8 images, one per seed (ints >= 0: z = :func:`seed_z`) or per row of ``seeds`` given as a
        float array of z (N x style_dim, or one z of style_dim). ``psi``: truncation (0..1, 1 = none) for artifacts
        exported with ``--psi``; None means 1."""
        z = self._latents(seeds)
        psi_value = self._psi(psi)
        images = []
        for start in range(0, len(z), GENERATE_BATCH):
            chunk = z[start:start + GENERATE_BATCH]
            feeds = (chunk, np.full(len(chunk), psi_value, np.float32)) if self.has_psi else (chunk,)
            out = self._to_unit(self._forward(*feeds).transpose(0, 2, 3, 1))
            images += [np.rint(img * 255).astype(np.uint8) for img in out]
        return images

    def _latents(self, seeds) -> np.ndarray:
        if isinstance(seeds, np.ndarray) and np.issubdtype(seeds.dtype, np.floating):
            z = seeds[None] if seeds.ndim == 1 else seeds
            if z.ndim != 2 or z.shape[1] != self.style_dim or len(z) == 0:
                raise ServeError(f"z must be N x {self.style_dim} (the style_dim of this artifact), got shape "
                                 f"{list(seeds.shape)}")
            if not np.isfinite(z).all():
                raise ServeError("z has NaN or infinite values")
            return np.ascontiguousarray(z, dtype=np.float32)
        values = np.asarray(seeds).reshape(-1) if isinstance(seeds, np.ndarray) else list(seeds) \
            if isinstance(seeds, (list, tuple, range)) else None
        if values is None or len(values) == 0:
            raise ServeError(f"generate takes a non-empty list of integer seeds or a float array of z, got "
                             f"{type(seeds).__name__}")
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in values):
            raise ServeError("seeds must be integers >= 0")
        return seed_z(values, self.style_dim)

    def _psi(self, psi: float | None) -> float:
        if psi is None:
            return 1.0
        if not isinstance(psi, (int, float, np.floating)) or isinstance(psi, bool) or not 0.0 <= psi <= 1.0:
            raise ServeError(f"psi must be a number in [0, 1], got {psi!r}")
        if not self.has_psi and psi != 1.0:
            raise ServeError(f"{str(self.artifact_dir)!r} was exported without truncation: re-export it with "
                             "gankd-export --psi to use psi")
        return float(psi)


class FaceSession(Session):
    """Face restoration (GCFSR): a face and a scale in, the restored SxSx3 uint8 face out (``restore_face``)."""

    task, main_method = "face_sr", "restore_face"

    def _read_task_keys(self) -> None:
        # image [N, 3, S, S] + scale [N]; output [N, 3, S, S]
        self.size = int(self.manifest["outputs"][0]["shape"][-1])
        self.scale_range = tuple(float(v) for v in self.manifest["inputs"][1].get("range") or (1.0, math.inf))

    def face_lq(self, face, scale: float) -> np.ndarray:
        """The low-quality input ``restore_face`` makes from ``face``: SxSx3 uint8."""
        return np.rint(self._face_lq(face, scale) * 255).astype(np.uint8)

    def restore_face(self, face, scale: float) -> np.ndarray:
        """A clean face (PIL or numpy image) -> degraded by ``scale`` the GCFSR way -> restored: SxSx3 uint8."""
        return self._restore(self._face_lq(face, scale), scale)

    def restore_face_lq(self, lq, scale: float) -> np.ndarray:
        """A face that is already low quality (blurred by ``scale``; resized to S here if it is not) -> SxSx3
        uint8."""
        self._check_scale(scale)
        return self._restore(_square(_rgb_float(lq, self.max_pixels), self.size), scale)

    def _face_lq(self, face, scale: float) -> np.ndarray:
        self._check_scale(scale)
        return faces.gcfsr_lq(_square(_rgb_float(face, self.max_pixels), self.size), float(scale))

    def _check_scale(self, scale) -> None:
        lo, hi = self.scale_range
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
                or not lo <= scale <= hi:
            raise ServeError(f"scale must be a number in [{lo:g}, {hi:g}], got {scale!r}")

    def _restore(self, lq: np.ndarray, scale: float) -> np.ndarray:
        lo, hi = self.in_range
        x = (lq.transpose(2, 0, 1)[None] * (hi - lo) + lo).astype(np.float32)
        y = self._to_unit(self._forward(x, np.array([scale], np.float32))[0].transpose(1, 2, 0))
        return np.rint(y * 255).astype(np.uint8)


SESSIONS: dict[str, type[Session]] = {cls.task: cls for cls in (SRSession, GenerateSession, FaceSession)}


def _rgb_float(image, max_pixels: int) -> np.ndarray:
    """A PIL or numpy image (uint8 / uint16 / float in [0, 1]; gray, RGB or RGBA) -> HxWx3 float64 in [0, 1] (alpha
    dropped)."""
    if _is_pil(image):
        from .images import to_array

        image = to_array(image)  # at its real range: a 16-bit face does not clip to white
    if not isinstance(image, np.ndarray):
        raise ServeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    return np.clip(_as_rgb(_pixels(image, np.float64, max_pixels)[0]), 0.0, 1.0)


def _pixels(image: np.ndarray, float_type, max_pixels: int) -> tuple[np.ndarray, float]:
    """A numpy image (HxW or HxWxC with C 1, 3 or 4; uint8, uint16 or float in [0, 1]; within the size limits) -> its
    HxWxC values in [0, 1] units (not clipped) and the peak its type maps to 1 (255, 65535 or 1.0); ServeError in
    one line."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ServeError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.dtype in (np.uint8, np.uint16):
        peak = float(np.iinfo(image.dtype).max)
    elif np.issubdtype(image.dtype, np.floating):
        peak = 1.0
    else:
        raise ServeError(f"unsupported pixel type {image.dtype}; use uint8, uint16 or float in [0, 1]")
    check_size(image.shape[1], image.shape[0], max_pixels)
    values = image.astype(float_type) / peak
    if peak == 1.0 and not np.isfinite(values).all():
        raise ServeError("the image has NaN or infinite values")
    return (values[:, :, None] if image.ndim == 2 else values), peak


def _as_rgb(values: np.ndarray) -> np.ndarray:
    """HxWxC (C 1, 3 or 4) -> HxWx3: gray repeated, alpha dropped."""
    return np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[:, :, :3]


def _square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centre square of ``rgb``, MATLAB-bicubic resized to size x size (as GCFSR resizes), in [0, 1]."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = rgb[top:top + side, left:left + side]
    if side == size:
        return crop.astype(np.float32)
    return np.clip(faces.imresize(crop, size / side), 0.0, 1.0).astype(np.float32)


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


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def measure_artifact(artifact_dir: str | Path, threads: int | None = None, log=None) -> dict | None:
    """{machine key: order entry} of the verified runtimes of an artifact folder whose manifest is written
    (``serve.auto``): gankd-export records it as the manifest's ``runtime_order``. None when fewer than two runtimes
    are candidates here (nothing to order)."""
    manifest = read_manifest(artifact_dir)
    names = auto.candidates(manifest, VARIANTS["fp32"], "fp32")
    if len(names) < 2:
        return None
    forwards = {name: Session(artifact_dir, backend=name, threads=threads, verify=False)._forward for name in names}
    gpu = auto.gpu_name() if any(name in auto.GPU_BACKENDS for name in names) else None
    value_range = tuple(float(v) for v in manifest["inputs"][0].get("range") or (0.0, 1.0))
    entry = auto.race(forwards, auto.measure_inputs(int(manifest["inputs"][0]["shape"][1]), value_range), threads)
    key = auto.machine_key(threads, gpu)
    if log:
        log(auto.describe(entry, entry["order"][0], f"on {key}"))
    return {key: entry}
