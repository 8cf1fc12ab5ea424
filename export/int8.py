"""INT8 for ONNX Runtime on any x86 CPU: one recipe per model family, and the gate an INT8 file passes to be written.

Why these settings (ONNX Runtime's quantization guide, and OpenVINO's "saturation issue" note, say the same):
ORT runs a QDQ model's convolutions as u8×s8 integer products. With VNNI (``vpdpbusd``) they accumulate exactly in
int32; without it (AVX2, AVX-512 before Cascade Lake, AMD Zen 2/3) the kernels use ``vpmaddubsw``, which adds two
u8×s8 products into a *saturating* int16. Two products of 255 × 127 overflow it, so the same file computes different
(and worse) numbers on such a CPU. Weights on 7 bits (``reduce_range``, [-64, 64]) keep every pair sum within int16
(2 × 255 × 64 = 32640), so the integer results are exact, and identical, on every x86 CPU; activations keep their
full 8 bits. u8×u8 is also exact but ran no faster than fp32 without VNNI, so it is not used. Post-training settings
(percentile calibration, more crops, fewer quantised convs) were measured and do not lift a student to 40 dB to its
fp32: the error is spread over every conv (docs/export.md). What does is training: quantization-aware distillation
(:mod:`gankd.distill.train.qat`), whose learned activation ranges :func:`quantize` writes instead of calibrating.

The gate (:func:`judge`): an INT8 file is written only when it runs at least ``min_speedup`` times the fp32 ONNX
speed (``--int8-min-speedup``, default 1.0: faster), measured interleaved on this machine, and keeps the quality:
with the student's teacher known (:func:`teacher_psnrs`), it loses at most ``max_loss_db`` (0.3 dB) of fp32's PSNR
to the teacher on held-out crops, clean and degraded; otherwise it reaches ``min_psnr_db`` (the ``onnx-int8``
parity tolerance, 40 dB) to the fp32 model on the parity's real crops. Otherwise nothing is written and one line
gives the measured figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gankd.distill.errors import GankdError
from gankd.distill.train import qat
from gankd.distill.train.qat import Int8Recipe

from .manifest import INPUT_NAME

# The recipes are gankd.distill.train.qat's: quantization-aware distillation mirrors the same graph.
DEFAULT_RECIPE, FAMILY_RECIPES, recipe_for = qat.DEFAULT_RECIPE, qat.FAMILY_RECIPES, qat.recipe_for
SPEED_ROUNDS = (5, 200)  # interleaved rounds for the speed gate: at least 5, and about 2 s of work
CPU_INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def excluded_convs(onnx_path: Path, recipe: Int8Recipe) -> list[str]:
    """Names of the Conv nodes the recipe keeps in fp32, by position in the (topologically ordered) graph."""
    import onnx

    convs = [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type == "Conv"]
    return [convs[k] for k in sorted(qat.kept_convs(len(convs), recipe))]


def quantize(src: Path, dst: Path, batches: list, recipe: Int8Recipe, overrides: dict | None = None) -> dict:
    """Static QDQ quantization of ``src`` into ``dst`` with ``recipe``; ranges from ``batches`` of real inputs (arrays
    for an SR model's ``input``, or {input name: array} feeds), except the activations in ``overrides`` (tensor name
    -> {scale, zero_point}: a QAT student's learned ones, :func:`qat_overrides`), which are written as given and
    must be exactly the activations the quantizer quantises (:func:`check_mirrors`). Returns what the manifest
    records."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from .formats import check_onnx, quiet_root_logger

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            if batch is None:
                return None
            return batch if isinstance(batch, dict) else {INPUT_NAME: batch}

    extra = {}
    if overrides:
        extra["TensorQuantOverrides"] = {name: [{"scale": np.array(q["scale"], dtype=np.float32),
                                                 "zero_point": np.array(q["zero_point"], dtype=np.uint8)}]
                                         for name, q in overrides.items()}
    excluded = excluded_convs(src, recipe)
    with quiet_root_logger():  # the quantizer logs "consider pre-processing" through the root logger
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat[recipe.format],
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=types[recipe.activations], weight_type=types[recipe.weights],
                        calibrate_method=CalibrationMethod[recipe.method], nodes_to_exclude=excluded,
                        extra_options=extra)
    check_onnx(dst, dst.name)
    if overrides:
        check_mirrors(dst, overrides)
    return {**asdict(recipe), "weight_bits": 7 if recipe.reduce_range else 8, "fp32_convs": excluded,
            "calibration_cpu": cpu_features()}


def _srvgg_tensors(graph) -> dict[str, str]:
    """QAT point (gankd.distill.train.qat.QatSRVGG) -> the fp32 ONNX tensor it stands for, found by structure: the k-th
    Conv's input and output, the DepthToSpace (pixel shuffle) and Resize (nearest upsampling) outputs, and the
    graph's output."""
    nodes = list(graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    found = {}
    for k, conv in enumerate(convs):
        found[f"conv{k}_in"], found[f"conv{k}_out"] = conv.input[0], conv.output[0]
    for point, op in (("shuffle", "DepthToSpace"), ("base", "Resize")):
        outputs = [n.output[0] for n in nodes if n.op_type == op]
        if len(outputs) != 1:
            raise GankdError(f"INT8 QAT: expected one {op} node in the srvgg graph, found {len(outputs)}")
        found[point] = outputs[0]
    found["output"] = graph.output[0].name
    return found


ONNX_POINTS = {"srvgg": _srvgg_tensors}


def qat_overrides(onnx_path: Path, family: str, record: dict) -> dict[str, dict]:
    """The learned activation quantization of a QAT student (its provenance ``int8_qat``), keyed by the tensor
    names of ``onnx_path`` (the fp32 export of the same weights)."""
    import onnx

    if family not in ONNX_POINTS:
        raise GankdError(f"INT8 QAT: no ONNX mapping for the {family!r} family")
    tensors = ONNX_POINTS[family](onnx.load(str(onnx_path)).graph)
    acts = record.get("activations") or {}
    missing = sorted(set(acts) - set(tensors))
    if missing:
        raise GankdError(f"INT8 QAT: the student's quantized activations {missing} have no tensor in {onnx_path.name}")
    return {tensors[name]: q for name, q in acts.items()}


def check_mirrors(quantized: Path, overrides: dict) -> None:
    """The activations the quantizer quantised are exactly the ones QAT trained with: one more would be
    re-calibrated behind the student's back, one fewer would never be quantised at run time."""
    import onnx

    graph = onnx.load(str(quantized)).graph
    constants = {init.name for init in graph.initializer}
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"} - constants
    # the quantizer renames a quantized graph output (Add -> output_QuantizeLinear_Input -> Q -> DQ -> output)
    renamed = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    outputs = {o.name for o in graph.output}
    seen = set()
    for name in quantized_inputs:
        q_out = next(n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
        seen.add(renamed.get(q_out) if renamed.get(q_out) in outputs else name)
    extra, missing = sorted(seen - set(overrides)), sorted(set(overrides) - seen)
    if extra or missing:
        raise GankdError("INT8 QAT: the fake quantization the student trained with does not mirror the exported "
                         f"graph (quantized but not trained: {extra}; trained but not quantized: {missing})")


def cpu_features(cpuinfo: str | None = None) -> dict:
    """The CPU model and the flags that decide how ORT runs int8 (VNNI or not): :func:`gankd.serve.cpu.cpu_description`
    (the one /proc/cpuinfo reader) narrowed to :data:`CPU_INT8_FLAGS`."""
    from gankd.serve.cpu import cpu_description

    cpu = cpu_description(cpuinfo)
    if cpu["flags"] is None:
        return {"model": None, "flags": None}
    return {"model": cpu["model"], "flags": [f for f in CPU_INT8_FLAGS if f in cpu["flags"]]}


@dataclass(frozen=True)
class Verdict:
    psnr_db: float  # the worst parity batch, int8 against the PyTorch fp32 output
    speedup: float  # fp32 ONNX median / int8 median
    fp32_ms: float
    int8_ms: float
    shape: list
    min_psnr_db: float
    min_speedup: float
    inputs_text: str = "real crops"
    teacher: dict | None = None  # the teacher gate (:func:`teacher_psnrs`): then it, not psnr_db, judges quality
    max_loss_db: float = 0.3

    @property
    def loss_db(self) -> float:
        """fp32's PSNR to the teacher minus INT8's, on the worse of the clean and the degraded crops."""
        return max(self.teacher["fp32"][k] - self.teacher["int8"][k] for k in self.teacher["fp32"])

    @property
    def quality_passed(self) -> bool:
        if self.teacher is not None:
            return self.loss_db <= self.max_loss_db
        return self.psnr_db >= self.min_psnr_db

    @property
    def passed(self) -> bool:
        return self.quality_passed and self.speedup >= self.min_speedup

    def quality_text(self) -> str:
        if self.teacher is None:
            return f"{self.psnr_db:.2f} dB PSNR to fp32 on {self.inputs_text}"
        groups = ", ".join(f"{k} {self.teacher['int8'][k]:.2f} vs {self.teacher['fp32'][k]:.2f} dB"
                           for k in self.teacher["fp32"])
        return f"PSNR to the teacher, INT8 vs fp32, on held-out crops: {groups} ({self.loss_db:+.2f} dB lost)"

    def reason(self) -> str:
        worse = []
        if not self.quality_passed:
            bar = f"loses at most {self.max_loss_db:g} dB" if self.teacher is not None \
                else f"needs >= {self.min_psnr_db:g} dB"
            worse.append(f"{self.quality_text()} ({bar})")
        if not self.speedup >= self.min_speedup:
            worse.append(f"{self.speedup:.2f}x the fp32 speed (needs >= {self.min_speedup:g}x)")
        return "; ".join(worse)

    def to_json(self) -> dict:
        out = {"psnr_db": round(self.psnr_db, 2) if math.isfinite(self.psnr_db) else None,
               "speedup": round(self.speedup, 3), "fp32_ms": round(self.fp32_ms, 3), "int8_ms": round(self.int8_ms, 3),
               "shape": self.shape, "min_psnr_db": self.min_psnr_db, "min_speedup": self.min_speedup,
               "inputs": self.inputs_text, "passed": self.passed}
        if self.teacher is not None:
            out.update(judged_by="teacher", teacher=self.teacher, loss_db=round(self.loss_db, 3),
                       max_loss_db=self.max_loss_db)
        else:
            out["judged_by"] = "fp32"
        return out


def judge(psnrs: list[float | None], run_fp32: Callable[[], object], run_int8: Callable[[], object], shape,
          min_psnr_db: float, min_speedup: float, inputs_text: str = "real crops", teacher: dict | None = None,
          max_loss_db: float = 0.3) -> Verdict:
    """The gate: quality, by the teacher when ``teacher`` holds :func:`teacher_psnrs`'s figures (INT8 may lose at
    most ``max_loss_db`` of fp32's PSNR to it), else by the worst parity PSNR to fp32 (None, as parity records a
    NaN/inf output, counts as -inf); and the speed-up, measured interleaved (about 2 s, at least 5 rounds)."""
    from gankd.serve.timing import measure_interleaved

    if not psnrs:
        raise GankdError("the INT8 gate got no parity results to judge")
    for run in (run_fp32, run_int8):  # warm-up, and a first timing to size the rounds
        run()
    first = measure_interleaved([run_fp32, run_int8], warmup_ms=0, duration_s=None, iterations=1)
    per_round_s = (first[0][0] + first[1][0]) / 1e3
    rounds = int(min(max(SPEED_ROUNDS[0], math.ceil(2.0 / max(per_round_s, 1e-6))), SPEED_ROUNDS[1]))
    fp32_ms, int8_ms = (statistics.median(t) for t in
                        measure_interleaved([run_fp32, run_int8], warmup_ms=0, duration_s=None, iterations=rounds))
    worst = min(-math.inf if p is None else p for p in psnrs)
    return Verdict(psnr_db=float(worst), speedup=fp32_ms / int8_ms, fp32_ms=fp32_ms, int8_ms=int8_ms,
                   shape=list(shape), min_psnr_db=float(min_psnr_db), min_speedup=float(min_speedup),
                   inputs_text=inputs_text, teacher=teacher, max_loss_db=float(max_loss_db))


TEACHER_GATE_LR = 48  # LR side of the held-out crops the teacher gate scores (small: the teacher runs on every one)
TEACHER_GATE_CROPS_PER_IMAGE = 2


def teacher_psnrs(teacher_dir: Path, scale: int, runners: dict[str, Callable], seed: int = 0) -> dict:
    """Mean PSNR to the teacher's output of each runner (name -> callable(N×3×H×W array) -> array), on held-out
    crops (gankd.distill.report.evaluate's splits, which nothing trains, selects or calibrates on) as they are ("clean")
    and degraded as users' photos are ("degraded": crop i gets photo kind i mod 4). Outputs are clamped to [0, 1] and
    scored on 8 bits, as ``gankd-distill eval`` scores."""
    import numpy as np
    import torch

    from gankd.distill.data.degrade import PHOTO_KINDS
    from gankd.distill.metrics import mean_psnr
    from gankd.distill.report.evaluate import _load_sr, degraded_inputs, eval_crops, eval_images, upscale

    teacher = _load_sr(Path(teacher_dir), "--teacher")
    if teacher.gankd_config.scale != scale:
        raise GankdError(f"--teacher {str(teacher_dir)!r} upscales x{teacher.gankd_config.scale}, the model "
                         f"x{scale}: the INT8 gate needs the student's own teacher")
    _, images = eval_images(None)
    hr, _, _ = eval_crops(images, TEACHER_GATE_LR * scale, scale, TEACHER_GATE_CROPS_PER_IMAGE)
    lr = degraded_inputs(hr, scale, ("clean", *PHOTO_KINDS), seed)
    groups = {"clean": lr["clean"],
              "degraded": torch.stack([lr[PHOTO_KINDS[i % len(PHOTO_KINDS)]][i] for i in range(len(hr))])}
    out = {name: {} for name in runners}
    for group, inputs in groups.items():
        target = upscale(teacher, inputs, 4)
        for name, run in runners.items():
            pred = np.concatenate([run(inputs[i:i + 4].numpy()) for i in range(0, len(inputs), 4)])
            out[name][group] = round(mean_psnr(torch.from_numpy(pred).clamp(0, 1), target), 3)
    return {**out, "crops": len(hr), "lr_size": TEACHER_GATE_LR, "teacher": str(teacher_dir)}


def outcome_markdown(outcome: dict | None) -> str:
    """The INT8 outcome of a manifest (``manifest["int8"]``) as a short markdown section for reports."""
    if not outcome:
        return "INT8: not asked for (gankd-export --int8)."
    gate = outcome["gate"]
    source = "learned in QAT" if outcome["quantization"].get("qat") else "calibrated after training"
    head = f"INT8 ({source}): **{'written' if outcome['written'] else 'not written'}**, " \
           f"{gate['speedup']:.2f}x the fp32 ONNX speed at {'x'.join(map(str, gate['shape']))}"
    if gate.get("judged_by") != "teacher":
        return f"{head}; {gate['psnr_db']} dB PSNR to fp32 on {gate['inputs']} (bar {gate['min_psnr_db']} dB)."
    teacher = gate["teacher"]
    rows = [f"| {kind} | {teacher['fp32'][kind]:.2f} | {teacher['int8'][kind]:.2f} | "
            f"{teacher['int8'][kind] - teacher['fp32'][kind]:+.2f} |" for kind in teacher["fp32"]]
    return "\n".join([f"{head}; INT8 may lose at most {gate['max_loss_db']:g} dB of fp32's PSNR to the teacher "
                      f"({teacher['crops']} held-out crops of {teacher['lr_size']}² LR):", "",
                      "| inputs | fp32 PSNR→teacher | INT8 PSNR→teacher | Δ dB |", "|---|---:|---:|---:|", *rows])


QAT_LAYER_TOLERANCE = {"max_lsb": 1.0, "max_off_fraction": 0.05}  # parity.py states why


def qat_layer_check(int8_path: Path, fp32_onnx: Path, wrapper, x) -> list[dict]:
    """Each quantized layer of ``int8_path`` against the fake-quantized PyTorch model it was trained as
    (``wrapper``, :func:`gankd.distill.train.qat.restore`), given the same input: the layer is cut out of the INT8 graph
    (``onnx.utils.extract_model``: Q, DQ, the int8 kernel ORT fuses, Q, DQ), fed PyTorch's input to that layer on
    ``x``, and its output compared with PyTorch's in units of the layer's output step (LSB). End to end, a deep
    network turns the rare 1-LSB rounding tie that float and integer kernels break differently into larger drifts;
    layer by layer the two must agree to within one step, nearly everywhere. Returns one record per layer."""
    import tempfile

    import numpy as np
    import onnx
    import onnx.utils
    import torch

    from gankd.serve.backends import ort_session

    inputs, outputs = {}, {}

    def keep(name):
        def hook(_module, args, out):
            inputs[name], outputs[name] = args[0].detach(), out.detach()
        return hook

    hooks = [fq.register_forward_hook(keep(name)) for name, fq in wrapper.fq.items()]
    try:
        with torch.no_grad():
            wrapper(x)
    finally:
        for hook in hooks:
            hook.remove()
    tensors = ONNX_POINTS["srvgg"](onnx.load(str(fp32_onnx)).graph)
    graph = onnx.load(str(int8_path)).graph
    dq_after = _dq_after_quantize(graph)
    layers = [([f"conv{k}_in"], f"conv{k}_out") for k in sorted(wrapper.quantized.values())]
    layers.append((["shuffle", "base"], "output"))
    acts = {name: fq.qparams() for name, fq in wrapper.fq.items()}
    records = []
    with tempfile.TemporaryDirectory(prefix="gankd-qat-layer-") as tmp:
        for sources, target in layers:
            names = [tensors[s] for s in sources]
            out_name = dq_after.get(tensors[target], tensors[target])
            sub = Path(tmp) / f"{target}.onnx"
            onnx.utils.extract_model(str(int8_path), str(sub), names, [out_name])
            got = ort_session(sub).run([out_name], {n: inputs[s].numpy() for n, s in zip(names, sources)})[0]
            steps = np.abs(got - outputs[target].numpy()) / acts[target]["scale"]
            records.append({"layer": target, "max_lsb": round(float(steps.max()), 3),
                            "off_fraction": round(float((steps > 0.5).mean()), 5)})
    return records


def qat_layers_pass(records: list[dict]) -> bool:
    return bool(records) and all(r["max_lsb"] <= QAT_LAYER_TOLERANCE["max_lsb"] + 1e-3
                                 and r["off_fraction"] <= QAT_LAYER_TOLERANCE["max_off_fraction"] for r in records)


def _dq_after_quantize(graph) -> dict[str, str]:
    """Float tensor T -> the DequantizeLinear output that carries T after its QuantizeLinear (T's value on the int8
    grid, as the next op reads it)."""
    dq_by_input = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.input[0]: dq_by_input[n.output[0]] for n in graph.node
            if n.op_type == "QuantizeLinear" and n.output[0] in dq_by_input}
