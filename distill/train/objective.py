"""The training objective in one table: every loss term a stage, a baseline or KD-DLGAN can use.

A :class:`Term` names its loss (a pure function of :mod:`.losses`, or of :mod:`.kddlgan` for KD-DLGAN's CLIP terms, fed
from a :class:`Step`), the recipe key that weights it, what it compares, the network whose optimiser step minimises it,
and when it is left out (a weight of 0, a network the run does not have). A stage lists the terms of its steps by name
(``Stage.g_terms``, ``t_terms``, ``d_mode``); :func:`objective` evaluates them in the table's order and weights them
here, the one place weights are applied. To add a term: write the loss as a pure function (in :mod:`.losses`), add a row
here, add its weight to the recipe and name it in the stages that use it.

Three step kinds read the table:

- the generator step (``trains="student"`` rows): the student against its target (the teacher's output, or the
  ground truth in ``scratch``/``train`` modes), plus the adapter for the feature terms;
- OMGD's online teacher step (the same rows, with the teacher G as the network and the ground truth as target);
- the discriminator step (``trains="discriminator"`` rows): their values are logged weighted, as D's loss is their
  plain sum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import losses
from .recipe import Recipe


@contextlib.contextmanager
def frozen(module: nn.Module):
    """``module``'s parameters take no gradient inside the block (an adversary or KD target used in another
    network's step); their own ``requires_grad`` flags come back afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@dataclass
class Step:
    """What the terms of one step read. ``out`` / ``feats``: the trained generator's output and feature maps;
    ``target``: what it is compared with; ``has_target``: False where the adversarial term is the whole objective
    (generation); ``adversary``: the discriminator the adversarial term uses, and ``adversarial`` its loss kind."""

    nets: object  # stages.Nets
    batch: object  # stages.Batch
    recipe: Recipe
    out: torch.Tensor
    feats: list[torch.Tensor]
    target: torch.Tensor
    augment: Callable[[torch.Tensor], torch.Tensor]  # DiffAugment as a discriminator sees images (identity if off)
    adversary: str | None = None
    adversarial: str = "vanilla"
    has_target: bool = True
    whole_batch: Callable[[torch.Tensor], torch.Tensor] = lambda rows: rows  # torchrun: every rank's rows
    _cache: dict = field(default_factory=dict)

    def perceptual_pair(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The perceptual network's maps of the output and (without gradient) of the target, computed once for the
        perceptual and the style term."""
        if "perceptual" not in self._cache:
            with torch.no_grad():
                target_feats = self.nets.perceptual(self.target)
            self._cache["perceptual"] = (self.nets.perceptual(self.out), target_feats)
        return self._cache["perceptual"]


@dataclass(frozen=True)
class Term:
    name: str
    loss: Callable[[Step], torch.Tensor]  # the unweighted value
    weight: Callable[[Recipe, Step], float]  # see ``weight_key`` for the recipe key it reads
    weight_key: str  # the recipe key of its weight (documentation and the report)
    compares: str
    trains: str  # "student" (also the OMGD teacher's own step) | "discriminator"
    applies: Callable[[Step], bool] = lambda step: True  # False: left out of this step


def _key(name: str) -> Callable[[Recipe, Step], float]:
    return lambda recipe, step: getattr(recipe, name)


def _positive(name: str) -> Callable[[Step], bool]:
    return lambda step: getattr(step.recipe, name) > 0


def _perceptual_on(weight_key: str) -> Callable[[Step], bool]:
    return lambda step: step.nets.perceptual is not None and getattr(step.recipe, weight_key) > 0


def _adversarial(step: Step) -> torch.Tensor:
    with frozen(step.nets.get(step.adversary)) as adversary:
        return losses.g_adversarial_loss(adversary(step.augment(step.out)), step.adversarial)


def d_features(d: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """A discriminator's intermediate maps (U-Net D: bottleneck and last map; StyleGAN2 D: its last feature)."""
    _, feats = d.forward_with_features(images)
    return list(feats) if isinstance(feats, (list, tuple)) else [feats]


def _dcd(step: Step) -> torch.Tensor:
    with frozen(step.nets.get("teacher_d")) as d:  # D_T is the KD target here, trained only in the D step
        with torch.no_grad():
            teacher_maps = d_features(d, step.target)
        return losses.dcd_feature_loss(d_features(d, step.out), teacher_maps)


def _diversity(step: Step) -> torch.Tensor:
    from . import kddlgan

    return kddlgan.kddlgan_g_term(step.whole_batch(step.nets.get("clip")(step.out)), step.nets.text_features)


def _data_range(step: Step) -> float:
    config = getattr(step.nets.teacher, "gankd_config", None)
    return float(config.input_range[1] - config.input_range[0]) if config is not None else 1.0


GENERATOR_TERMS: tuple[Term, ...] = (
    Term("l1", lambda s: losses.l1_loss(s.out, s.target), _key("l1_weight"), "l1_weight", "output vs target",
         "student"),
    Term("mse", lambda s: losses.mse_loss(s.out, s.target), _key("l1_weight"), "l1_weight", "output vs target",
         "student"),
    Term("fft", lambda s: losses.fft_loss(s.out, s.target), _key("fft_weight"), "fft_weight",
         "2-D spectra of output and target", "student", _positive("fft_weight")),
    Term("gv", lambda s: losses.gradient_variance_loss(s.out, s.target), _key("gv_weight"), "gv_weight",
         "per-patch gradient variances of output and target", "student", _positive("gv_weight")),
    Term("perceptual", lambda s: losses.perceptual_loss(*s.perceptual_pair(), s.nets.perceptual_layers),
         _key("perceptual_weight"), "perceptual_weight", "perceptual network maps of output and target", "student",
         _perceptual_on("perceptual_weight")),
    Term("anchor", lambda s: losses.anchor_loss(list(s.nets.student.parameters()), s.nets.anchor),
         _key("anchor_weight"), "anchor_weight", "student weights vs their warm start (L2-SP)", "student",
         lambda s: s.recipe.anchor_weight > 0 and s.nets.anchor is not None),
    Term("mlp", lambda s: losses.mlp_feature_loss(s.nets.trained("adapter")(s.feats[-1]), s.batch.teacher_feat),
         _key("lambda_mlp"), "lambda_mlp", "adapted last student map vs the teacher's (SDAKD's MLP term)",
         "student"),
    Term("adv", _adversarial, lambda recipe, s: recipe.lambda_adv if s.has_target else 1.0, "lambda_adv",
         "the stage's adversary on the output (weight 1 where it is the whole objective)", "student"),
    Term("div", _diversity, _key("lambda_div"), "lambda_div",
         "CLIP image-text correlations of the outputs (KD-DLGAN's CGKD diversity)", "student"),
    Term("ssim", lambda s: losses.ssim_loss(s.out, s.target, _data_range(s)), _key("ssim_weight"), "ssim_weight",
         "1 - SSIM of output and target (OMGD)", "student", _positive("ssim_weight")),
    Term("style", lambda s: losses.style_loss(*s.perceptual_pair()), _key("style_weight"), "style_weight",
         "Gram matrices of the perceptual maps (OMGD)", "student", _perceptual_on("style_weight")),
    Term("cd", lambda s: losses.channel_distill_loss(s.nets.trained("adapter")(s.feats[-1]), s.batch.teacher_feat),
         _key("lambda_cd"), "lambda_cd", "channel means of the adapted student map vs the teacher's (OMGD)",
         "student"),
    Term("dcd", _dcd, _key("lambda_dcd"), "lambda_dcd", "D_T's feature maps of output and target (DCD)", "student"),
)
TERMS = {term.name: term for term in GENERATOR_TERMS}


def objective(names: tuple[str, ...], step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the terms ``names`` (those that apply to ``step``) and their unweighted values, in the
    table's order."""
    unknown = set(names) - TERMS.keys()
    if unknown:
        raise KeyError(f"no loss term named {sorted(unknown)}; terms: {', '.join(TERMS)}")
    terms, weights = {}, {}
    for term in GENERATOR_TERMS:
        if term.name in names and term.applies(step):
            terms[term.name] = term.loss(step)
            weights[term.name] = term.weight(step.recipe, step)
    return sum(weights[name] * value for name, value in terms.items()), terms


# ------------------------------------------------------------------------------------------- discriminator terms


@dataclass
class DStep:
    """What the discriminator terms read: D's logits (and, in KD-DLGAN runs, its last features) on the real and
    the fake batch as D saw them (augmented). SDAKD's stage-2 D step (``d_mode: distill``) instead holds D_S's
    logits on real, teacher and student images in ``real_logits`` and D_T's on the same images in
    ``target_logits``."""

    nets: object
    recipe: Recipe
    seed: int
    adversarial: str
    real: torch.Tensor
    fake: torch.Tensor | None
    real_logits: torch.Tensor
    fake_logits: torch.Tensor | None
    real_feat: torch.Tensor | None = None
    fake_feat: torch.Tensor | None = None
    target_logits: torch.Tensor | None = None  # d_mode distill: D_T's logits, the target of D_S's
    _cache: dict = field(default_factory=dict)

    @property
    def adversarial_step(self) -> bool:
        return self.target_logits is None

    def kddlgan(self) -> dict[str, torch.Tensor]:
        """KD-DLGAN's two D terms, unweighted, computed once (D^f: the projection head on D's last feature)."""
        if "kd" not in self._cache:
            from . import kddlgan

            aggregate = kddlgan.agkd_gate(torch.Generator().manual_seed(self.seed + 3), self.recipe.agkd_p)
            with torch.no_grad():  # CLIP is the teacher here: D learns towards it
                i_real, i_fake = self.nets.clip(self.real.detach()), self.nets.clip(self.fake)
            head = self.nets.trained("d_head")
            self._cache["kd"] = kddlgan.kddlgan_d_terms(i_real, i_fake, head(self.real_feat), head(self.fake_feat),
                                                        self.nets.text_features, aggregate)
        return self._cache["kd"]


DISCRIMINATOR_TERMS: tuple[Term, ...] = (
    Term("d_distill", lambda s: losses.d_distill_loss(s.real_logits, s.target_logits), lambda recipe, s: 1.0, "-",
         "D_S's logits vs D_T's on real, teacher and student images (SDAKD stage 2)", "discriminator",
         lambda s: not s.adversarial_step),
    Term("d_adv", lambda s: losses.d_adversarial_loss(s.real_logits, s.fake_logits, s.adversarial),
         lambda recipe, s: 1.0, "-", "D's logits on real vs fake images", "discriminator",
         lambda s: s.adversarial_step),
    Term("d_r1", lambda s: losses.r1_penalty(s.real_logits, s.real),
         lambda recipe, s: 0.5 * recipe.r1_gamma * recipe.r1_every, "r1_gamma",
         "R1 gradient penalty on real images (lazy: every r1_every steps, scaled up by it)", "discriminator",
         lambda s: s.adversarial_step and s.real.requires_grad),
    Term("d_agkd", lambda s: s.kddlgan()["agkd"], _key("lambda_agkd"), "lambda_agkd",
         "D's projected features vs CLIP's image features (KD-DLGAN's AGKD)", "discriminator",
         lambda s: s.adversarial_step and s.nets.clip is not None),
    Term("d_cgkd", lambda s: s.kddlgan()["cgkd_match"], _key("lambda_cgkd"), "lambda_cgkd",
         "D's image-text correlations vs CLIP's (KD-DLGAN's CGKD match)", "discriminator",
         lambda s: s.adversarial_step and s.nets.clip is not None),
)


def discriminator_objective(step: DStep) -> dict[str, torch.Tensor]:
    """D's terms, weighted: D's loss is their sum."""
    return {term.name: term.weight(step.recipe, step) * term.loss(step)
            for term in DISCRIMINATOR_TERMS if term.applies(step)}


def describe() -> list[dict[str, str]]:
    """The table as rows (name, weight key, compares, trains): for docs and reports."""
    return [{"term": t.name, "weight": t.weight_key, "compares": t.compares, "trains": t.trains}
            for t in (*GENERATOR_TERMS, *DISCRIMINATOR_TERMS)]
