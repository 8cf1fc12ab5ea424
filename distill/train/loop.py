"""``gankd-distill run``: build a run from a recipe, run its stages, keep the best student, write the report.

The loop owns no networks or losses of its own: :mod:`.stages` says what each step does, :mod:`.run_state` what is
saved, :mod:`gankd.distill.report.run_report` what is written at the end. Batches are a function of (seed, stage,
epoch), so a resumed run replays the same batches and reaches the same losses; ``metrics.jsonl`` is cut back to the
resumed step.

Under torchrun (:mod:`.distributed`) every rank runs this same loop on its rows of each global batch, with the
trained modules under DDP; rank 0 alone writes the run folder and validates, and what ends a run is agreed by all.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from gankd.distill.data import crops
from gankd.distill.errors import GankdError, RunInterrupted
from gankd.distill.models.folder import ModelConfig, load_model, save_model
from gankd.distill.models.students import build_student, load_pretrained
from gankd.serve.errors import first_line
from gankd.serve.files import atomic_write

from . import distributed
from .adapters import FeatureMLP
from .distributed import SINGLE, Synced, World
from .recipe import MODES, Recipe, load_yaml, recipe_from_dict
from .run_state import Position, Progress, load_state, save_state
from .stages import Nets, NonFiniteLoss, Stage, needs_teacher_d, plan_stages, step

RESUME_MAY_CHANGE = {"max_minutes", "device", "threads"}
DISTRIBUTED_MODES = tuple(name for name, rules in MODES.items() if rules.under_torchrun)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GankdError("device: cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def _feature_channels(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad():
        return model.forward_features(*inputs)[-1].shape[1]


def generator_config(recipe: Recipe, teacher: nn.Module | None) -> ModelConfig:
    """The teacher's config, or for ``mode: train`` the config of the generator built from ``arch``."""
    if teacher is not None:
        return teacher.gankd_config
    from gankd.distill.models.registry import family_task, get_arch

    entry = get_arch(recipe.arch)
    if entry.kind != "generator":
        raise GankdError(f"arch: {recipe.arch} is a {entry.kind}, not a generator")
    task = family_task(entry.family)
    kwargs = dict(recipe.arch_kwargs)
    scale = kwargs.get("scale", kwargs.get("upscale", 4)) if task == "sr" else None
    return ModelConfig(arch=recipe.arch, kwargs=kwargs, task=task, scale=scale,
                       input_range=(0.0, 1.0) if task == "sr" else (-1.0, 1.0),
                       provenance={"trained_by": f"gankd-distill run {recipe.name} (mode train)"})


def task_kind(recipe: Recipe) -> str:
    """sr | face_sr | generate, without loading weights: from ``arch`` in mode train, else the teacher's config
    (sr when the teacher folder is not there yet, e.g. a dry run before the teacher run)."""
    from gankd.distill.models.folder import load_config
    from gankd.distill.models.registry import family_task

    if recipe.rules.makes_teacher:
        return generator_config(recipe, None).task
    try:
        return load_config(recipe.teacher).task
    except GankdError:
        return family_task(recipe.family)


def _clip_teacher(recipe: Recipe, device: torch.device, log):
    """KD-DLGAN's frozen CLIP image encoder and the text features of its labels (computed once)."""
    from . import kddlgan

    clip = kddlgan.CLIPImageTeacher.from_files(recipe.clip_model, recipe.clip_weights).to(device)
    labels = kddlgan.FACE_EXPRESSIONS if recipe.clip_labels == "face_expressions" else \
        tuple(label.strip() for label in recipe.clip_labels.split(",") if label.strip())
    text = clip.text_features(list(labels), template=recipe.clip_template).to(device)
    log(f"KD-DLGAN: CLIP {recipe.clip_model} from {recipe.clip_weights}; {len(labels)} texts "
        f"({recipe.clip_template.format(label=labels[0])!r}, ...)")
    return clip, text


def pretrained_model(recipe: Recipe, log) -> nn.Module | None:
    """The compact model an ``init: pretrained`` student starts from (``init_from``, or the wheel's default)."""
    if recipe.init != "pretrained":
        return None
    model = load_pretrained(recipe.init_from)
    log(f"warm start from {model.gankd_config.provenance.get('source', recipe.init_from)} "
        f"({model.gankd_config.arch} {model.gankd_config.kwargs})")
    return model


def build_nets(recipe: Recipe, teacher: nn.Module | None, task, device: torch.device, log
               ) -> tuple[Nets, ModelConfig, ModelConfig | None]:
    gconf = generator_config(recipe, teacher)
    if recipe.rules.makes_teacher:
        student, sconf = gconf.build(), gconf
    else:
        calib = task.example_inputs(8)[0].to(device) if task.kind == "sr" else None
        student, sconf = build_student(teacher if recipe.init == "teacher" else gconf, width=recipe.width,
                                       depth=recipe.depth, family=recipe.family, num_feat=recipe.num_feat,
                                       init=recipe.init, up_feat=recipe.up_feat, blocks=recipe.blocks,
                                       calib_lr=calib, pretrained=pretrained_model(recipe, log))
    if recipe.n_qat > 0:  # the fake quantization is off (the plain student) until the qat stage begins
        from . import qat

        student = qat.wrap(student, recipe.family)
    nets = Nets(teacher=teacher, student=student)
    if recipe.anchor_weight > 0:  # the warm start's weights, as built (a resume rebuilds them the same way)
        nets.anchor = [p.detach().clone().to(device) for p in student.parameters()]
    if recipe.rules.feature_adapter and recipe.feature_kd:
        example = task.example_inputs(1)
        nets.adapter = FeatureMLP(_feature_channels(student, example), _feature_channels(teacher, example))
    provenance = {"trained_by": f"gankd-distill run {recipe.name}"}
    dt_conf = None
    if needs_teacher_d(recipe):
        if recipe.teacher_d:
            nets.teacher_d = load_model(recipe.teacher_d)
            dt_conf = nets.teacher_d.gankd_config
            if dt_conf.kind != "discriminator":
                raise GankdError(f"teacher_d: {recipe.teacher_d} holds a {dt_conf.arch}, not a discriminator")
        else:
            dt_conf = task.discriminator_config(recipe, 1.0, provenance)
            nets.teacher_d = dt_conf.build()
            nets.teacher_d.gankd_config = dt_conf  # as load_model would: build_student(init="teacher") reads it
    if recipe.has_student_d:
        if dt_conf is not None:
            _, ds_conf = build_student(dt_conf, width=recipe.student_d_width)
            ds_conf = replace(ds_conf, provenance=provenance)
        else:
            ds_conf = task.discriminator_config(recipe, recipe.student_d_width, provenance)
        nets.student_d = ds_conf.build()
    kd_d = "teacher_d" if recipe.rules.makes_teacher else "student_d"  # the discriminator KD-DLGAN distils into
    if recipe.kd_dlgan:
        from .kddlgan import ProjectionHead

        if task.kind != "generate":
            raise GankdError("kd_dlgan: KD-DLGAN distils CLIP into the discriminator of a generation run "
                             f"(a StyleGAN2 generator), not a {task.kind} run")
        nets.clip, nets.text_features = _clip_teacher(recipe, device, log)
        with torch.no_grad():
            feat_dim = nets.get(kd_d).forward_with_features(task.real[:2])[1].shape[1]
        nets.d_head = ProjectionHead(feat_dim, nets.clip.embed_dim)
    if recipe.perceptual_weight > 0 and (recipe.perceptual_weights or recipe.perceptual_net == "inception"):
        from .perceptual import layer_weights, load_features

        layers = layer_weights(recipe.perceptual_net, recipe.perceptual_layers)
        nets.perceptual = load_features(recipe.perceptual_net, recipe.perceptual_weights, list(layers))
        nets.perceptual_layers = list(layers.values())
    elif recipe.perceptual_weight > 0 and task.kind == "sr":
        log("notice: no perceptual_weights (a local VGG19 file) given: the perceptual term is skipped "
            "(perceptual_net: inception uses the offline FID Inception instead)")
    betas = (recipe.beta1, recipe.beta2)
    nets.optimizers["g"] = torch.optim.Adam([
        {"params": list(student.parameters()), "lr": recipe.lr_g},
        *([{"params": list(nets.adapter.parameters()), "lr": recipe.lr_mlp}] if nets.adapter else []),
    ], betas=betas)
    if recipe.rules.online_teacher:  # OMGD trains the teacher G online, from the imported weights
        teacher.requires_grad_(True)
        nets.optimizers["teacher_g"] = torch.optim.Adam(teacher.parameters(), lr=recipe.lr_g, betas=betas)
    for name in ("teacher_d", "student_d"):
        module = getattr(nets, name)
        if module is not None:  # D^f trains with the discriminator it reads
            head = nets.d_head if nets.d_head is not None and name == kd_d else None
            params = list(module.parameters()) + (list(head.parameters()) if head is not None else [])
            nets.optimizers[name] = torch.optim.Adam(params, lr=recipe.lr_d, betas=betas)
    return nets, sconf, dt_conf


class EMA:
    """Exponential moving average of the student (what is validated and saved), with a warm-up so short runs work."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False) if decay > 0 else model

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self.decay == 0:
            return
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p, 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def reset_to(self, model: nn.Module) -> None:
        if self.decay > 0:
            self.model.load_state_dict(model.state_dict())


def step_seed(recipe: Recipe, pos: Position) -> int:
    """The seed of one step's randomness (latents, augmentation, KD-DLGAN gate): a function of where the step is."""
    return ((recipe.seed * 1_000_003 + pos.stage) * 10_007 + pos.epoch) * 100_003 + pos.batch


def epoch_order(recipe: Recipe, stage_index: int, epoch: int, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + stage_index * 10_007 + epoch)
    return crops.epoch_batches(n, recipe.batch_size, generator)


class StopFlag:
    """Ctrl-C and SIGTERM set a flag the loop reads between steps, so a step is never cut in half."""

    def __init__(self, echo_s: float = 0.0):
        self.signal_name: str | None = None
        self.echo_s = echo_s  # torchrun: a worker gets the terminal's Ctrl-C and torchrun's copy of it
        self.first_at = 0.0

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal_name and time.monotonic() - self.first_at > self.echo_s:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        if not self.signal_name:
            self.signal_name, self.first_at = signal.Signals(signum).name, time.monotonic()

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class MetricsLog:
    """``metrics.jsonl``: one line per logged step and per validation; cut back to the resumed step on resume."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            atomic_write(path, "".join(line + "\n" for line in kept))  # a kill now keeps the whole history
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class NoMetricsLog:
    """What ranks other than 0 log to: nothing (rank 0's losses are already the means over ranks)."""

    def write(self, record: dict) -> None:
        pass


def check_resume_compatible(run_dir: Path, recipe: Recipe) -> None:
    saved_path = run_dir / "config.resolved.yaml"
    if not saved_path.is_file():
        return
    saved = recipe_from_dict(load_yaml(saved_path.read_text(), str(saved_path)))
    for key, value in vars(recipe).items():
        if key not in RESUME_MAY_CHANGE and getattr(saved, key) != value:
            raise GankdError(f"--resume: {key} is {value!r} but the run was started with {getattr(saved, key)!r}")


def check_run_dir(recipe: Recipe, resume: bool) -> Path:
    """The run folder, checked (nothing is written: a run that fails its checks leaves no trace)."""
    run_dir = recipe.run_dir
    check_writable_folder(run_dir, "out_dir")
    if recipe.teacher_cache_dir and _overlap(run_dir, Path(recipe.teacher_cache_dir)):
        raise GankdError(f"out_dir {str(run_dir)!r} and teacher_cache_dir {recipe.teacher_cache_dir!r} overlap: a "
                         "run's folder and the shared teacher cache must be apart")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "config.resolved.yaml").is_file():
        raise GankdError(f"out_dir {str(run_dir)!r} is a folder of other files, not a gankd run folder: give an "
                         "empty or new folder")
    state = run_dir / "state" / "last.pt"
    if resume:
        if not state.is_file():
            raise GankdError(f"--resume: no saved state at {state}")
        check_state_readable(state, run_dir)
        check_resume_compatible(run_dir, recipe)
    elif state.exists():
        raise GankdError(f"run folder {run_dir} already holds a run: pass --resume to continue it, "
                         "or set out_dir / name to start another")
    return run_dir


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_writable_folder(folder: Path, what: str) -> None:
    """Fail now, in one line, if ``folder`` cannot be created and written (before any expensive work): a file is in
    the way, or its nearest existing parent refuses a new folder (a read-only mount, /proc). The probe folder it
    makes is removed at once."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise GankdError(f"{what} {str(folder)!r}: {str(existing)!r} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".gankd-write-test-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise GankdError(f"{what} {str(folder)!r} cannot be written: creating a folder in {str(existing)!r} "
                         f"failed ({exc.strerror or type(exc).__name__})") from None


def check_state_readable(state: Path, run_dir: Path) -> None:
    """Fail before anything loads when state/last.pt is damaged, saying what to do. mmap: the tensors are not read,
    only the file's structure (it is always written whole, tmp + rename, so damage means a copy or disk went bad)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(state, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or not a zip: one line with the way out
        detail = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
        raise GankdError(f"{state}: unreadable run state ({detail[:160]}); restore that file from a copy, or move "
                         f"{run_dir} away and start the run again without --resume") from None


def start_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """The run starts: its folder gets the resolved recipe (rewritten on --resume: resumable keys may change)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.resolved.yaml", recipe.to_yaml())  # --resume compares against it


def load_teacher(recipe: Recipe, device: torch.device) -> nn.Module | None:
    if recipe.rules.makes_teacher:
        return None
    teacher = load_model(recipe.teacher).to(device).requires_grad_(False)
    tconf = teacher.gankd_config
    if tconf.kind != "generator":
        raise GankdError(f"teacher {recipe.teacher} is a {tconf.arch} (a {tconf.kind}), not a generator")
    if tconf.task == "sr" and not tconf.scale:
        raise GankdError(f"teacher {recipe.teacher} is an SR generator without a scale")
    if hasattr(teacher, "set_feature_tap"):  # a foreign (spandrel) network: features only through a named tap
        teacher.set_feature_tap(recipe.teacher_feature)
    elif recipe.teacher_feature:
        raise GankdError(f"teacher_feature names a module of a foreign (spandrel) teacher; {recipe.teacher} is "
                         f"gankd's own {tconf.arch}, whose features are read without one")
    return teacher


def without_teacher_features(recipe: Recipe, log) -> Recipe:
    """Feature KD needs a teacher feature: a foreign (spandrel) teacher without a named ``teacher_feature`` has
    none, so it is switched off (logged; the resolved recipe and the report say so) instead of failing at the first
    step. Decided from the teacher's config.json alone, before the run folder is checked, so a resume agrees."""
    from gankd.distill.models.folder import load_config

    if recipe.rules.makes_teacher or not recipe.feature_kd or recipe.teacher_feature:
        return recipe
    try:
        tconf = load_config(recipe.teacher)
    except GankdError:
        return recipe  # load_teacher says what is wrong with the folder
    if tconf.arch != "spandrel":
        return recipe
    log(f"notice: feature KD is off: the teacher is a spandrel {tconf.kwargs['architecture']} network and no "
        "teacher_feature names the module to read (output KD, the discriminators and selection are unchanged)")
    return replace(recipe, feature_kd=False)


def run(recipe: Recipe, resume: bool = False, log=print) -> Path:
    """Run (or continue) ``recipe``; returns the run folder. Raises GankdError subclasses on bad input, NaN, Ctrl-C.

    Under torchrun (``WORLD_SIZE`` set) this process is one rank of the run: it joins the process group first and
    leaves it at the end; ranks other than 0 log nothing and write nothing."""
    if not distributed.under_torchrun():
        return _run(recipe, resume, log, SINGLE)
    world = distributed.start(recipe.device)
    try:
        return _run(recipe, resume, log if world.is_main else (lambda msg: None), world)
    finally:
        distributed.stop()


def _run(recipe: Recipe, resume: bool, log, world: World) -> Path:
    from .task_data import make_task

    if recipe.kd_dlgan and not (recipe.clip_model and recipe.clip_weights):
        from .kddlgan import MISSING_WEIGHTS

        raise GankdError(MISSING_WEIGHTS)
    recipe = without_teacher_features(recipe, log)
    run_dir = check_run_dir(recipe, resume)
    world.rows(recipe.batch_size)  # a global batch that does not split over the ranks stops the run here
    if world.distributed and not recipe.rules.under_torchrun:
        raise GankdError(f"mode: {recipe.mode} does not run under torchrun yet (only {', '.join(DISTRIBUTED_MODES)}"
                         ": its other networks' steps are not averaged over processes); run it in one process")
    if world.distributed and recipe.n_qat > 0:
        raise GankdError("n_qat: quantization-aware distillation does not run under torchrun yet; run it in one "
                         "process (or set n_qat: 0)")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    device = world.device if distributed.under_torchrun() else pick_device(recipe.device)
    if distributed.under_torchrun():
        log(f"torchrun: {world.size} process(es) on {device.type} ({'nccl' if device.type == 'cuda' else 'gloo'}), "
            f"global batch {recipe.batch_size} = {world.size} x {recipe.batch_size // world.size} per process")
    teacher = load_teacher(recipe, device)
    if recipe.reference:
        from gankd.distill.report.run_report import reference_models

        if teacher is None or teacher.gankd_config.task != "sr":
            raise GankdError("reference: reference models stand beside the student of an SR teacher")
        reference_models(recipe, teacher.gankd_config, device)  # a bad folder stops the run now, not at the report
    task = make_task(recipe, teacher, generator_config(recipe, teacher), device, log)
    nets, sconf, dt_conf = build_nets(recipe, teacher, task, device, log)
    for name in ("student", "adapter", "teacher_d", "student_d", "perceptual", "clip", "d_head"):
        if getattr(nets, name) is not None:
            setattr(nets, name, getattr(nets, name).to(device))
    stages = plan_stages(recipe, have_teacher_d=bool(recipe.teacher_d), task_kind=task.kind)
    ema = EMA(nets.student, recipe.ema_decay)
    modules = {"student": nets.student, "student_ema": ema.model if recipe.ema_decay > 0 else None,
               "adapter": nets.adapter, "teacher_d": nets.teacher_d, "student_d": nets.student_d,
               "d_head": nets.d_head, "teacher": nets.teacher if recipe.rules.online_teacher else None}
    state_path = run_dir / "state" / "last.pt"
    progress = load_state(state_path, modules, nets.optimizers) if resume else Progress()
    if world.distributed:
        trained = {name for stage in stages for name in stage.trains} | ({"d_head"} if nets.d_head else set())
        nets.synced = {name: Synced(getattr(nets, name), world) for name in sorted(trained)}
        world.barrier()  # every rank has read the run folder before rank 0 rewrites config.resolved.yaml
    if world.is_main:
        start_run_dir(run_dir, recipe)  # every check passed
    if resume and progress.position.stage >= len(stages):
        log(f"resumed at step {progress.position.step}: the run had finished; rewriting its report")
    elif resume:
        log(f"resumed at step {progress.position.step} ({stages[progress.position.stage].name} "
            f"epoch {progress.position.epoch} batch {progress.position.batch})")
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", progress.position.step if resume else None) \
        if world.is_main else NoMetricsLog()
    loop = Loop(recipe=recipe, run_dir=run_dir, stages=stages, nets=nets, ema=ema, modules=modules, task=task,
                metrics_log=metrics_log, progress=progress, device=device, log=log, student_config=sconf,
                teacher_d_config=dt_conf, world=world)
    loop.run()
    if not world.is_main:
        return run_dir
    distributed.stop()  # the report is rank 0's alone: nothing in it may wait on the other ranks
    from gankd.distill.report.run_report import write_report

    write_report(run_dir, recipe, loop, log)
    return run_dir


class Loop:
    """The training loop over planned stages, with checkpoints, validation, budget and signal handling."""

    def __init__(self, *, recipe, run_dir, stages, nets, ema, modules, task, metrics_log, progress, device,
                 log, student_config, teacher_d_config, world: World = SINGLE):
        self.world = world
        self.recipe, self.run_dir, self.stages, self.nets, self.ema = recipe, run_dir, stages, nets, ema
        self.modules, self.task, self.metrics_log = modules, task, metrics_log
        # mode train makes a teacher (and its D) for later runs; every other mode a student
        self.g_dir = run_dir / ("teacher" if recipe.rules.makes_teacher else "student")
        self.progress, self.device, self.log = progress, device, log
        self.student_config, self.teacher_d_config = student_config, teacher_d_config
        self.state_path = run_dir / "state" / "last.pt"
        self.steps_per_epoch = recipe.steps_per_epoch or max(1, len(task) // recipe.batch_size)
        self.started = time.monotonic()
        self.elapsed_before = progress.elapsed_s
        self.tb = self._tensorboard() if world.is_main else None
        self.saved_step = progress.position.step if self.state_path.exists() else None  # what last.pt holds

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("notice: tensorboard is not installed: no tb/ scalars (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=self.progress.position.step + 1)

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def save(self) -> None:
        self.progress.elapsed_s = self.elapsed_s
        if self.world.is_main:
            save_state(self.state_path, self.modules, self.nets.optimizers, self.progress)
        self.saved_step = self.progress.position.step

    def total_steps(self) -> int:
        return sum(s.epochs for s in self.stages) * self.steps_per_epoch

    def run(self) -> None:
        from tqdm import tqdm

        pos = self.progress.position
        bar = tqdm(total=self.total_steps(), initial=pos.step, desc="distill", unit="step", dynamic_ncols=True,
                   disable=None if self.world.is_main else True)
        try:
            with StopFlag(echo_s=2.0 if self.world.distributed else 0.0) as stop, self.lost_rank(pos):
                while pos.stage < len(self.stages):
                    stage = self.stages[pos.stage]
                    if pos.epoch == 0 and pos.batch == 0:
                        self.begin_stage(stage)
                    outcome = self.run_epoch(stage, pos, stop, bar)
                    if outcome == "stop":
                        return
                    if outcome == "skip":  # over budget: on to the qat stage (pos already points at it)
                        continue
                    pos.epoch, pos.batch = pos.epoch + 1, 0
                    if pos.epoch >= stage.epochs:
                        self.end_stage(stage)
                        pos.stage, pos.epoch = pos.stage + 1, 0
                    self.save()
        finally:
            bar.close()
            if self.tb:
                self.tb.close()

    @contextlib.contextmanager
    def lost_rank(self, pos: Position):
        """torchrun: a collective that fails (a rank was killed, a node went away) ends this rank with one line."""
        try:
            yield
        except RuntimeError as exc:
            if not self.world.distributed or isinstance(exc, GankdError):
                raise
            if not self.world.is_main:  # rank 0 writes, and may have died while it wrote
                kept = "the last state/last.pt that rank 0 completed is kept"
            else:
                kept = f"state/last.pt (step {self.saved_step}) is kept" if self.saved_step is not None \
                    else "nothing was saved yet"
            raise GankdError(distributed.lost_rank_message(self.world, f"step {pos.step + 1}", exc, kept)) from None

    def batch(self, indices: torch.Tensor, pos: Position):
        """This process's part of the global batch ``indices`` (all of it without torchrun)."""
        seed, step_no = step_seed(self.recipe, pos), pos.step + 1
        if not self.world.distributed:
            return self.task.batch(indices, seed, step_no)
        rows, rank, size = self.world.rows(len(indices)), self.world.rank, self.world.size
        if self.task.kind == "generate":  # latents are drawn for the whole global batch from the step seed
            return self.task.batch(indices, seed, step_no).rows(rows, rank, size)
        return replace(self.task.batch(indices[rows], seed, step_no), shard=(rank, size))  # per-crop data

    def run_epoch(self, stage: Stage, pos: Position, stop: StopFlag, bar) -> str | None:
        order = epoch_order(self.recipe, pos.stage, pos.epoch, len(self.task))
        while pos.batch < self.steps_per_epoch:
            indices = order[pos.batch % len(order)]
            batch = self.batch(indices, pos)
            where = f"{stage.name} step {pos.step + 1}"
            for name in ("student", "adapter", "teacher_d", "student_d", "d_head"):
                module = getattr(self.nets, name)
                if module is not None:  # frozen ones in eval: no spectral-norm power iterations on them
                    module.train(name in stage.trains)
            try:
                logs = step(stage, self.nets, batch, self.recipe, where,
                            self.world if self.world.distributed else None)
            except NonFiniteLoss as exc:
                kept = f"state/last.pt (step {self.saved_step}) and student/ are kept" \
                    if self.saved_step is not None else "nothing was saved yet"
                raise NonFiniteLoss(f"{exc}; the run stopped: {kept}") from None
            pos.step, pos.batch = pos.step + 1, pos.batch + 1
            if stage.g_target:
                self.ema.update(self.nets.student, pos.step)
            bar.update(1)
            self.log_step(stage, pos.step, logs)
            signal_name = stop.signal_name
            over_budget = self.recipe.max_minutes is not None and self.elapsed_s > 60 * self.recipe.max_minutes \
                and not stage.fake_quant  # the budget bounds the stages before qat, which runs its n_qat epochs
            if self.world.distributed:  # every rank stops after the same step
                got_signal, over_budget = self.world.any(bool(signal_name), over_budget)
                signal_name = (signal_name or "a signal to another process") if got_signal else None
            if signal_name:
                self.save()
                raise RunInterrupted(f"{signal_name} at step {pos.step}: state saved to {self.state_path}; "
                                     "continue with --resume")
            if over_budget:
                qat_next = self.stages[-1].fake_quant
                self.log(f"max_minutes={self.recipe.max_minutes} reached at step {pos.step}: validating and "
                         + ("going on to the qat stage" if qat_next else "stopping"))
                if stage.g_target:
                    self.validate(stage, pos.step)
                if qat_next:
                    pos.stage, pos.epoch, pos.batch = len(self.stages) - 1, 0, 0
                self.save()
                return "skip" if qat_next else "stop"
            if self.recipe.val_every and stage.g_target and pos.step % self.recipe.val_every == 0:
                self.validate(stage, pos.step)
            if pos.batch < self.steps_per_epoch and pos.step % self.recipe.checkpoint_every == 0:
                self.save()
        if stage.g_target and not (self.recipe.val_every and pos.step % self.recipe.val_every == 0):
            self.validate(stage, pos.step)
        return None

    def log_step(self, stage: Stage, step_no: int, logs: dict[str, float]) -> None:
        self.metrics_log.write({"step": step_no, "stage": stage.name, **logs})
        if self.tb and step_no % self.recipe.log_every == 0:
            for name, value in logs.items():
                self.tb.add_scalar(f"{stage.name}/{name}", value, step_no)

    def begin_stage(self, stage: Stage) -> None:
        self.log(f"{stage.name}: {stage.epochs} epoch(s) x {self.steps_per_epoch} steps; "
                 f"trains {', '.join(stage.trains)}")
        for action in stage.begin:
            self.ACTIONS[action](self, stage)

    def end_stage(self, stage: Stage) -> None:
        for action in stage.end:
            self.ACTIONS[action](self, stage)

    def init_student_d_from_teacher_d(self, stage: Stage) -> None:
        from gankd.distill.models.students import build_student as _build

        d_s, _ = _build(self.nets.teacher_d, width=self.recipe.student_d_width, init="teacher")
        self.nets.student_d.load_state_dict(d_s.state_dict())
        self.log("student discriminator initialised from the teacher discriminator by channel selection")

    def begin_qat(self, stage: Stage) -> None:
        """QAT fine-tunes the fp32 student selected so far (``student/``; a run of QAT alone first validates and
        keeps its warm start there), from activation ranges set on the train pool. Its own selection, among the
        fake-quantized validations (the INT8 file's quality), writes ``student/int8_qat/``."""
        from . import qat

        student = self.nets.student
        if not (self.g_dir / "config.json").exists():
            self.log("qat: no fp32 student selected yet: validating the warm start as the fp32 student")
            self.validate(Stage("start", 0, g_target="teacher"), self.progress.position.step)
        if (self.g_dir / "config.json").exists():
            best = load_model(self.g_dir, device=self.device)
            student.model.load_state_dict(best.state_dict())
        inputs = self.task.example_inputs(qat.CALIBRATION_BATCHES * self.recipe.batch_size)[0].to(self.device)
        qat.begin(student, inputs.split(self.recipe.batch_size))
        self.ema.reset_to(student)
        self.log(f"qat: INT8 fake quantization on ({len(student.quantized)} convs, {len(student.fq)} activations; "
                 f"ranges from {len(inputs)} train crops), from the fp32 student of step {self.progress.best_step}; "
                 f"its best goes to {self.g_dir / qat.FOLDER}")

    def save_teacher_d(self, stage: Stage) -> None:
        config = replace(self.teacher_d_config, provenance={
            **self.teacher_d_config.provenance, "stage1_steps": self.progress.position.step,
            "teacher": str(self.g_dir if self.recipe.rules.makes_teacher else self.recipe.teacher)})
        if self.world.is_main:
            save_model(self.run_dir / "teacher_d", self.nets.teacher_d, config)
        self.log(f"{stage.name} done: teacher discriminator saved to {self.run_dir / 'teacher_d'}")

    # what a Stage's ``begin`` / ``end`` names: the loop's side of a stage (stages.plan_stages sets them)
    ACTIONS = {"init_student_d": init_student_d_from_teacher_d, "begin_qat": begin_qat,
               "save_teacher_d": save_teacher_d}

    def validate(self, stage: Stage, step_no: int) -> None:
        # torchrun: rank 0 validates, every rank gets its scores, so selection is the same everywhere
        scores = self.world.broadcast(self.task.validate(self.ema.model) if self.world.is_main else None)
        metric = self.task.metric
        score = self.task.score(scores)
        record = {"step": step_no, "stage": stage.name, "val": scores}
        self.metrics_log.write(record)
        self.progress.history.append(record)
        if self.tb:
            for name, value in scores.items():
                self.tb.add_scalar(f"val/{name}", value, step_no)
        if not math.isfinite(score):
            self.log(f"validation at step {step_no}: {metric} is {score}; not kept")
            return
        if stage.fake_quant:  # its own selection: fake-quantized scores are the INT8 file's, not the fp32's
            if self.task.better(score, self.progress.qat_best_score):
                self.progress.qat_best_score, self.progress.qat_best_step = score, step_no
                if self.world.is_main:
                    self.save_student(step_no, scores, qat=True)
            best = (self.progress.qat_best_score, self.progress.qat_best_step, "INT8 ")
        else:
            if self.beats_best(scores, score):
                self.progress.best_score, self.progress.best_step = score, step_no
                if self.world.is_main:
                    self.save_student(step_no, scores)
            best = (self.progress.best_score, self.progress.best_step, "")
        self.log(f"step {step_no} {stage.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                 + f" (best {best[2]}{metric} {best[0]:.3f} at step {best[1]})")

    def beats_best(self, scores: dict[str, float], score: float) -> bool:
        """Is this validation the new best? By the task's metric, except that with ``select_min_vol`` a student at
        least that sharp (VoL/teacher) beats any blurrier one: PSNR alone rewards blur."""
        floor = self.recipe.select_min_vol
        if floor <= 0 or "vol_teacher" not in scores or self.progress.best_step is None:
            return self.task.better(score, self.progress.best_score)
        best = next((r["val"] for r in reversed(self.progress.history)
                     if r["step"] == self.progress.best_step and "val" in r), {})
        sharp, best_sharp = scores["vol_teacher"] >= floor, best.get("vol_teacher", 0.0) >= floor
        if sharp != best_sharp:
            return sharp
        return self.task.better(score, self.progress.best_score)

    def save_student(self, step_no: int, scores: dict[str, float], qat: bool = False) -> None:
        """The EMA student into ``student/``, or during the qat stage (``qat``) into ``student/int8_qat/`` with its
        learned ranges."""
        from .qat import FOLDER, unwrap

        model, qat_record = unwrap(self.ema.model)
        if qat != bool(qat_record):
            raise GankdError("internal: a qat-stage save needs the fake quantization on, any other save off")
        config = replace(self.student_config, provenance={
            **self.student_config.provenance, "run": self.recipe.name, "step": step_no,
            "selected_by": self.task.metric, "validation": scores,
            "ema_decay": self.recipe.ema_decay, **({"teacher_dir": self.recipe.teacher} if self.recipe.teacher else {}),
            **({"int8_qat": qat_record} if qat_record else {})})
        save_model(self.g_dir / FOLDER if qat else self.g_dir, model, config)
