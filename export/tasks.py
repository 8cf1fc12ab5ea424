"""What gets exported for each task, described the same way for all: a :class:`Graph` per model folder.

A Graph names the module to export and its :class:`Signature` (the named inputs in ``forward`` order with their
dynamic axes and size multiples, the output, example inputs), the manifest's input/output specs and task keys, the
parity cases, the input the INT8 speed gate times, the INT8 calibration feeds and the compute figures. The exporter
(``exporter.export_model``), the formats (``formats.export_onnx`` / ``export_pt2``) and parity run every Graph the
same way; :data:`TASKS` adds, per task, the Graph's builder and what gankd-bench feeds an artifact of that task.

sr
    input ``input`` [N, C, H, W] with dynamic N, H and W (H, W multiples of the model's pixel-unshuffle factor),
    output ``output`` [N, C, H*s, W*s]. Parity: real LR crops (:func:`gankd.export.parity.parity_inputs`). The
    TensorRT profile (``--min/--opt/--max-shape``) is parsed here; its opt shape sizes the INT8 calibration crops
    (:func:`calibration_batches`) and the real LR batch the INT8 speed gate times, which is also the engine's
    opt-shape parity case.
generate
    inputs ``z`` [N, style_dim] (+ ``psi`` [N] with ``--psi``: :class:`PsiGenerator`, truncation as an input, the
    average latent from :data:`LATENT_AVG_SAMPLES` z of a fixed seed baked into the graph); output ``image``
    [N, 3, S, S] in [-1, 1]. z of seed s is ``numpy.random.default_rng(s).standard_normal(style_dim,
    dtype=float32)`` (:func:`seed_z`), written into the manifest so a runtime draws the same z (gankd.serve does).
    Parity: z batches of seeds 0-1, 2-4 and 5 (batch 2, 3, 1), each at psi 0.5 and 1.0 when psi is an input.
face_sr
    inputs ``image`` [N, 3, S, S] (the low-quality face, already resized back to S, in [-1, 1]) and ``scale`` [N]
    (the upscaling factor, 4-64); output ``restored`` [N, 3, S, S] in [-1, 1]. ONNX value names are unique in a
    graph, so the output cannot also be called ``image``. Parity per scale 4, 8, 16, 32, 64 (those dividing S) on a
    real face (scikit-image's astronaut and its mirror image, a batch of 2, degraded by
    ``gankd.distill.data.faces.gcfsr_lq``), plus one batch mixing the smallest and largest scale.

generate and face_sr have a fixed input size: only the batch is dynamic, gankd-bench varies the batch
(``--batch``), and no TensorRT engine is built for them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.session import seed_z  # the one home (Z_SEEDING): what a Session draws

from . import trt
from .manifest import INPUT_NAME, OUTPUT_NAME, io_specs
from .parity import PARITY_SIZES, Case, parity_inputs, real_lr_batch

LATENT_AVG_SAMPLES = 4096
Z_SEEDING = "z of seed s = numpy.random.default_rng(s).standard_normal(style_dim, dtype=float32); a batch stacks seeds"
GENERATE_BATCHES: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3, 4), (5,))
PARITY_PSI = (0.5, 1.0)
FACE_SCALES = (4, 8, 16, 32, 64)
FACE_SCALE_RANGE = (4.0, 64.0)
CALIBRATION_SOURCES = {"generate": "seeded random z (psi 1.0 / 0.5 alternating where psi is an input)",
                       "face_sr": "LFW train faces (gankd.distill.data.faces), degraded at the parity scales in turn"}
FACE_DEGRADATION = ("HR face resized to S; LQ = MATLAB-style bicubic imresize down by the factor and back up to S, "
                    "rounded to 8 bits, in [-1, 1] (GCFSR's inference and FFHQ_control_Dataset; "
                    "gankd.distill.data.faces.gcfsr_lq)")
MACS_AT = (1, 3, 64, 64)  # sr: conv MACs are linear in N·H·W, so one count gives the per-pixel figure
BENCH_PSI = 0.7  # gankd-bench: the psi generate rows run at, where psi is an input
BENCH_FACE_SCALE = 16  # gankd-bench: the degradation of the face face_sr rows restore


# ----------------------------------------------------------------------------------------------- the interface


@dataclass(frozen=True)
class Port:
    """One named tensor of an exported graph. Axis 0 is the batch ``N`` (dynamic unless ``batch`` is False);
    ``spatial`` names the other dynamic axes (``{2: "H", 3: "W"}``), which take multiples of ``multiple``; every
    other axis keeps the size it has in the example input."""

    name: str
    spatial: dict[int, str] = field(default_factory=dict)
    multiple: int = 1
    batch: bool = True

    @property
    def dynamic(self) -> dict[int, str]:
        return {**({0: "N"} if self.batch else {}), **self.spatial}


@dataclass(frozen=True)
class Signature:
    """What ``formats.export_onnx`` / ``export_pt2`` need besides the module: its inputs in ``forward`` order, its
    output, and example inputs (batch 2 where the batch is dynamic: torch.export specialises a size-1 dimension)."""

    inputs: tuple[Port, ...]
    output: Port
    examples: tuple[torch.Tensor, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(port.name for port in self.inputs)


@dataclass
class Graph:
    """Everything the exporter needs to know about one model: what to export, how to check it, what to record."""

    task: str
    module: nn.Module
    signature: Signature
    input_specs: list[dict]  # the manifest's inputs / outputs
    output_specs: list[dict]
    keys: dict  # task keys of the manifest (style_dim, size, truncation, ...)
    scale: int | None  # the manifest's scale (output size = input size x scale); None for fixed-size tasks
    cases: list[Case]  # parity inputs
    parity_text: str  # the manifest's parity.inputs
    parity_short: str  # the same in a few words, for the INT8 verdict
    opt_case: Case  # what the INT8 speed gate times (sr: at the opt shape, also the engine's opt-shape parity case)
    compute: dict  # the manifest's compute
    calibration: Callable[[], list[dict[str, np.ndarray]]]  # INT8 calibration feeds, {input name: array}
    calibration_source: str
    output_range: tuple[float, float] = (-1.0, 1.0)
    by_scale: bool = False  # parity also tabulated by scale (face_sr)
    profile: trt.ShapeProfile | None = None  # TensorRT engines are built for graphs with a profile (sr) only


@dataclass(frozen=True)
class Task:
    """One value of a model folder's ``config.json`` ``task``, as gankd.export handles it."""

    build: Callable[..., Graph]  # (model, model_dir, settings, log) -> Graph
    bench_inputs: Callable[[dict, tuple[int, ...]], dict[str, np.ndarray]]  # gankd-bench: (manifest, shape) -> feeds
    bench_text: str  # those inputs in words
    size_key: str | None = None  # fixed-size tasks: the manifest key fixing the input size (only the batch varies)

    @property
    def fixed_size(self) -> bool:
        return self.size_key is not None


def build_graph(model: nn.Module, model_dir: Path, settings, log) -> Graph:
    """The Graph of a loaded model folder, after every check that needs no export. ``settings`` is the exporter's
    ExportSettings (psi, seed, calib, calib_count and the shape profile are read here)."""
    config = model.gankd_config
    task = TASKS[config.task]
    if config.kind != "generator" or not (config.scale or task.fixed_size):
        raise GankdError(f"gankd-export exports image-to-image generators (and generate / face_sr models); "
                         f"{config.arch!r} in {str(model_dir)!r} is a {config.kind} without an output scale")
    return task.build(model, model_dir, settings, log)


def _compute(model: nn.Module, counts: str, **macs) -> dict:
    from gankd.distill.models.cost import count_params

    return {"macs_per_input_pixel": None, **macs, "params": count_params(model), "counts": counts}


# ----------------------------------------------------------------------------------------------- sr


def spatial_multiple(model: nn.Module) -> int:
    """H and W must be multiples of this: RRDBNet x2 / x1 pixel-unshuffle their input by 2 / 4 (BasicSR layout)."""
    return int(getattr(model, "unshuffle", 1))


def _sr_graph(model: nn.Module, model_dir: Path, settings, log) -> Graph:
    from gankd.distill.models.cost import count_macs

    config = model.gankd_config
    if settings.psi:
        raise GankdError(f"--psi adds truncation to generate models; {config.arch!r} is a {config.task} model")
    multiple = spatial_multiple(model)
    profile = trt.ShapeProfile.parse(settings.min_shape, settings.opt_shape, settings.max_shape,
                                     channels=int(config.kwargs.get("num_in_ch", 3)), multiple=multiple)
    signature = image_signature(multiple)
    inputs, outputs = io_specs(config, multiple)
    pixels = MACS_AT[0] * MACS_AT[2] * MACS_AT[3]
    compute = _compute(model, "convolution and linear MACs", macs_per_input_pixel=count_macs(model, MACS_AT) / pixels)
    text = ("embedded validation photos, centre crops bicubic-downscaled by the scale, batch 2 at "
            + ", ".join(f"{h}x{w}" for h, w in PARITY_SIZES))

    def calibration() -> list[dict[str, np.ndarray]]:
        return [{INPUT_NAME: batch} for batch in calibration_batches(settings, profile.opt, config.scale)]

    return Graph(task="sr", module=model.eval(), signature=signature, input_specs=inputs, output_specs=outputs,
                 keys={}, scale=config.scale, cases=[Case((x,), {}) for x in parity_inputs(config.scale)],
                 parity_text=text, parity_short="real crops",
                 opt_case=Case((real_lr_batch(profile.opt, config.scale),), {}), compute=compute,
                 calibration=calibration, calibration_source=settings.calib, output_range=(0.0, 1.0),
                 profile=profile)


def image_signature(multiple: int = 1) -> Signature:
    """An sr model's: ``input`` [N, 3, H, W] → ``output`` with dynamic N, H, W (H, W multiples of ``multiple``),
    traced on a seeded 2×3×32×32 example (32 is a multiple of every pixel-unshuffle factor, 1, 2 or 4)."""
    return Signature(inputs=(Port(INPUT_NAME, {2: "H", 3: "W"}, multiple),),
                     output=Port(OUTPUT_NAME, {2: "H_out", 3: "W_out"}),
                     examples=(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),))


def calibration_batches(settings, shape, scale: int) -> list[np.ndarray]:
    """``settings.calib_count`` random LR-sized crops (1×3×H×W at ``shape``'s H, W), seeded by ``settings.seed``.

    From the embedded train photos (``settings.calib == "sample"``): an HR crop bicubic-downscaled by the scale, so
    the crops look like the LR inputs the model sees. From a user folder: LR-sized crops as they are (the folder
    holds the model's inputs)."""
    from gankd.distill.data.degrade import bicubic_lr
    from gankd.distill.data.images import list_images, load_image, sample_images

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


def _sr_bench_inputs(manifest: dict, shape) -> dict[str, np.ndarray]:
    return {INPUT_NAME: np.ascontiguousarray(real_lr_batch(shape, manifest["scale"]).numpy())}


# ----------------------------------------------------------------------------------------------- fixed size


def _check_fixed_size(model: nn.Module, model_dir: Path, settings, needs: tuple[str, ...], arch_kind: str,
                      calibrates_from: str) -> None:
    config = model.gankd_config
    missing = [name for name in needs if _attr(model, name) is None]
    if missing:
        raise GankdError(f"{str(model_dir)!r} has task {config.task!r} but its arch {config.arch!r} has no "
                         f"{missing[0]}: not a {arch_kind}")
    if settings.calib != "sample":
        raise GankdError(f"--calib takes an image folder for sr models; {config.task} models calibrate INT8 from "
                         f"{calibrates_from}")


def _attr(obj, dotted: str):
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
    return obj


def _batch_signature(names: tuple[str, ...], output: str, examples: tuple[torch.Tensor, ...]) -> Signature:
    return Signature(tuple(Port(name) for name in names), Port(output), examples)


def _macs_per_sample(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> int:
    """MACs of one sample (convolutions and matrix products, FlopCounterMode: modulated convs count too)."""
    from gankd.distill.models.cost import count_macs

    return count_macs(module, tuple(tuple(x[:1].shape) for x in examples))


def _sample_compute(model: nn.Module, module: nn.Module, examples: tuple[torch.Tensor, ...]) -> dict:
    return _compute(model, "convolution and matrix-multiply MACs of one sample (torch.utils.flop_counter)",
                    macs_per_sample=_macs_per_sample(module, examples))


# ----------------------------------------------------------------------------------------------- generate


def _generate_graph(model: nn.Module, model_dir: Path, settings, log) -> Graph:
    _check_fixed_size(model, model_dir, settings, ("style_dim", "config.size"), "StyleGAN2 generator",
                      "seeded random z")
    style_dim, size, psi = int(model.style_dim), int(model.config.size), settings.psi
    module, truncation = (_psi_generator(model, settings.seed, log) if psi else (model, None))
    names = ("z", "psi") if psi else ("z",)
    z_spec = {"name": "z", "shape": ["N", style_dim], "dtype": "float32", "range": None,
              "distribution": "standard normal", "seeding": Z_SEEDING}
    psi_spec = {"name": "psi", "shape": ["N"], "dtype": "float32", "range": [0.0, 1.0],
                "meaning": "truncation per sample; 1 = none"}
    image = {"name": "image", "shape": ["N", 3, size, size], "dtype": "float32", "range": [-1.0, 1.0],
             "clamp": True}
    cases = []
    for seeds in GENERATE_BATCHES:
        z = torch.from_numpy(seed_z(seeds, style_dim))
        for value in (PARITY_PSI if psi else (None,)):
            inputs = (z,) if value is None else (z, torch.full((len(seeds),), value))
            cases.append(Case(inputs, {"seeds": list(seeds), **({"psi": value} if psi else {})}))
    ranges = ", ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in GENERATE_BATCHES)
    text = (f"z batches of seeds {ranges} (batch {', '.join(str(len(s)) for s in GENERATE_BATCHES)})"
            + (f", each at psi {' and '.join(map(str, PARITY_PSI))}" if psi else "") + f"; {Z_SEEDING}")
    signature = _batch_signature(names, "image", cases[0].inputs)  # batch 2
    return Graph(task="generate", module=module.eval(), signature=signature,
                 input_specs=[z_spec, psi_spec][:len(names)], output_specs=[image],
                 keys={"style_dim": style_dim, "size": size, "truncation": truncation},
                 scale=None, cases=cases, parity_text=text, parity_short="seeded z", opt_case=cases[0],
                 compute=_sample_compute(model, module, signature.examples),
                 calibration=lambda: _z_feeds(style_dim, psi, settings.calib_count, settings.seed),
                 calibration_source=CALIBRATION_SOURCES["generate"])


def _psi_generator(model: nn.Module, seed: int, log) -> tuple[nn.Module, dict]:
    """The generator with truncation psi as a second input, and the manifest's ``truncation`` record."""
    from gankd.distill.models.archs.stylegan2 import PsiGenerator

    log(f"average latent for --psi: mapping of {LATENT_AVG_SAMPLES} z (seed {seed})")
    with torch.no_grad():
        latent_avg = model.mean_latent(n=LATENT_AVG_SAMPLES, seed=seed)
    truncation = {"psi_input": "psi", "latent_avg": {"samples": LATENT_AVG_SAMPLES, "seed": seed,
                                                      "by": "generator.mean_latent (mean of mapping(z))",
                                                      "norm": round(float(latent_avg.norm()), 6)},
                  "formula": "w = w_avg + psi * (w - w_avg); psi = 1: no truncation"}
    return PsiGenerator(model, latent_avg).eval(), truncation


def _z_feeds(style_dim: int, with_psi: bool, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random z (seeds seed*10000 + i), psi alternating 1.0 / 0.5 where psi is an input: what the model is fed."""
    feeds = []
    for i in range(count):
        feed = {"z": seed_z([seed * 10_000 + i], style_dim)}
        if with_psi:
            feed["psi"] = np.array([1.0 if i % 2 == 0 else 0.5], np.float32)
        feeds.append(feed)
    return feeds


def _generate_bench_inputs(manifest: dict, shape) -> dict[str, np.ndarray]:
    batch = shape[0]
    return {"z": seed_z(range(batch), shape[1]), "psi": np.full(batch, BENCH_PSI, np.float32)}


# ----------------------------------------------------------------------------------------------- face_sr


def face_scales(size: int) -> tuple[int, ...]:
    """The parity scales a size-S face can be degraded by (the down/up resize needs S divisible by the factor)."""
    return tuple(s for s in FACE_SCALES if size % s == 0)


def _face_graph(model: nn.Module, model_dir: Path, settings, log) -> Graph:
    from gankd.distill.data.faces import astronaut_face, gcfsr_lq

    _check_fixed_size(model, model_dir, settings, ("config.out_size",), "GCFSR", "the embedded face")
    if settings.psi:
        raise GankdError(f"--psi adds truncation to generate models; {model.gankd_config.arch!r} is a face_sr model")
    size = int(model.config.out_size)
    face = astronaut_face(size) * 2 - 1
    hr = torch.stack([face, face.flip(-1)])
    scales = face_scales(size)
    cases = [Case((gcfsr_lq(hr, s), torch.full((2,), float(s))), {"scale": s}) for s in scales]
    low, high = scales[0], scales[-1]
    mixed = torch.cat([gcfsr_lq(hr[:1], low), gcfsr_lq(hr[1:], high)])
    cases.append(Case((mixed, torch.tensor([low, high], dtype=torch.float32)), {"scale": [low, high]}))
    image = {"name": "image", "shape": ["N", 3, size, size], "dtype": "float32", "range": [-1.0, 1.0],
             "meaning": "the low-quality face, resized back to the output size"}
    scale = {"name": "scale", "shape": ["N"], "dtype": "float32", "range": list(FACE_SCALE_RANGE),
             "meaning": "upscaling factor the face was degraded by"}
    restored = {"name": "restored", "shape": ["N", 3, size, size], "dtype": "float32", "range": [-1.0, 1.0],
                "clamp": True}
    text = (f"the astronaut's face (scikit-image, gankd.distill.data.faces.astronaut_face) and its mirror image at "
            f"{size}x{size}, batch 2, degraded per scale {', '.join(map(str, scales))} ({FACE_DEGRADATION}); and "
            f"one batch with scales {low} and {high}")
    signature = _batch_signature(("image", "scale"), "restored", cases[0].inputs)
    return Graph(task="face_sr", module=model.eval(), signature=signature, input_specs=[image, scale],
                 output_specs=[restored], keys={"size": size, "scales": list(scales), "degradation": FACE_DEGRADATION},
                 scale=None, cases=cases, parity_text=text, parity_short="a real face", opt_case=cases[0],
                 compute=_sample_compute(model, model, signature.examples),
                 calibration=lambda: _face_feeds(size, scales, settings.calib_count, settings.seed),
                 calibration_source=CALIBRATION_SOURCES["face_sr"], by_scale=True)


def _face_feeds(size: int, scales: tuple[int, ...], count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Train faces of ``gankd.distill.data.faces`` (LFW), in a seeded order, degraded at the parity scales in turn."""
    from gankd.distill.data.faces import face_images, gcfsr_lq

    faces = face_images("train", size)
    order = np.random.default_rng(seed).permutation(len(faces))
    feeds = []
    for i in range(count):
        hr = faces[order[i % len(faces)]][None] * 2 - 1
        factor = scales[i % len(scales)]
        feeds.append({"image": gcfsr_lq(hr, factor).numpy(), "scale": np.array([factor], np.float32)})
    return feeds


def _face_bench_inputs(manifest: dict, shape) -> dict[str, np.ndarray]:
    from gankd.distill.data.faces import astronaut_face, gcfsr_lq

    batch = shape[0]
    face = astronaut_face(shape[-1])[None] * 2 - 1
    lq = gcfsr_lq(face, BENCH_FACE_SCALE).expand(batch, -1, -1, -1)
    return {"image": np.ascontiguousarray(lq.numpy()), "scale": np.full(batch, float(BENCH_FACE_SCALE), np.float32)}


# ----------------------------------------------------------------------------------------------- registry


TASKS: dict[str, Task] = {
    "sr": Task(_sr_graph, _sr_bench_inputs, "a real photo"),
    "generate": Task(_generate_graph, _generate_bench_inputs,
                     f"z of seeds 0..N-1 (psi {BENCH_PSI} where psi is an input)", size_key="style_dim"),
    "face_sr": Task(_face_graph, _face_bench_inputs, f"the astronaut's face degraded by x{BENCH_FACE_SCALE}",
                    size_key="size"),
}
