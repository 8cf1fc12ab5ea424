"""SDAKD stages as data, and one step function that runs any of them.

A :class:`Stage` names what its generator step optimises (target and loss terms, rows of the one term table in
:mod:`.objective`), which discriminator its discriminator step trains and how, its adversarial loss, and the loop
actions at its start and end. :func:`plan_stages` turns a recipe into the list of stages:

- **stage1** — D_T learns, adversarially, to tell real HR crops from the frozen teacher's outputs (only when no
  trained teacher discriminator is given and a later stage needs one).
- **stage2** — supervised only: G_S minimises L_sup + λ1·L_MLP against the teacher's outputs and last backbone map;
  D_S minimises L2(D_S(x), D_T(x)) on real crops, teacher outputs and student outputs.
- **stage3** — G_S adds λ2·L_adv against D_S; D_S trains adversarially (real HR vs student outputs).
- **qat** (``n_qat`` > 0) — the supervised terms again, with the INT8 export's fake quantization in the student's
  forward pass (:mod:`.qat`), from the student selected so far.

``mode: scratch`` (the paper's (C,C) and (C,1) baselines) trains the same small GAN on ground truth without KD:
stage 2 supervised on HR, stage 3 adding the adversarial term against a randomly initialised D.

``mode: omgd | dcd | dcd_modified`` (the other baselines of SDAKD's Tables 1–2; their terms in :mod:`.baselines`):
OMGD's stage trains the teacher G online first (``t_terms``), DCD's generator step adds D_T's feature maps as the KD
target, and ``d_fake: "both"`` trains D_T against the teacher's and the student's outputs (modified DCD).

``mode: train`` is stage 1 for families without a published teacher pair: G and D trained from scratch on real
images (the StyleGAN2 teacher on the 100-shot faces), G in the generator slot and D as the teacher discriminator, so
the run leaves a teacher and its D for later distillation. DiffAugment (``recipe.diffaugment``) transforms every
image a discriminator sees, in both steps; KD-DLGAN (``recipe.kd_dlgan``) adds CLIP distillation to the
discriminator step (AGKD, CGKD match) and the CGKD diversity term to the generator step (the term is a function of
G(z) alone: in L_D it would be a constant for D, so the generator step is the only place it acts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from gankd.distill.errors import GankdError

from .objective import DStep, Step, discriminator_objective, objective
from .recipe import Recipe


class NonFiniteLoss(GankdError):
    """A loss became NaN or Inf: the step is not applied and the run stops with the last good checkpoint kept."""


@dataclass(frozen=True)
class Stage:
    """One stage: what its generator step optimises (target and the names of its terms in
    :mod:`.objective`), which discriminator its discriminator step trains and how, the adversarial loss of both,
    and what the loop does when the stage begins and ends (:attr:`Loop.ACTIONS <gankd.distill.train.loop.Loop>`)."""

    name: str
    epochs: int
    g_target: str | None = None  # "teacher" | "gt" | "none" (adversarial only); None: no generator step
    g_terms: tuple[str, ...] = ()  # names in objective.TERMS
    adv_net: str | None = None  # the discriminator the generator's adversarial term uses
    d_net: str | None = None  # the discriminator this stage trains
    d_mode: str | None = None  # "adv" (real HR vs fake) | "distill" (match D_T's outputs)
    d_fake: str = "student"  # what "fake" is in an adversarial D step: "student" | "teacher" | "both" outputs
    t_terms: tuple[str, ...] = ()  # OMGD: the online teacher G's own step, before the student's ("l1", "adv", ...)
    adversarial: str | None = None  # the adversarial loss of its G and D steps (None: the recipe's adversarial)
    t_adversarial: str = "vanilla"  # OMGD: the online teacher's own adversarial loss
    begin: tuple[str, ...] = ()  # loop actions when the stage starts ("init_student_d", "begin_qat")
    end: tuple[str, ...] = ()  # loop actions when it has run its epochs ("save_teacher_d")
    fake_quant: bool = False  # QAT: INT8 fake quantization on; its own selection, outside max_minutes

    @property
    def trains(self) -> tuple[str, ...]:
        """Names of the modules whose parameters this stage updates."""
        names = ("teacher",) if self.t_terms else ()
        names += ("student",) if self.g_target else ()
        names += ("adapter",) if "mlp" in self.g_terms or "cd" in self.g_terms else ()
        return names + ((self.d_net,) if self.d_net else ())


def needs_teacher_d(recipe: Recipe) -> bool:
    if recipe.rules.makes_teacher or recipe.rules.baseline:
        return True
    if recipe.rules.ground_truth or recipe.discriminator == "none":
        return False
    distills_d = recipe.n2 > 0 and recipe.discriminator == "student"
    return distills_d or recipe.discriminator == "teacher" or recipe.init == "teacher"


def plan_stages(recipe: Recipe, have_teacher_d: bool, task_kind: str = "sr") -> list[Stage]:
    """The recipe's stages, then ``qat`` (``n_qat`` epochs): the supervised terms of the run's target with the
    INT8 export's fake quantization on (:mod:`.qat`); no discriminator, so the quantization is all that changes."""
    stages = _plan_stages(recipe, have_teacher_d, task_kind)
    if recipe.n_qat > 0 and not recipe.rules.makes_teacher:
        target = "gt" if recipe.rules.ground_truth else "teacher"
        stages.append(Stage("qat", recipe.n_qat, g_target=target, g_terms=supervised_terms(recipe),
                            begin=("begin_qat",), fake_quant=True))
    return [replace(s, adversarial=s.adversarial or recipe.adversarial, t_adversarial=recipe.teacher_adversarial)
            for s in stages]


def supervised_terms(recipe: Recipe) -> tuple[str, ...]:
    """The terms of every supervised generator step (each weighted by its recipe key; a weight of 0 skips it)."""
    return (recipe.sup_loss, "perceptual", "fft", "gv", "anchor")


def _plan_stages(recipe: Recipe, have_teacher_d: bool, task_kind: str) -> list[Stage]:
    sup = supervised_terms(recipe)
    div = ("div",) if recipe.kd_dlgan else ()
    if recipe.rules.makes_teacher:  # generation: adversarial only; restoration: supervised on the GT + adversarial
        target, terms = ("none", ()) if task_kind == "generate" else ("gt", sup)
        return [Stage("stage1", recipe.n1, g_target=target, g_terms=terms + ("adv",) + div, adv_net="teacher_d",
                      d_net="teacher_d", d_mode="adv", end=("save_teacher_d",), adversarial=recipe.teacher_adversarial)]
    if recipe.rules.baseline:
        return _baseline_stages(recipe, have_teacher_d, task_kind)
    if recipe.rules.ground_truth:
        return [Stage("stage2", recipe.n2, g_target="gt", g_terms=sup),
                Stage("stage3", recipe.n3, g_target="gt", g_terms=sup + ("adv",), adv_net="student_d",
                      d_net="student_d", d_mode="adv")]
    stages = []
    if needs_teacher_d(recipe) and not have_teacher_d:
        if recipe.n1 == 0:
            raise GankdError("n1 is 0 but no teacher_d is given: the teacher discriminator must be trained "
                             "(set n1 > 0) or loaded (set teacher_d)")
        stages.append(Stage("stage1", recipe.n1, d_net="teacher_d", d_mode="adv", d_fake="teacher",
                            end=("save_teacher_d",), adversarial=recipe.teacher_adversarial))
    kd = sup + (("mlp",) if recipe.feature_kd else ())
    if recipe.discriminator == "none":
        return [s for s in [Stage("stage2", recipe.n2, g_target="teacher", g_terms=kd)] if s.epochs > 0]
    adversary = "student_d" if recipe.discriminator == "student" else "teacher_d"
    stage2_d = {"d_net": "student_d", "d_mode": "distill"} if recipe.discriminator == "student" else {}
    if recipe.discriminator == "student" and recipe.init == "teacher":  # D_S by channel selection from D_T
        stage2_d["begin"] = ("init_student_d",)
    stages.append(Stage("stage2", recipe.n2, g_target="teacher", g_terms=kd, **stage2_d))
    stages.append(Stage("stage3", recipe.n3, g_target="teacher", g_terms=kd + ("adv",) + div, adv_net=adversary,
                        d_net=adversary, d_mode="adv"))
    return [s for s in stages if s.epochs > 0]


def _baseline_stages(recipe: Recipe, have_teacher_d: bool, task_kind: str) -> list[Stage]:
    """OMGD, DCD and modified DCD (:mod:`.baselines`), after the same stage 1 as SDAKD."""
    stages = []
    if not have_teacher_d:
        if recipe.n1 == 0:
            raise GankdError(f"n1 is 0 but no teacher_d is given: mode {recipe.mode} needs the teacher "
                             "discriminator trained (set n1 > 0) or loaded (set teacher_d)")
        stages.append(Stage("stage1", recipe.n1, d_net="teacher_d", d_mode="adv", d_fake="teacher",
                            end=("save_teacher_d",), adversarial=recipe.teacher_adversarial))
    sup = supervised_terms(recipe)
    if recipe.rules.online_teacher:  # OMGD, one online stage: teacher G, then the student by KD only, then D_T
        kd = sup + ("ssim", "style") + (("cd",) if recipe.feature_kd else ())
        teacher = ("adv",) if task_kind == "generate" else (recipe.sup_loss, "perceptual", "adv")
        stages.append(Stage("online", recipe.n2 + recipe.n3, g_target="teacher", g_terms=kd, t_terms=teacher,
                            d_net="teacher_d", d_mode="adv", d_fake="teacher"))
    else:
        fake = "both" if recipe.mode == "dcd_modified" else "teacher"
        kd = sup + ("dcd",)
        stages += [Stage("stage2", recipe.n2, g_target="teacher", g_terms=kd, d_net="teacher_d", d_mode="adv",
                         d_fake=fake),
                   Stage("stage3", recipe.n3, g_target="teacher", g_terms=kd + ("adv",), adv_net="teacher_d",
                         d_net="teacher_d", d_mode="adv", d_fake=fake)]
    return [s for s in stages if s.epochs > 0]


@dataclass
class Nets:
    """Every module of a run; the teacher is frozen (None when a run trains a GAN from scratch), ``perceptual`` (the
    frozen feature network, :mod:`.perceptual`) is None when the perceptual term is skipped, ``clip`` (frozen) and
    ``d_head`` (D^f, trained with the discriminator) exist in KD-DLGAN runs."""

    teacher: nn.Module | None
    student: nn.Module
    adapter: nn.Module | None = None
    teacher_d: nn.Module | None = None
    student_d: nn.Module | None = None
    perceptual: nn.Module | None = None
    perceptual_layers: list[float] = field(default_factory=list)  # its layer weights, in its output order
    clip: nn.Module | None = None
    d_head: nn.Module | None = None
    text_features: torch.Tensor | None = None
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    synced: dict[str, object] = field(default_factory=dict)  # torchrun: trained modules under DDP, by name
    anchor: list[torch.Tensor] | None = None  # the student's weights at its warm start (anchor_weight's L2-SP term)

    def get(self, name: str) -> nn.Module:
        module = getattr(self, name)
        if module is None:
            raise GankdError(f"this stage needs the {name} module, which the run does not have")
        return module

    def trained(self, name: str):
        """``name`` as the step that trains it calls it: under torchrun its DDP wrapper (gradients averaged over
        ranks), else the module. Frozen uses (an adversary in G's step, D_T's targets) call :meth:`get`."""
        return self.synced.get(name) or self.get(name)


@dataclass
class Batch:
    """One step's data. ``inputs`` are what G takes: (lr,) for sr, (lq, scale) for face_sr, (z,) for generate;
    ``hr`` are the real images a discriminator sees; ``seed`` drives this step's augmentation and KD-DLGAN gate
    (replayed on resume); ``step`` clocks lazy regularisation."""

    inputs: tuple[torch.Tensor, ...]
    hr: torch.Tensor
    teacher_out: torch.Tensor | None
    teacher_feat: torch.Tensor | None
    seed: int = 0
    step: int = 1
    shard: tuple[int, int] | None = None  # torchrun: (rank, world), this batch is rows rank::world of the global one

    @property
    def lr(self) -> torch.Tensor:
        return self.inputs[0]

    def rows(self, rows: slice, rank: int, world: int) -> "Batch":
        """The rows ``rows`` of this (global) batch, as rank ``rank`` of ``world`` trains them."""
        def pick(t):
            return None if t is None else t[rows]

        return replace(self, inputs=tuple(x[rows] for x in self.inputs), hr=self.hr[rows],
                       teacher_out=pick(self.teacher_out), teacher_feat=pick(self.teacher_feat), shard=(rank, world))


def _augment(images: torch.Tensor, recipe: Recipe, seed: int, shard: tuple[int, int] | None = None
             ) -> torch.Tensor:
    if not recipe.diffaugment:
        return images
    from gankd.distill.data.augment import diff_augment

    generator = torch.Generator().manual_seed(seed)
    if shard is None:
        return diff_augment(images, recipe.diffaugment, generator=generator)
    # DiffAugment draws per image in batch order: draw for the whole global batch (other ranks' rows zero) and keep
    # this rank's rows, so each image gets the augmentation it gets in a one-process run
    rank, world = shard
    index = torch.arange(rank, len(images) * world, world, device=images.device)
    full = images.new_zeros((len(images) * world, *images.shape[1:])).index_copy(0, index, images)
    return diff_augment(full, recipe.diffaugment, generator=generator)[index]


def _whole_batch(rows: torch.Tensor, shard: tuple[int, int] | None) -> torch.Tensor:
    """torchrun: every rank's rows (for a term over pairs of the batch, CGKD's diversity). The gather's backward sums
    each rank's identical loss into this rank's rows (N times the gradient) and DDP divides by N: the global term's
    gradient, as one process computes it. The rows come in rank order, not batch order: the term ignores order."""
    if shard is None:
        return rows
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(rows))


def _check_finite(terms: dict[str, torch.Tensor], where: str) -> None:
    for name, value in terms.items():
        if not math.isfinite(value.item()):
            raise NonFiniteLoss(f"{where}: loss {name!r} is {value.item()}; the step was not applied")


def _global_values(terms: dict[str, torch.Tensor], where: str, world) -> dict[str, float]:
    """torchrun: each term's mean over ranks (= its value on the global batch), checked before ``backward`` so a
    NaN on any rank stops every rank at the same step (a rank that stopped alone would leave the others waiting in
    the gradient all-reduce)."""
    values = world.mean(torch.stack([value.detach().double() for value in terms.values()])).tolist()
    for name, value in zip(terms, values):
        if not math.isfinite(value):
            raise NonFiniteLoss(f"{where}: loss {name!r} is {value} (mean over {world.size} processes); "
                                "the step was not applied")
    return dict(zip(terms, values))


def generator_loss(stage: Stage, nets: Nets, batch: Batch, recipe: Recipe
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The weighted generator objective of ``stage``; returns (total, unweighted terms, student output)."""
    out, feats = nets.trained("student").forward_with_features(*batch.inputs)
    target = batch.teacher_out if stage.g_target == "teacher" else batch.hr
    step_data = Step(nets, batch, recipe, out, feats, target, _augmenter(recipe, batch), adversary=stage.adv_net,
                     adversarial=stage.adversarial, has_target=stage.g_target != "none",
                     whole_batch=lambda rows: _whole_batch(rows, batch.shard))
    total, terms = objective(stage.g_terms, step_data)
    return total, terms, out


def _augmenter(recipe: Recipe, batch: Batch, offset: int = 0):
    return lambda images: _augment(images, recipe, batch.seed + offset, batch.shard)


def discriminator_loss(stage: Stage, nets: Nets, batch: Batch, fake: torch.Tensor, recipe: Recipe
                       ) -> dict[str, torch.Tensor]:
    d = nets.trained(stage.d_net)
    if stage.d_mode == "distill":  # SDAKD stage 2: D_S matches D_T's outputs on real, teacher and student images
        inputs = torch.cat([batch.hr, batch.teacher_out, fake])
        with torch.no_grad():
            target = nets.get("teacher_d")(inputs)
        return discriminator_objective(DStep(nets, recipe, batch.seed, stage.adversarial, inputs, None, d(inputs),
                                             None, target_logits=target))
    lazy_r1 = stage.adversarial == "logistic" and recipe.r1_gamma > 0 and batch.step % recipe.r1_every == 0
    real = _augment(batch.hr, recipe, batch.seed + 1, batch.shard).detach().requires_grad_(lazy_r1)
    fake = _augment(fake, recipe, batch.seed + 2, batch.shard)
    kd = nets.clip is not None  # KD-DLGAN reads D's last-layer features as well as its logits
    real_logits, real_feat = d.forward_with_features(real) if kd else (d(real), None)
    fake_logits, fake_feat = d.forward_with_features(fake) if kd else (d(fake), None)
    return discriminator_objective(DStep(nets, recipe, batch.seed, stage.adversarial, real, fake, real_logits,
                                         fake_logits, real_feat, fake_feat))


def _online_teacher_step(stage: Stage, nets: Nets, batch: Batch, recipe: Recipe, where: str, world
                         ) -> tuple[Batch, dict[str, float]]:
    """OMGD: one optimiser step of the teacher G on its own objective; the batch then carries its fresh outputs."""
    from .baselines import teacher_loss

    where = f"{where} (online teacher)"
    total, terms, out, feat = teacher_loss(stage, nets, batch, recipe,
                                           lambda images: _augment(images, recipe, batch.seed, batch.shard))
    values = _apply(nets.optimizers["teacher_g"], terms, total, where, world)
    logs = {f"t_{name}": value for name, value in values.items()}
    return replace(batch, teacher_out=out.detach(), teacher_feat=feat.detach()), logs


def step(stage: Stage, nets: Nets, batch: Batch, recipe: Recipe, where: str, world=None) -> dict[str, float]:
    """One optimisation step of ``stage``: the generator step, then the discriminator step. Returns the losses
    (under torchrun, ``world`` set: their means over ranks, the same on every rank)."""
    logs: dict[str, float] = {}
    if stage.t_terms:  # OMGD: the teacher steps first; the student and D_T then see its fresh outputs
        batch, teacher_logs = _online_teacher_step(stage, nets, batch, recipe, where, world)
        logs.update(teacher_logs)
    fake = batch.teacher_out
    if stage.g_target:
        total, terms, out = generator_loss(stage, nets, batch, recipe)
        values = _apply(nets.optimizers["g"], terms, total, where, world)
        logs.update({f"g_{name}": value for name, value in values.items()})
        fake = out.detach()
    if stage.d_net:
        fakes = {"student": fake, "teacher": batch.teacher_out}
        d_fake = torch.cat([batch.teacher_out, fake]) if stage.d_fake == "both" else fakes[stage.d_fake]
        terms = discriminator_loss(stage, nets, batch, d_fake, recipe)
        logs.update(_apply(nets.optimizers[stage.d_net], terms, None, where, world))
    return logs


def _apply(optimizer: torch.optim.Optimizer, terms: dict[str, torch.Tensor], total: torch.Tensor | None, where: str,
           world) -> dict[str, float]:
    """One optimiser step on ``total`` (None: the sum of ``terms``) after the finiteness check; returns the logged
    values (with ``total`` when given). Under torchrun (``world``) the values and the check are means over ranks,
    taken before ``backward`` so a NaN on any rank stops every rank at the same step."""
    logged = dict(terms) if total is None else {**terms, "total": total}
    values = _global_values(logged, where, world) if world else None
    if not world:
        _check_finite(terms, where)
    optimizer.zero_grad(set_to_none=True)
    (sum(terms.values()) if total is None else total).backward()
    optimizer.step()
    return values if values is not None else {name: value.item() for name, value in logged.items()}
