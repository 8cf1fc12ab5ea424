"""``report.md`` of generation (StyleGAN2) and face-SR (GCFSR) runs: teacher vs generator on the validation set,
with sample grids for the same latents / the same faces at every validation scale."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gankd.distill.models.cost import count_macs, count_params
from gankd.distill.models.students import width_label
from gankd.distill.train.baselines import DESCRIPTIONS as BASELINE_TEXT


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def _without_self(scores: dict) -> dict:
    """The teacher's row: its fidelity to itself (PSNR capped at 100 dB, MSE 0) says nothing."""
    return {k: v for k, v in scores.items() if not k.startswith(("psnr_teacher", "mse_teacher"))}


def _cost(model: nn.Module | None, shape: tuple) -> dict:
    if model is None:
        return {"params (M)": None, "MMACs": None}  # these models are small: millions, not billions
    return {"params (M)": count_params(model) / 1e6, "MMACs": count_macs(model, shape) / 1e6}


def _generate_section(run_dir: Path, loop, model: nn.Module) -> list[str]:
    from gankd.distill import metrics

    from . import plots

    task = loop.task
    shape = ((1, task.style_dim),)
    rows = [{"model": "real images", **_cost(None, shape), "sharpness": metrics.laplacian_variance(_unit(task.real))}]
    if task.real_feats is not None:
        rows[0]["diversity"] = metrics.feature_diversity(task.real_feats)
    student_out = task.samples(model)
    if loop.nets.teacher is not None:
        rows.append({"model": "teacher", **_cost(loop.nets.teacher, shape),
                     **_without_self(task.score_samples(task.val_teacher_out))})
    name = "generator (trained)" if loop.recipe.rules.makes_teacher else "student (best)"
    rows.append({"model": name, **_cost(model, shape), **task.score_samples(student_out)})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    n = min(8, len(student_out))
    latents = [f"z {i}" for i in range(n)]  # one column per latent, one row per generator
    sources = ([("teacher", task.val_teacher_out)] if task.val_teacher_out is not None else []) + \
        [("student" if not loop.recipe.rules.makes_teacher else "generator", student_out)]
    grid = [{c: _unit(images[i]) for i, c in enumerate(latents)} for _, images in sources]
    captions = [{c: label for c in latents} for label, _ in sources]
    plots.save_strip(run_dir / "samples.png", grid, columns=latents, max_rows=len(grid), captions=captions)
    return [f"## Samples for the same {task.recipe.val_samples} latents (the validation draw: torch seed "
            f"{task.recipe.seed + 1}; gankd-demo's seeds are the manifest's numpy seeding, other z)", "",
            plots.markdown_table(rows, columns), "",
            "FID: the offline Inception (clean-fid preprocessing) against all real training images — with 100 real "
            "images and this few samples it is noisy: compare runs, not papers. Sharpness: variance of the "
            "Laplacian (Aguinaldo et al.'s blur measure; higher is sharper). Diversity: mean pairwise distance of "
            "Inception features.", "",
            "![one column per latent: teacher and generator for the same z](samples.png)", ""]


def _face_section(run_dir: Path, loop, model: nn.Module) -> list[str]:
    from gankd.distill import metrics

    from . import plots

    task = loop.task
    shape = ((1, 3, task.size, task.size), (1,))
    outs = task.outputs(model)
    rows = []
    lq_scores = task.score_outputs(task.val_lq)
    rows.append({"model": "LQ input (bicubic)", **_cost(None, shape), **lq_scores})
    if task.val_teacher_out is not None:
        rows.append({"model": "teacher", **_cost(loop.nets.teacher, shape),
                     **_without_self(task.score_outputs(task.val_teacher_out))})
    rows.append({"model": "student (best)" if not loop.recipe.rules.makes_teacher else "generator",
                 **_cost(model, shape), **task.score_outputs(outs)})
    columns = list(dict.fromkeys(k for row in rows for k in row))
    name = "generator" if loop.recipe.rules.makes_teacher else "student"
    strip = []
    for s in task.recipe.val_scales:
        row = {"LQ": _unit(task.val_lq[s][0]), name: _unit(outs[s][0]), "GT": _unit(task.val_hr[0])}
        if task.val_teacher_out is not None:
            row["teacher"] = _unit(task.val_teacher_out[s][0])
        strip.append(row)
    captions = [{"LQ": f"x{s}", name: f"{metrics.mean_psnr(_unit(outs[s][:1]), _unit(task.val_hr[:1])):.2f} dB"}
                for s in task.recipe.val_scales]
    strip_columns = ("LQ", "teacher", name, "GT") if task.val_teacher_out is not None else ("LQ", name, "GT")
    plots.save_strip(run_dir / "strip.png", strip, columns=strip_columns, max_rows=len(strip), captions=captions)
    return ["## Quality per scale on the validation faces", "",
            plots.markdown_table(rows, columns), "",
            "PSNR on RGB in [0, 1]; `_xN` columns are per upscaling factor, the unsuffixed ones their mean. FID "
            "(offline Inception) compares the outputs with the validation HR faces: with this few faces it is a "
            "noisy relative figure.", "",
            f"![{' | '.join(strip_columns)}, one row per scale](strip.png)", ""]


def _d_output_section(run_dir: Path, loop, model: nn.Module) -> list[str]:
    """SDAKD Fig. 2 for these families: each D on real images, the teacher's and the generator's outputs (face SR:
    every validation scale pooled)."""
    from .d_outputs import write_d_histograms

    task, recipe = loop.task, loop.recipe
    if task.kind == "generate":
        teacher, student, real = task.val_teacher_out, task.samples(model), task.real
    else:
        outs = task.outputs(model)
        student, real = torch.cat([outs[s] for s in recipe.val_scales]), task.val_hr
        teacher = None if task.val_teacher_out is None else \
            torch.cat([task.val_teacher_out[s] for s in recipe.val_scales])
    images = {"real": real, **({"teacher": teacher} if teacher is not None else {}), "student": student}
    kind = recipe.teacher_adversarial if recipe.rules.makes_teacher else recipe.adversarial
    if not write_d_histograms(run_dir / "d_outputs.png", loop.nets, images, kind,
                              title="Discriminator outputs (SDAKD Fig. 2)"):
        return []
    return ["## Discriminator outputs", "", "Per image: the discriminator's mean logit, through a sigmoid for the "
            "logistic losses (its probability of *real*); `D_T(student)` near 1 means the teacher D is fooled by the "
            "student (SDAKD Fig. 2).", "", "![each D on real images, teacher and student outputs](d_outputs.png)", ""]


def write_gan_report(run_dir: Path, recipe, loop, model: nn.Module, lines: list[str], log) -> Path:
    from . import plots

    task = loop.task
    conf = model.gankd_config
    stages = ", ".join(f"{s.name} {s.epochs}x{loop.steps_per_epoch} steps" for s in loop.stages)
    teacher = f"`{recipe.teacher}`" if loop.nets.teacher is not None else "none (this run trains G and D from scratch)"
    lines += [
        f"- task: {task.kind}; teacher: {teacher}",
        f"- generator: {conf.arch} {conf.kwargs}" + (f", width C={width_label(recipe.width)}"
                                                     if not recipe.rules.makes_teacher else ""),
        f"- mode: {recipe.mode}; discriminator: {recipe.discriminator}; supervised loss: {recipe.sup_loss}; "
        f"adversarial: {recipe.adversarial if not recipe.rules.makes_teacher else recipe.teacher_adversarial} "
        f"(R1 γ={recipe.r1_gamma} every {recipe.r1_every}); DiffAugment: {recipe.diffaugment or 'off'}; "
        f"KD-DLGAN: {'on' if recipe.kd_dlgan else 'off'}",
        *([f"- baseline ({recipe.mode}): {BASELINE_TEXT[recipe.mode]}"] if recipe.mode in BASELINE_TEXT else []),
        f"- stages: {stages}; batch {recipe.batch_size}",
        f"- kept generator: step {loop.progress.best_step}, chosen by {task.metric}",
        f"- wall time: {loop.elapsed_s / 60:.1f} min on {loop.device}", "",
    ]
    lines += _generate_section(run_dir, loop, model) if task.kind == "generate" else _face_section(run_dir, loop, model)
    lines += _d_output_section(run_dir, loop, model)
    history = [{"step": h["step"], "stage": h["stage"], **h["val"]} for h in loop.progress.history]
    if history:
        lines += ["## Validation history", "", plots.markdown_table(history, list(dict.fromkeys(
            k for h in history for k in h))), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    log(f"report: {path}")
    return path
