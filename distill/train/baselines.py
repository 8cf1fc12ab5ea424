"""The baselines SDAKD is measured against (Kaparinos & Mezaris, Tables 1–2), as stages of the one training loop.

- ``mode: omgd`` — Online Multi-Granularity Distillation (Ren et al., ICCV 2021), after bytedance/OMGD
  ``distillers/multiteacher_distiller.py`` (``backward_G_teacher``, ``backward_G_student``, ``calc_CD_loss``,
  ``optimize_parameters``) and ``distillers/base_multiteacher_distiller.py`` (``backward_D_teacher``). The teacher G
  is trained *online*, starting from the imported teacher weights: each step it minimises its own objective
  (reconstruction to the ground truth + the adversarial term against D_T; generation: the adversarial term only),
  D_T learns real vs the teacher's outputs, and the student learns from the teacher's fresh outputs by KD only —
  no adversarial term: the output terms (gankd's ``sup_loss`` to the teacher output, OMGD's 1 − SSIM, and with
  local VGG weights the VGG feature and Gram style terms) plus OMGD's channel-wise distillation of the last feature
  map (spatial means, through the feature adapter). OMGD's second, deeper teacher is left out (gankd has one
  imported teacher), and so is its total-variation term (weight 1e-5).
- ``mode: dcd`` — Discriminator-Cooperated Distillation (Hu et al., 2022), after poopit/DCD-official
  ``distillers/pix2pixbest_distiller.py`` (``calc_DCD_loss``, ``backward_G_student``) and
  ``distillers/base_pix2pixbest_distiller.py`` (``backward_D_teacher``: D_T is trained against the teacher G only).
  The student adds the L1 distance between D_T's intermediate feature maps of its output and of the teacher's
  output (:func:`gankd.distill.train.losses.dcd_feature_loss`), and in stage 3 the adversarial term against D_T. DCD's
  code feeds the generators' intermediate feature maps through trained 1×1 connectors into D_T; here D_T sees the
  two generators' output images (the paper's description, and what an SR/face D is built to read). The teacher G
  stays frozen (DCD's code, built on OMGD's, also steps the teacher G online; SDAKD's comparison fixes the teacher).
- ``mode: dcd_modified`` — SDAKD's "DCD with modified adversarial training": as DCD, with D_T trained against both
  generators (its fake batch holds the teacher's and the student's outputs), so the student cannot fool a D that
  never saw it (SDAKD Fig. 2).

Stage 1 (D_T against the frozen teacher, unless ``teacher_d`` is given) precedes all three, as in SDAKD, so every
method starts from the same teacher discriminator.
"""

from __future__ import annotations

import torch

from .objective import Step, objective
from .recipe import Recipe

BASELINES = ("omgd", "dcd", "dcd_modified")  # their generator terms (ssim, style, cd, dcd) are rows of .objective
DESCRIPTIONS = {
    "omgd": "OMGD: teacher G trained online with D_T; the student by KD only (L1, 1 - SSIM, channel-wise "
            "distillation), no adversarial term",
    "dcd": "DCD: D_T trained against the teacher G only; the student adds L1 between D_T's feature maps of its and "
           "the teacher's outputs, and stage 3 the adversarial term against D_T",
    "dcd_modified": "modified DCD: as DCD, with D_T trained against both the teacher's and the student's outputs",
}


def teacher_loss(stage, nets, batch, recipe: Recipe, augment
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """OMGD's online teacher objective of ``stage`` (its ``t_terms`` from :mod:`.objective`, against the ground
    truth and D_T; ``augment``: the DiffAugment D's inputs get). Returns (total, unweighted terms, teacher output,
    its last feature map)."""
    out, feats = nets.trained("teacher").forward_with_features(*batch.inputs)
    step = Step(nets, batch, recipe, out, feats, batch.hr, augment, adversary="teacher_d",
                adversarial=stage.t_adversarial, has_target=bool(set(stage.t_terms) - {"adv"}))
    total, terms = objective(stage.t_terms, step)
    return total, terms, out, feats[-1]
