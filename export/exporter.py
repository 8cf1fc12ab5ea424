"""``export_model``: a model folder in, an artifact folder out (files + parity + manifest), all or nothing.

The artifact is assembled in a temporary folder beside ``out`` and moved into place at the end, so a failed export
(a broken tolerance without ``force``, a crash, Ctrl-C) leaves an existing artifact folder untouched.

Order: check everything that can fail cheaply first (formats, shapes, TensorRT availability, the output folder),
then ONNX (simplified with onnxslim unless asked not to; onnx.checker; no custom ops) → fp16 → INT8 → pt2 →
TensorRT → parity of every file → manifest.

Every task (the model folder's ``config.json`` ``task``) is exported the same way, from its
:class:`gankd.export.tasks.Graph`: ``sr`` models take N×3×H×W with dynamic N, H and W; ``generate`` (z → face,
optional ``--psi`` truncation input) and ``face_sr`` (LQ face + scale → face) have a dynamic batch only; see that
module for their inputs and parity cases. TensorRT is built for ``sr`` models only (a graph with a shape profile).
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gankd.distill.errors import GankdError
from gankd.distill.models.folder import WEIGHTS_FILE, load_config, load_model
from gankd.distill.models.registry import get_arch
from gankd.distill.train import qat
from gankd.serve.files import publish_folder, sha256_file
from gankd.serve.manifest import MANIFEST_FILE, is_artifact_folder

from . import formats, int8, ncnn, official, parity, tasks, trt
from .manifest import FORMAT, FORMAT_VERSION, write_manifest
from .parity import Case
from .tasks import calibration_batches  # noqa: F401 - public here too (demos/int8_holdout.py)

FORMATS = ("onnx", "pt2", "trt", "ncnn", "pth")
SR_ONLY_FORMATS = ("trt", "ncnn", "pth")  # engines and runtimes with a shape profile or no batch: SR models only
FILE_NAMES = {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
              "pt2": "model.pt2", "ncnn": ncnn.PARAM_FILE, "ncnn-bin": ncnn.BIN_FILE, "pth": official.PTH_FILE}


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
    teacher: Path | None = None  # the student's teacher: the INT8 gate then judges by PSNR to it (None: from the
    # student's provenance, when that folder exists here)
    int8_max_loss_db: float = 0.3  # teacher gate: INT8 may lose at most this much of fp32's PSNR to the teacher

    def __post_init__(self):
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise GankdError(f"unknown format {unknown[0]!r}; formats: {', '.join(FORMATS)}")
        if not self.formats:
            raise GankdError(f"--formats is empty; choose from {', '.join(FORMATS)}")
        if (self.fp16 or self.int8) and "onnx" not in self.formats and "trt" not in self.formats:
            raise GankdError("--fp16 and --int8 make ONNX variants: add onnx to --formats")
        if self.int8_max_loss_db < 0:
            raise GankdError(f"--int8-max-loss-db must be >= 0, got {self.int8_max_loss_db:g}")
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
    parity_refs: dict = field(default_factory=dict)  # artifact kind -> (its _ParityCases, tolerance), where its
    # reference is not the fp32 model (a QAT student's INT8 file: the fake-quantized model)

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
    _check_formats_fit(load_config(model_dir), formats_wanted)
    if "trt" in formats_wanted:
        trt.require("TensorRT export")  # fail fast: nothing is exported when the engine cannot be built
    _check_out_dir(out_dir, settings.force)
    model = load_model(model_dir)
    graph = tasks.build_graph(model, model_dir, settings, log)
    # INT8: the model family's recipe and the calibration feeds, made before anything is written
    int8_plan = (int8.recipe_for(get_arch(model.gankd_config.arch).family), graph.calibration(),
                 _qat_model(model, model_dir), model.gankd_config) if settings.int8 else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the published folder gets the usual mode
    try:
        build = _Build(tmp)
        simplify, parity_section = _export_files(graph, build, settings, formats_wanted, int8_plan, log)
        manifest = _manifest(model_dir, model.gankd_config, settings, build, simplify, parity_section, graph)
        write_manifest(tmp, manifest)
        if order := _runtime_order(tmp, log):
            manifest["runtime_order"] = order
            write_manifest(tmp, manifest)
        publish_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _export_files(graph: tasks.Graph, build: _Build, settings: ExportSettings, formats_wanted, int8_plan,
                  log) -> tuple[dict | None, dict]:
    """Write every file into ``build.tmp`` and check it; returns (the ONNX simplification record, parity)."""
    cases = _ParityCases.of(graph.module, graph.cases, graph.output_range, graph.parity_short)
    simplify = _export_onnx_family(graph, build, settings, int8_plan, cases, log) \
        if "onnx" in formats_wanted else None
    if "pt2" in formats_wanted:
        log("exporting model.pt2 (torch.export)")
        formats.export_pt2(graph.module, build.tmp / FILE_NAMES["pt2"], graph.signature)
        build.add_file("pt2", FILE_NAMES["pt2"])
        build.exporter["pt2"] = f"{formats.PT2_EXPORTER}, torch {torch.__version__}"
        build.runners["pt2"] = formats.pt2_runner(build.tmp / FILE_NAMES["pt2"])
    if "trt" in formats_wanted:
        _build_trt(build, settings, graph.profile, log)
    if "ncnn" in formats_wanted:
        _export_ncnn(graph, build, log)
    if "pth" in formats_wanted:
        log(f"writing {official.PTH_FILE} (Real-ESRGAN params_ema layout) and reloading it through spandrel")
        info = official.export_pth(graph.module, graph.module.gankd_config, build.tmp / official.PTH_FILE)
        build.add_file("pth", official.PTH_FILE, **info)
        build.runners["pth"] = official.spandrel_runner(build.tmp / official.PTH_FILE)
    return simplify, _parity(graph, cases, build.runners, settings.force, log, _tolerances(settings),
                             build.parity_refs)


def _check_formats_fit(config, formats_wanted) -> None:
    """Formats this model cannot have, refused before anything is written."""
    sr_only = [f for f in formats_wanted if f in SR_ONLY_FORMATS]
    if sr_only and tasks.TASKS[config.task].fixed_size:
        raise GankdError(f"--formats {sr_only[0]} is for sr models only; export {config.task} models as onnx,pt2")
    if "pth" in formats_wanted and (problem := official.layout_problem(config)):
        raise GankdError(problem)


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GankdError(f"--out {str(out_dir)!r} is a file, not a folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise GankdError(f"{str(out_dir)!r} already exists and is not empty; pass --force to replace it")
        if not is_artifact_folder(out_dir):
            raise GankdError(f"--force replaces only an artifact folder gankd-export wrote; {str(out_dir)!r} holds "
                             f"other files (no gankd {MANIFEST_FILE}): choose another --out")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------- steps


def _export_onnx_family(graph: tasks.Graph, build: _Build, settings: ExportSettings, int8_plan,
                        cases: "_ParityCases", log) -> dict:
    onnx_path = build.tmp / FILE_NAMES["onnx"]
    names = graph.signature.input_names
    symbols = dict.fromkeys(s for port in graph.signature.inputs for s in port.dynamic.values())
    log(f"exporting model.onnx (opset {settings.opset}, inputs {', '.join(names)}, dynamic {'/'.join(symbols)})")
    formats.export_onnx(graph.module, onnx_path, settings.opset, graph.signature)
    simplify = formats.simplify_onnx(onnx_path) if settings.simplify else \
        {"applied": False, "tool": None, "reason": "--no-simplify"}
    if settings.simplify and not simplify["applied"]:
        log(f"graph simplification skipped: {simplify['reason']}")
    formats.check_onnx(onnx_path, onnx_path.name)
    build.add_file("onnx", FILE_NAMES["onnx"])
    build.exporter["onnx"] = f"{formats.ONNX_EXPORTER}, torch {torch.__version__}"
    build.runners["onnx"] = formats.ort_runner(onnx_path, names)
    if settings.fp16 and "onnx" in settings.formats:
        log("converting model.fp16.onnx")
        formats.convert_fp16(onnx_path, build.tmp / FILE_NAMES["onnx-fp16"])
        build.add_file("onnx-fp16", FILE_NAMES["onnx-fp16"], io_dtype="float32")
        build.runners["onnx-fp16"] = formats.ort_runner(build.tmp / FILE_NAMES["onnx-fp16"], names)
    if int8_plan:
        _quantize_int8(graph, build, settings, *int8_plan, cases, log)
    return simplify


@dataclass(frozen=True)
class _ParityCases:
    """Parity inputs and the PyTorch model's outputs for them, computed once: parity checks every artifact on
    them, and the INT8 gate judges model.int8.onnx on them before the file is kept."""

    cases: list[Case]
    references: list[np.ndarray]
    output_range: tuple[float, float]
    text: str  # what the inputs are, for the INT8 verdict line

    @classmethod
    def of(cls, module, cases: list[Case], output_range, text: str,
           known: "_ParityCases | None" = None) -> "_ParityCases":
        """``known``: cases whose outputs are computed already (the PyTorch model runs once per input)."""
        done = {id(c): ref for c, ref in zip(known.cases, known.references)} if known else {}
        with torch.no_grad():
            references = [done[id(c)] if id(c) in done else module(*c.inputs).numpy() for c in cases]
        return cls(list(cases), references, output_range, text)

    def check(self, kind: str, run, tolerance: parity.Tolerance) -> list[dict]:
        return parity.check_cases(kind, run, self.cases, self.references, self.output_range, tolerance)


def _tolerances(settings: ExportSettings) -> dict[str, parity.Tolerance]:
    if settings.int8_min_psnr_db is None:
        return dict(parity.TOLERANCES)
    return {**parity.TOLERANCES, "onnx-int8": parity.Tolerance(min_psnr_db=settings.int8_min_psnr_db)}


def _qat_model(model, model_dir: Path):
    """The QAT weights whose ranges model.int8.onnx is written with: ``model_dir/int8_qat/`` (a run's qat stage),
    or the model itself when it is such a folder; None for a model without QAT."""
    if model.gankd_config.provenance.get("int8_qat"):
        return model
    folder = model_dir / qat.FOLDER
    if not (folder / "config.json").is_file():
        return None
    qat_model = load_model(folder)
    config, mine = qat_model.gankd_config, model.gankd_config
    if (config.arch, config.kwargs) != (mine.arch, mine.kwargs) or not config.provenance.get("int8_qat"):
        raise GankdError(f"{folder} is not a QAT student of {model_dir}'s architecture: distil it again")
    return qat_model


def _quantize_int8(graph: tasks.Graph, build: _Build, settings: ExportSettings, recipe: int8.Int8Recipe,
                   calib: list[dict], qat_model, config, cases: _ParityCases, log) -> None:
    """model.int8.onnx with the family's recipe, kept only when it passes the gate (:func:`int8.judge`); the outcome,
    written or not, goes to ``build.int8`` for the manifest.

    With a QAT student (``qat_model``, :func:`_qat_model`) the file is the QAT weights with the activation ranges
    they learned, not calibrated again, while the fp32 files stay the fp32 student's; its parity is layer by layer
    against the fake-quantized model (:func:`int8.qat_layer_check`). The gate judges quality by PSNR to the teacher
    on held-out crops when the teacher is known (``--teacher``, or the provenance's teacher folder where it exists),
    against the fp32 model.onnx, else by PSNR to fp32."""
    path = build.tmp / FILE_NAMES["onnx-int8"]
    family = get_arch(config.arch).family
    source_onnx, overrides, record, reference = build.tmp / FILE_NAMES["onnx"], None, None, None
    if qat_model is not None:
        record = qat_model.gankd_config.provenance["int8_qat"]
        source_onnx = build.tmp / ".qat.fp32.onnx"  # the QAT weights in fp32: the quantizer's input, not shipped
        formats.export_onnx(qat_model.eval(), source_onnx, settings.opset, graph.signature)
        if settings.simplify:
            formats.simplify_onnx(source_onnx)
        overrides = int8.qat_overrides(source_onnx, family, record)
    what = f"the {len(overrides)} activation ranges learned in QAT" if record else f"{len(calib)} calibration inputs"
    log(f"quantizing model.int8.onnx ({what}; 7-bit weights, uint8 activations, "
        f"{recipe.keep_first_convs} first / {recipe.keep_last_convs} last conv(s) in fp32)")
    names = graph.signature.input_names
    try:
        info = int8.quantize(source_onnx, path, calib, recipe, overrides)
        info["calibration"] = {"source": graph.calibration_source, "count": len(calib),
                               "shape": list(calib[0][names[0]].shape), "seed": settings.seed}
        if record:
            reference = qat.restore(copy.deepcopy(qat_model), family, record)
            layers = int8.qat_layer_check(path, source_onnx, reference, cases.cases[0].inputs[0])
            qat_prov = qat_model.gankd_config.provenance
            info["calibration"] = None
            info["qat"] = {"activations": "learned in QAT, not calibrated again", "recipe": record["recipe"],
                           "run": qat_prov.get("run"), "step": qat_prov.get("step"),
                           "layers": {"passed": int8.qat_layers_pass(layers), "tolerance": int8.QAT_LAYER_TOLERANCE,
                                      "worst": max(layers, key=lambda r: (r["max_lsb"], r["off_fraction"]))}}
    finally:
        if record:
            source_onnx.unlink(missing_ok=True)
    if record and not info["qat"]["layers"]["passed"]:
        worst = info["qat"]["layers"]["worst"]
        message = (f"parity failed for onnx-int8: layer {worst['layer']} of the INT8 graph differs from the QAT "
                   f"model by up to {worst['max_lsb']:g} steps on {100 * worst['off_fraction']:.2f}% of its values "
                   f"(needs <= {int8.QAT_LAYER_TOLERANCE['max_lsb']:g} step on <= "
                   f"{100 * int8.QAT_LAYER_TOLERANCE['max_off_fraction']:g}%)")
        if not settings.force:
            raise GankdError(message + "; pass --force to keep the export")
        log(f"warning: {message} (kept: --force)")
    run_int8 = formats.ort_runner(path, names)
    run_fp32 = build.runners["onnx"]
    tolerances = _tolerances(settings)
    fp32_psnrs = [r["psnr_db"] for r in cases.check("onnx-int8", run_int8, tolerances["onnx-int8"])]
    teacher_dir = _int8_teacher(settings, config, log) if graph.task == "sr" else None
    teacher = int8.teacher_psnrs(teacher_dir, graph.scale, {"fp32": run_fp32, "int8": run_int8}, settings.seed) \
        if teacher_dir else None
    speed_feed = tuple(x.numpy() for x in graph.opt_case.inputs)
    verdict = int8.judge(fp32_psnrs, lambda: run_fp32(*speed_feed), lambda: run_int8(*speed_feed),
                         speed_feed[0].shape, tolerances["onnx-int8"].min_psnr_db, settings.int8_min_speedup,
                         cases.text, teacher, settings.int8_max_loss_db)
    build.int8 = {"written": verdict.passed, "gate": verdict.to_json(), "quantization": info}
    if not verdict.passed:
        path.unlink()
        build.int8["reason"] = verdict.reason()
        log(f"INT8 not written: {verdict.reason()} [measured at {'x'.join(map(str, verdict.shape))} on "
            f"{info['calibration_cpu']['model']}: {verdict.speedup:.2f}x]")
        return
    log(f"INT8 kept: {verdict.quality_text()}, {verdict.speedup:.2f}x the fp32 speed")
    build.add_file("onnx-int8", FILE_NAMES["onnx-int8"], quantization=info)
    build.runners["onnx-int8"] = run_int8
    if record:  # end to end: against the fake-quantized model it was trained as (recorded; bounded layer by layer)
        build.parity_refs["onnx-int8"] = (_ParityCases.of(reference, cases.cases, cases.output_range, cases.text),
                                          parity.TOLERANCES["onnx-int8-qat"],
                                          "the fake-quantized PyTorch model of the QAT weights (end to end; each "
                                          "layer is checked on its own, quantization.qat.layers)")
    elif teacher is not None:  # judged by the teacher: the distance to fp32 is recorded, not bounded
        build.parity_refs["onnx-int8"] = (cases, parity.Tolerance(), "the PyTorch model, fp32, CPU (recorded; "
                                          "the INT8 gate judged by PSNR to the teacher)")


def _int8_teacher(settings: ExportSettings, config, log) -> Path | None:
    """The teacher the INT8 gate judges by: ``--teacher``, else the student's provenance ``teacher_dir`` where that
    folder is here; None (the PSNR-to-fp32 gate) otherwise, with a line saying so."""
    if settings.teacher is not None:
        return settings.teacher
    named = config.provenance.get("teacher_dir")
    where = f" ({named} is not here)" if named else ""
    if named and (Path(named) / "config.json").is_file():
        found = load_config(Path(named))  # a relative path: the folder here must be the teacher the run had
        if config.provenance.get("teacher_arch") in (None, found.arch):
            log(f"INT8 gate: judged by the teacher {named} (named by the student's run; --teacher to choose)")
            return Path(named)
        where = f" ({named} here holds a {found.arch}, the run's teacher was a {config.provenance['teacher_arch']})"
    if config.task == "sr" and config.kind == "generator":
        log(f"INT8 gate: no teacher known{where}: judged by PSNR to fp32 (pass --teacher DIR to judge by the "
            "teacher)")
    return None


def _build_trt(build: _Build, settings: ExportSettings, profile: trt.ShapeProfile, log) -> None:
    entry = trt.build_engine(build.tmp / FILE_NAMES["onnx"], build.tmp, profile, settings.fp16,
                             settings.timing_cache, log)
    name = entry.pop("path")
    build.add_file("trt", name, **entry)
    engine = build.tmp / name
    build.runners["trt-fp16" if settings.fp16 else "trt"] = lambda x: trt.TrtRunner(engine, x.shape)(x).copy()


def _export_ncnn(graph: tasks.Graph, build: _Build, log) -> None:
    """model.ncnn.param/.bin through pnnx, traced at the two parity sizes so H and W stay free."""
    log("exporting model.ncnn.param / model.ncnn.bin (pnnx, fp16 weight storage; blobs data -> output)")
    (h1, w1), (h2, w2) = parity.PARITY_SIZES
    info = ncnn.export_ncnn(graph.module, build.tmp, torch.rand(1, 3, h1, w1), torch.rand(1, 3, h2, w2))
    build.add_file("ncnn", ncnn.PARAM_FILE, **info)
    build.add_file("ncnn-bin", ncnn.BIN_FILE)
    build.runners["ncnn"] = ncnn.ncnn_runner(build.tmp / ncnn.PARAM_FILE, build.tmp / ncnn.BIN_FILE)


def _parity(graph: tasks.Graph, cases: _ParityCases, runners: dict, force: bool, log,
            tolerances: dict[str, parity.Tolerance], refs: dict | None = None) -> dict:
    """Every artifact against the PyTorch model on the graph's cases. An engine only takes shapes inside its
    profile: it is checked on the cases that fit, and on the opt case (the profile's opt shape)."""
    has_engine = any(kind.startswith("trt") for kind in runners)
    if has_engine:
        fit = [c for c in cases.cases if graph.profile.contains(c.inputs[0].shape)] + [graph.opt_case]
        engine_cases = _ParityCases.of(graph.module, fit, cases.output_range, cases.text, known=cases)
    results = []
    refs = dict(refs or {})
    for kind, run in runners.items():
        if kind in refs:  # another reference than the fp32 model (_quantize_int8)
            own, tolerance, _ = refs[kind]
            results += own.check(kind, run, tolerance)
            tolerances = {**tolerances, kind: tolerance}
            continue
        results += (engine_cases if kind.startswith("trt") else cases).check(kind, run, tolerances[kind])
    message = _log_parity(results, force, log)
    section = {"passed": message is None, "forced": bool(message), "reference": "the PyTorch model, fp32, CPU",
               **({"references": {kind: ref[2] for kind, ref in refs.items()}} if refs else {}),
               "tolerances": {k: t.text() for k, t in tolerances.items()}}
    if graph.output_range != (0.0, 1.0):
        section["compared"] = f"outputs mapped from {list(graph.output_range)} to [0, 1], clamped"
    section["inputs"] = graph.parity_text + ("; TensorRT: the sizes inside its profile and the opt shape"
                                             if has_engine else "")
    section["results"] = results
    if graph.by_scale:
        section["by_scale"] = parity.by_scale(results)
    return section


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


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _runtime_order(folder: Path, log) -> dict | None:
    """The verified runtimes of the finished folder, fastest first on this machine (``gankd.serve.auto``: what
    Session's ``auto`` serves here without measuring again); None with fewer than two, or when measuring fails
    (the export stands; Sessions then measure on first open)."""
    from gankd.serve.errors import ServeError
    from gankd.serve.session import measure_artifact

    try:
        return measure_artifact(folder, log=lambda line: log(f"runtime order: {line}"))
    except ServeError as exc:
        log(f"runtime order not recorded: {exc}")
        return None


# ----------------------------------------------------------------------------------------------- manifest


def _manifest(model_dir: Path, config, settings: ExportSettings, build: _Build, simplify: dict | None,
              parity_section: dict, graph: tasks.Graph) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"gankd-export {_version()}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"model_dir": str(model_dir.resolve()), "weights_sha256": sha256_file(model_dir / WEIGHTS_FILE)},
        "config": config.to_json(),
        "task": config.task,
        **graph.keys,
        "scale": graph.scale,
        "inputs": graph.input_specs,
        "outputs": graph.output_specs,
        "opset": settings.opset if "onnx" in build.files else None,
        "exporter": {"onnx": build.exporter.get("onnx"), "pt2": build.exporter.get("pt2"), "simplify": simplify},
        "compute": graph.compute,
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
