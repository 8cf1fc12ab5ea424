"""What gets exported for the tasks beyond image-to-image SR: ``generate`` (StyleGAN2) and ``face_sr`` (GCFSR).

A :class:`Graph` names the module to export, its inputs (names, example tensors, which axes are the batch), the
manifest's input/output specs and task keys, the parity cases and the INT8 calibration feeds. The exporter runs
any Graph the same way (``exporter.export_model``); the SR path keeps its own image-size-dynamic code.

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
    ``gankd.distill.faces.gcfsr_lq``), plus one batch mixing the smallest and largest scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError

TASKS = ("generate", "face_sr")
LATENT_AVG_SAMPLES = 4096
Z_SEEDING = "z of seed s = numpy.random.default_rng(s).standard_normal(style_dim, dtype=float32); a batch stacks seeds"
GENERATE_BATCHES: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3, 4), (5,))
PARITY_PSI = (0.5, 1.0)
FACE_SCALES = (4, 8, 16, 32, 64)
FACE_SCALE_RANGE = (4.0, 64.0)
CALIBRATION_SOURCES = {"generate": "seeded random z (psi 1.0 / 0.5 alternating where psi is an input)",
                       "face_sr": "LFW train faces (gankd.distill.faces), degraded at the parity scales in turn"}
FACE_DEGRADATION = ("HR face resized to S; LQ = MATLAB-style bicubic imresize down by the factor and back up to S, "
                    "rounded to 8 bits, in [-1, 1] (GCFSR's inference and FFHQ_control_Dataset; "
                    "gankd.distill.faces.gcfsr_lq)")


@dataclass
class Case:
    """One parity input: a batch for every graph input, and what identifies it in the manifest."""

    inputs: tuple[torch.Tensor, ...]
    info: dict


@dataclass
class Graph:
    task: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_name: str
    examples: tuple[torch.Tensor, ...]  # batch 2: torch.export specialises a size-1 dimension
    inputs: list[dict]  # manifest specs
    outputs: list[dict]
    keys: dict  # task keys of the manifest (style_dim, size, truncation, ...)
    cases: list[Case]
    parity_text: str
    output_range: tuple[float, float] = (-1.0, 1.0)
    batch_axes: dict = field(default_factory=dict)  # input name -> the batch axis (always 0 here)

    def calibration(self, count: int, seed: int) -> list[dict[str, np.ndarray]]:
        return _CALIBRATION[self.task](self, count, seed)


def build_graph(model: nn.Module, config, psi: bool, seed: int, log) -> Graph:
    if config.task == "generate":
        return _generate_graph(model, psi, seed, log)
    if psi:
        raise GankdError(f"--psi adds truncation to generate models; {config.arch!r} is a {config.task} model")
    return _face_graph(model)


# ----------------------------------------------------------------------------------------------- generate


def seed_z(seeds, style_dim: int) -> np.ndarray:
    """N×style_dim float32: one standard-normal z per seed (:data:`Z_SEEDING`)."""
    return np.stack([np.random.default_rng(int(s)).standard_normal(style_dim, dtype=np.float32) for s in seeds])


def _generate_graph(model: nn.Module, psi: bool, seed: int, log) -> Graph:
    style_dim, size = int(model.style_dim), int(model.config.size)
    truncation = None
    module = model
    if psi:
        from gankd.distill.archs.stylegan2 import PsiGenerator

        log(f"average latent for --psi: mapping of {LATENT_AVG_SAMPLES} z (seed {seed})")
        with torch.no_grad():
            latent_avg = model.mean_latent(n=LATENT_AVG_SAMPLES, seed=seed)
        module = PsiGenerator(model, latent_avg).eval()
        truncation = {"psi_input": "psi", "latent_avg": {"samples": LATENT_AVG_SAMPLES, "seed": seed,
                                                          "by": "generator.mean_latent (mean of mapping(z))",
                                                          "norm": round(float(latent_avg.norm()), 6)},
                      "formula": "w = w_avg + psi * (w - w_avg); psi = 1: no truncation"}
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
    return Graph(task="generate", module=module.eval(), input_names=names, output_name="image",
                 examples=cases[0].inputs,  # batch 2
                 inputs=[z_spec, psi_spec][:len(names)], outputs=[image],
                 keys={"style_dim": style_dim, "size": size, "truncation": truncation},
                 cases=cases, parity_text=text, batch_axes={n: 0 for n in names})


def _generate_calibration(graph: Graph, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Random z (seeds seed*10000 + i), psi alternating 1.0 / 0.5 where psi is an input: what the model is fed."""
    style_dim = graph.keys["style_dim"]
    feeds = []
    for i in range(count):
        feed = {"z": seed_z([seed * 10_000 + i], style_dim)}
        if "psi" in graph.input_names:
            feed["psi"] = np.array([1.0 if i % 2 == 0 else 0.5], np.float32)
        feeds.append(feed)
    return feeds


# ----------------------------------------------------------------------------------------------- face_sr


def face_scales(size: int) -> tuple[int, ...]:
    """The parity scales a size-S face can be degraded by (the down/up resize needs S divisible by the factor)."""
    return tuple(s for s in FACE_SCALES if size % s == 0)


def _face_graph(model: nn.Module) -> Graph:
    from gankd.distill.faces import astronaut_face, gcfsr_lq

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
    text = (f"the astronaut's face (scikit-image, gankd.distill.faces.astronaut_face) and its mirror image at "
            f"{size}x{size}, batch 2, degraded per scale {', '.join(map(str, scales))} ({FACE_DEGRADATION}); and "
            f"one batch with scales {low} and {high}")
    return Graph(task="face_sr", module=model.eval(), input_names=("image", "scale"), output_name="restored",
                 examples=cases[0].inputs, inputs=[image, scale], outputs=[restored],
                 keys={"size": size, "scales": list(scales), "degradation": FACE_DEGRADATION},
                 cases=cases, parity_text=text, batch_axes={"image": 0, "scale": 0})


def _face_calibration(graph: Graph, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Train faces of ``gankd.distill.faces`` (LFW), in a seeded order, degraded at the parity scales in turn."""
    from gankd.distill.faces import face_images, gcfsr_lq

    faces = face_images("train", graph.keys["size"])
    order = np.random.default_rng(seed).permutation(len(faces))
    scales = graph.keys["scales"]
    feeds = []
    for i in range(count):
        hr = faces[order[i % len(faces)]][None] * 2 - 1
        factor = scales[i % len(scales)]
        feeds.append({"image": gcfsr_lq(hr, factor).numpy(), "scale": np.array([factor], np.float32)})
    return feeds


_CALIBRATION = {"generate": _generate_calibration, "face_sr": _face_calibration}


# ----------------------------------------------------------------------------------------------- compute


def macs_per_sample(graph: Graph) -> int:
    """MACs of one sample (convolutions and matrix products, FlopCounterMode: modulated convs count too)."""
    from gankd.distill.profile import count_macs

    return count_macs(graph.module, tuple(tuple(x[:1].shape) for x in graph.examples))
