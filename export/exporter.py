"""``export_model``: a model folder in, an artifact folder out (files + parity + manifest), all or nothing.

The artifact is assembled in a temporary folder beside ``out`` and moved into place at the end, so a failed export
(a broken tolerance without ``force``, a crash, Ctrl-C) leaves an existing artifact folder untouched.

Order: check everything that can fail cheaply first (formats, shapes, TensorRT availability, the output folder),
then ONNX (simplified with onnxslim unless asked not to; onnx.checker; no custom ops) → fp16 → INT8 → pt2 →
TensorRT → parity of every file → manifest.

Tasks (the model folder's ``config.json`` ``task``): ``sr`` models take N×3×H×W with dynamic N, H and W; ``generate``
(z → face, optional ``--psi`` truncation input) and ``face_sr`` (LQ face + scale → face) go through a
:class:`gankd.export.tasks.Graph` with a dynamic batch; see that module for their inputs and parity cases.
TensorRT is built for ``sr`` models only.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gankd.distill.errors import GankdError
from gankd.distill.modelio import WEIGHTS_FILE, load_config, load_model, sha256_file

from gankd.distill.registry import get_arch

from . import formats, int8, parity, tasks, trt
from .manifest import FORMAT, FORMAT_VERSION, INPUT_NAME, io_specs, write_manifest

FORMATS = ("onnx", "pt2", "trt")
FILE_NAMES = {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
              "pt2": "model.pt2"}
MACS_AT = (1, 3, 64, 64)  # conv MACs are linear in N·H·W, so one count gives the per-pixel figure


@dataclass(frozen=True)
class ExportSettings:
    formats: tuple[str, ...] = ("onnx", "pt2")
    fp16: bool = False
    int8: bool = False
    opset: int = 17
    calib: str = "sample"  # "sample" (the embedded train photos) or an image folder
    calib_count: int = 16
    min_shape: str | None = None
    opt_shape: str = "1x3x64x64"
    max_shape: str | None = None
    simplify: bool = True
    force: bool = False
    timing_cache: Path | None = None
    seed: int = 0
    psi: bool = False  # generate models: truncation psi as a second input (tasks.PsiGenerator)
    int8_min_psnr_db: float | None = None  # None: the onnx-int8 parity tolerance (parity.TOLERANCES)
    int8_min_speedup: float = 1.0  # INT8 is written only when at least this much faster than fp32 ONNX, here

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise GankdError(f"unknown format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
        if not self.formats:
            raise GankdError(f"--formats is empty; choose from {', '.join(FORMATS)}")
        if (self.fp16 or self.int8) and "onnx" not in self.formats and "trt" not in self.formats:
            raise GankdError("--fp16 and --int8 make ONNX variants: add onnx to --formats")
        if self.int8_min_speedup < 0:
            raise GankdError(f"--int8-min-speedup must be >= 0, got {self.int8_min_speedup:g}")
        if self.calib_count < 1:
            raise GankdError(f"--calib-count must be at least 1, got {self.calib_count}")


@dataclass
class _Build:
    """What the steps produce, gathered for the manifest."""

    tmp: Path
    files: dict = field(default_factory=dict)
    exporter: dict = field(default_factory=dict)
    runners: dict = field(default_factory=dict)  # artifact kind -> callable(np input) -> np output
    int8: dict | None = None  # the INT8 outcome (written or refused, with its measured gate), for the manifest

    def add_file(self, kind: str, name: str, **extra) -> Path:
        path = self.tmp / name
        self.files[kind] = {"path": name, "sha256": sha256_file(path), "bytes": path.stat().st_size, **extra}
        return path


def export_model(model_dir: str | Path, out_dir: str | Path, settings: ExportSettings,
                 log: Callable[[str], None] = print) -> dict:
    """Export ``model_dir`` into ``out_dir``; returns the manifest. Raises GankdError (one line) on bad input and
    on a broken parity tolerance unless ``settings.force`` (then the manifest records ``passed: false``)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    formats_wanted = tuple(dict.fromkeys(settings.formats + (("onnx",) if "trt" in settings.formats else ())))
    if "trt" in formats_wanted:
        task = load_config(model_dir).task
        if task in tasks.TASKS:
            raise GankdError(f"--formats trt builds engines for sr models only; export {task} models as onnx,pt2")
        trt.require("TensorRT export")  # fail fast: nothing is exported when the engine cannot be built
    _check_out_dir(out_dir, settings.force)
    model = load_model(model_dir)
    config = model.gankd_config
    graph = _task_graph(model, config, model_dir, settings, log)
    if graph is not None:
        return _export_files(model_dir, out_dir, model, config, settings, formats_wanted, log, graph=graph)
    if config.kind != "generator" or not config.scale:
        raise GankdError(f"gankd-export exports image-to-image generators (and generate / face_sr models); "
                         f"{config.arch!r} in {str(model_dir)!r} is a {config.kind} without an output scale")
    if settings.psi:
        raise GankdError(f"--psi adds truncation to generate models; {config.arch!r} is a {config.task} model")
    return _export_files(model_dir, out_dir, model, config, settings, formats_wanted, log)


def _task_graph(model, config, model_dir: Path, settings: ExportSettings, log):
    """The Graph of a generate / face_sr generator (None for sr), after the checks that need no export."""
    if config.kind != "generator" or config.task not in tasks.TASKS:
        return None
    needs = {"generate": ("style_dim", "config.size"), "face_sr": ("config.out_size",)}[config.task]
    missing = [name for name in needs if _attr(model, name) is None]
    if missing:
        raise GankdError(f"{str(model_dir)!r} has task {config.task!r} but its arch {config.arch!r} has no "
                         f"{missing[0]}: not a {'StyleGAN2 generator' if config.task == 'generate' else 'GCFSR'}")
    if settings.calib != "sample":
        raise GankdError(f"--calib takes an image folder for sr models; {config.task} models calibrate INT8 from "
                         + ("seeded random z" if config.task == "generate" else "the embedded face"))
    return tasks.build_graph(model, config, settings.psi, settings.seed, log)


def _attr(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
    return obj


def _export_files(model_dir: Path, out_dir: Path, model, config, settings: ExportSettings, formats_wanted,
                  log, graph: tasks.Graph | None = None) -> dict:
    if graph is None:
        multiple = formats.spatial_multiple(model)
        profile = trt.ShapeProfile.parse(settings.min_shape, settings.opt_shape, settings.max_shape,
                                         channels=int(config.kwargs.get("num_in_ch", 3)), multiple=multiple)
        calib = calibration_batches(settings, profile.opt, config.scale) if settings.int8 else None
    else:
        multiple, profile = 1, None
        calib = graph.calibration(settings.calib_count, settings.seed) if settings.int8 else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder gets the usual mode
    try:
        build = _Build(tmp)
        cases = _ParityCases.of(model, config.scale, graph)
        speed_feed = _speed_feed(config, profile, graph) if settings.int8 else None
        simplify = _export_onnx_family(model, build, settings, calib, log, cases, speed_feed, graph) \
            if "onnx" in formats_wanted else None
        if "pt2" in formats_wanted:
            log("exporting model.pt2 (torch.export)")
            if graph is None:
                formats.export_pt2(model, tmp / FILE_NAMES["pt2"], multiple)
            else:
                formats.export_pt2_graph(graph, tmp / FILE_NAMES["pt2"])
            build.add_file("pt2", FILE_NAMES["pt2"])
            build.exporter["pt2"] = f"{formats.PT2_EXPORTER}, torch {torch.__version__}"
            build.runners["pt2"] = _pt2_runner(tmp / FILE_NAMES["pt2"])
        if "trt" in formats_wanted:
            _build_trt(build, settings, profile, log)
        tolerances = _tolerances(settings)
        if graph is None:
            parity_section = _parity(model, config.scale, cases, build.runners, profile, settings.force, log,
                                     tolerances)
        else:
            parity_section = _graph_parity(graph, cases, build.runners, settings.force, log, tolerances)
        manifest = _manifest(model_dir, model, config, multiple, settings, build, simplify, parity_section, graph)
        write_manifest(tmp, manifest)
        _publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GankdError(f"--out {str(out_dir)!r} is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise GankdError(f"{str(out_dir)!r} already exists and is not empty; pass --force to replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished folder in; the old one (``--force``) is removed only once the new one is in place."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- steps


def _export_onnx_family(model, build: _Build, settings: ExportSettings, calib, log, cases: "_ParityCases",
                        speed_feed: tuple[np.ndarray, ...] | None, graph: tasks.Graph | None = None) -> dict:
    onnx_path = build.tmp / FILE_NAMES["onnx"]
    if graph is None:
        log(f"exporting model.onnx (opset {settings.opset}, dynamic N/H/W)")
        example = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        formats.export_onnx(model, onnx_path, settings.opset, example)
        names = (INPUT_NAME,)
    else:
        log(f"exporting model.onnx (opset {settings.opset}, inputs {', '.join(graph.input_names)}, dynamic N)")
        formats.export_onnx_graph(graph, onnx_path, settings.opset)
        names = graph.input_names
    simplify = formats.simplify_onnx(onnx_path) if settings.simplify else \
        {"applied": False, "tool": None, "reason": "--no-simplify"}
    if settings.simplify and not simplify["applied"]:
        log(f"graph simplification skipped: {simplify['reason']}")
    formats.check_onnx(onnx_path, onnx_path.name)
    build.add_file("onnx", FILE_NAMES["onnx"])
    build.exporter["onnx"] = f"{formats.ONNX_EXPORTER}, torch {torch.__version__}"
    build.runners["onnx"] = _ort_runner(onnx_path, names)
    if settings.fp16 and "onnx" in settings.formats:
        log("converting model.fp16.onnx")
        formats.convert_fp16(onnx_path, build.tmp / FILE_NAMES["onnx-fp16"])
        build.add_file("onnx-fp16", FILE_NAMES["onnx-fp16"], io_dtype="float32")
        build.runners["onnx-fp16"] = _ort_runner(build.tmp / FILE_NAMES["onnx-fp16"], names)
    if settings.int8:
        _quantize_int8(model, build, settings, calib, names, cases, speed_feed, log)
    return simplify


@dataclass(frozen=True)
class _ParityCases:
    """The parity inputs and the PyTorch model's outputs for them, computed once: parity checks every artifact on
    them, and the INT8 gate judges model.int8.onnx on them before the file is kept."""

    inputs: list  # sr: N×3×H×W tensors (parity.parity_inputs); generate / face_sr: the graph's tasks.Case list
    references: list[np.ndarray]
    graph: tasks.Graph | None
    text: str  # what the inputs are, for the INT8 verdict line

    @classmethod
    def of(cls, model, scale: int | None, graph: tasks.Graph | None) -> "_ParityCases":
        with torch.no_grad():
            if graph is None:
                inputs = parity.parity_inputs(scale)
                return cls(inputs, [model(x).numpy() for x in inputs], None, "real crops")
            references = [graph.module(*case.inputs).numpy() for case in graph.cases]
            return cls(list(graph.cases), references, graph, {"generate": "seeded z", "face_sr": "a real face"}[
                graph.task])

    def check(self, kind: str, run, tolerance: parity.Tolerance) -> list[dict]:
        if self.graph is None:
            return parity.check_artifact(kind, run, self.inputs, self.references, tolerance)
        return parity.check_cases(kind, run, self.inputs, self.references, self.graph.output_range, tolerance)


def _speed_feed(config, profile, graph: tasks.Graph | None) -> tuple[np.ndarray, ...]:
    """What the INT8 gate times: a real LR crop at the opt shape (sr), or the first parity case (generate, face_sr)."""
    if graph is None:
        return (parity.real_lr_batch(profile.opt, config.scale).numpy(),)
    return tuple(x.numpy() for x in graph.cases[0].inputs)


def _tolerances(settings: ExportSettings) -> dict[str, parity.Tolerance]:
    if settings.int8_min_psnr_db is None:
        return dict(parity.TOLERANCES)
    return {**parity.TOLERANCES, "onnx-int8": parity.Tolerance(min_psnr_db=settings.int8_min_psnr_db)}


def _quantize_int8(model, build: _Build, settings: ExportSettings, calib, names, cases: _ParityCases,
                   speed_feed: tuple[np.ndarray, ...], log) -> None:
    """model.int8.onnx with the family's recipe, kept only when it passes the gate (:func:`int8.judge`); the
    outcome, written or not, goes to ``build.int8`` for the manifest."""
    recipe = int8.recipe_for(get_arch(model.gankd_config.arch).family)
    path = build.tmp / FILE_NAMES["onnx-int8"]
    log(f"quantizing model.int8.onnx ({len(calib)} calibration inputs; 7-bit weights, uint8 activations, "
        f"{recipe.keep_first_convs} first / {recipe.keep_last_convs} last conv(s) in fp32)")
    info = int8.quantize(build.tmp / FILE_NAMES["onnx"], path, calib, recipe)
    calib_shape = calib[0].shape if not isinstance(calib[0], dict) else calib[0][names[0]].shape
    info["calibration"] = {"source": settings.calib if isinstance(calib[0], np.ndarray) else
                           tasks.CALIBRATION_SOURCES[model.gankd_config.task], "count": len(calib),
                           "shape": list(calib_shape), "seed": settings.seed}
    run_int8 = _ort_runner(path, names)
    run_fp32 = build.runners["onnx"]
    tolerance = _tolerances(settings)["onnx-int8"]
    psnrs = [r["psnr_db"] for r in cases.check("onnx-int8", run_int8, tolerance)]
    verdict = int8.judge(psnrs, lambda: run_fp32(*speed_feed), lambda: run_int8(*speed_feed), speed_feed[0].shape,
                         tolerance.min_psnr_db, settings.int8_min_speedup, cases.text)
    build.int8 = {"written": verdict.passed, "gate": verdict.to_json(), "quantization": info}
    if not verdict.passed:
        path.unlink()
        build.int8["reason"] = verdict.reason()
        log(f"INT8 not written: {verdict.reason()} [measured at {'x'.join(map(str, verdict.shape))} on "
            f"{info['calibration_cpu']['model']}: {verdict.psnr_db:.2f} dB, {verdict.speedup:.2f}x]")
        return
    log(f"INT8 kept: {verdict.psnr_db:.2f} dB PSNR to fp32 on {cases.text}, {verdict.speedup:.2f}x the fp32 speed")
    build.add_file("onnx-int8", FILE_NAMES["onnx-int8"], quantization=info)
    build.runners["onnx-int8"] = run_int8


def _build_trt(build: _Build, settings: ExportSettings, profile: trt.ShapeProfile, log) -> None:
    entry = trt.build_engine(build.tmp / FILE_NAMES["onnx"], build.tmp, profile, settings.fp16,
                             settings.timing_cache, log)
    name = entry.pop("path")
    build.add_file("trt", name, **entry)
    engine = build.tmp / name
    build.runners["trt-fp16" if settings.fp16 else "trt"] = lambda x: trt.TrtRunner(engine, x.shape)(x).copy()


def _ort_runner(path: Path, names: tuple[str, ...] = (INPUT_NAME,)):
    session = formats.ort_session(path)
    return lambda *xs: session.run(None, dict(zip(names, xs)))[0]


def _pt2_runner(path: Path):
    module = formats.load_pt2(path)  # the saved file, not the in-memory program: parity proves the file

    def run(*xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


def _parity(model, scale: int, cases: _ParityCases, runners: dict, profile: trt.ShapeProfile, force: bool, log,
            tolerances: dict[str, parity.Tolerance]) -> dict:
    # an engine only takes shapes inside its profile: the parity sizes that fit, and the profile's opt shape
    has_engine = any(kind.startswith("trt") for kind in runners)
    engine_inputs = [x for x in cases.inputs if profile.contains(x.shape)] \
        + [parity.real_lr_batch(profile.opt, scale)] if has_engine else []
    # the PyTorch model runs once per input, however many artifacts (the parity inputs' outputs are known already)
    outputs: dict[int, np.ndarray] = {id(x): ref for x, ref in zip(cases.inputs, cases.references)}

    def reference(x: torch.Tensor) -> np.ndarray:
        if id(x) not in outputs:
            with torch.no_grad():
                outputs[id(x)] = model(x).numpy()
        return outputs[id(x)]

    results = []
    for kind, run in runners.items():
        if kind.startswith("trt"):
            results += parity.check_artifact(kind, run, engine_inputs, [reference(x) for x in engine_inputs],
                                             tolerances[kind])
        else:
            results += cases.check(kind, run, tolerances[kind])
    message = _log_parity(results, force, log)
    return {"passed": message is None, "forced": bool(message), "reference": "the PyTorch model, fp32, CPU",
            "tolerances": {k: t.text() for k, t in tolerances.items()},
            "inputs": "embedded validation photos, centre crops bicubic-downscaled by the scale, batch 2 at "
                      + ", ".join(f"{h}x{w}" for h, w in parity.PARITY_SIZES)
                      + ("; TensorRT: the sizes inside its profile and the opt shape" if has_engine else ""),
            "results": results}


def _log_parity(results: list[dict], force: bool, log) -> str | None:
    """Log one line per parity result; raise on a failure unless ``force``. Returns the failure message, if any."""
    for r in results:
        case = ", ".join(f"{k} {v}" for k, v in r.items() if k in ("seeds", "psi", "scale"))
        log(f"parity {r['artifact']:>10} @ {'x'.join(map(str, r['input_shape']))}{f' ({case})' if case else ''}: "
            f"max_abs {_fmt(r['max_abs'])}, PSNR {_fmt(r['psnr_db'])} dB ({'ok' if r['passed'] else 'FAILED'}, "
            f"{r['tolerance']})")
    message = parity.failure_message(results)
    if message and not force:
        raise GankdError(message)
    if message:
        log(f"warning: {message.split('; pass --force')[0]} (kept: --force)")
    return message


def _graph_parity(graph: tasks.Graph, cases: _ParityCases, runners: dict, force: bool, log,
                  tolerances: dict[str, parity.Tolerance]) -> dict:
    results = []
    for kind, run in runners.items():
        results += cases.check(kind, run, tolerances[kind])
    message = _log_parity(results, force, log)
    section = {"passed": message is None, "forced": bool(message), "reference": "the PyTorch model, fp32, CPU",
               "tolerances": {k: t.text() for k, t in tolerances.items()},
               "compared": f"outputs mapped from {list(graph.output_range)} to [0, 1], clamped",
               "inputs": graph.parity_text, "results": results}
    if graph.task == "face_sr":
        section["by_scale"] = parity.by_scale(results)
    return section


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def calibration_batches(settings: ExportSettings, shape, scale: int) -> list[np.ndarray]:
    """``calib_count`` random LR-sized crops (1×3×H×W at the opt shape's H, W), seeded.

    From the embedded train photos: an HR crop bicubic-downscaled by the scale, so the crops look like the LR
    inputs the model sees. From a user folder: LR-sized crops as they are (the folder holds the model's inputs)."""
    from gankd.distill.data import bicubic_lr, list_images, load_image, sample_images

    _, _, height, width = shape
    rng = random.Random(settings.seed)
    if settings.calib == "sample":
        images, factor = [img for _, img in sample_images("train")], scale
    else:
        images, factor = [load_image(p) for p in list_images(settings.calib)], 1
    batches = []
    for i in range(settings.calib_count):
        crop = _random_crop(images[i % len(images)], height * factor, width * factor, rng)
        lr = bicubic_lr(crop[None], factor) if factor > 1 else crop[None]
        batches.append(np.ascontiguousarray(lr.numpy(), dtype=np.float32))
    return batches


def _random_crop(image: torch.Tensor, height: int, width: int, rng: random.Random) -> torch.Tensor:
    if image.shape[-2] < height or image.shape[-1] < width:
        grow = max(height / image.shape[-2], width / image.shape[-1])
        size = (math.ceil(image.shape[-2] * grow), math.ceil(image.shape[-1] * grow))
        image = torch.nn.functional.interpolate(image[None], size=size, mode="bicubic", align_corners=False)[0]
        image = image.clamp(0, 1)
    top = rng.randint(0, image.shape[-2] - height)
    left = rng.randint(0, image.shape[-1] - width)
    return image[:, top:top + height, left:left + width]


# ----------------------------------------------------------------------------------------------- manifest


def _manifest(model_dir: Path, model, config, multiple: int, settings: ExportSettings, build: _Build,
              simplify: dict | None, parity_section: dict, graph: tasks.Graph | None = None) -> dict:
    from gankd.distill.profile import count_macs, count_params

    if graph is None:
        inputs, outputs = io_specs(config, multiple)
        compute = {"macs_per_input_pixel": count_macs(model, MACS_AT) / (MACS_AT[0] * MACS_AT[2] * MACS_AT[3]),
                   "params": count_params(model), "counts": "convolution and linear MACs"}
        task_keys = {}
    else:
        inputs, outputs, task_keys = graph.inputs, graph.outputs, graph.keys
        compute = {"macs_per_input_pixel": None, "macs_per_sample": tasks.macs_per_sample(graph),
                   "params": count_params(model),
                   "counts": "convolution and matrix-multiply MACs of one sample (torch.utils.flop_counter)"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"gankd-export {_version()}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"model_dir": str(model_dir.resolve()), "weights_sha256": sha256_file(model_dir / WEIGHTS_FILE)},
        "config": config.to_json(),
        "task": config.task,
        **task_keys,
        "scale": config.scale if graph is None else None,
        "inputs": inputs,
        "outputs": outputs,
        "opset": settings.opset if "onnx" in build.files else None,
        "exporter": {"onnx": build.exporter.get("onnx"), "pt2": build.exporter.get("pt2"), "simplify": simplify},
        "compute": compute,
        "files": build.files,
        "int8": build.int8,
        "parity": parity_section,
        "bench": {"results": []},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gankd")
    except PackageNotFoundError:
        return "unknown"
