"""``report.md`` of a run: the quality table (bicubic, teacher, best student on the validation crops), the image strip,
the discriminator-output histograms of SDAKD Fig. 3 and the validation history."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .modelio import load_model
from .profile import count_macs, count_params, model_input_shapes
from .students import width_label


def _quality_rows(loop, student: torch.nn.Module) -> tuple[list[dict], torch.Tensor]:
    from . import metrics

    task, device, batch = loop.task, loop.device, loop.recipe.batch_size
    from .tasks import predict

    lr, hr = task.val.lr, task.val.hr
    teacher_out = task.val_teacher_out.clamp(0, 1)
    student_out = predict(student, (lr,), batch, device).clamp(0, 1)
    scale = loop.nets.teacher.gankd_config.scale
    bicubic = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    fid = task.fid
    real = task.real_feats
    shape = (1, lr.shape[1], loop.recipe.report_size, loop.recipe.report_size)
    rows = []
    for name, out, model in (("bicubic", bicubic, None), ("teacher", teacher_out, loop.nets.teacher),
                             ("student (best)", student_out, student)):
        row = {"model": name,
               "params (M)": count_params(model) / 1e6 if model is not None else None,
               f"GMACs @{shape[2]}²": count_macs(model, shape) / 1e9 if model is not None else None,
               "PSNR→teacher": metrics.mean_psnr(out, teacher_out) if name != "teacher" else None,
               "SSIM→teacher": metrics.ssim(out, teacher_out).mean().item() if name != "teacher" else None,
               "PSNR→GT": metrics.mean_psnr(out, hr), "SSIM→GT": metrics.ssim(out, hr).mean().item()}
        if fid is not None:
            row["FID"] = fid.fid(fid.features(out), real)
        rows.append(row)
    lr_big = F.interpolate(lr, scale_factor=scale, mode="nearest")  # LR shown pixelated at HR size
    return rows, torch.stack([lr_big, bicubic, teacher_out, student_out], 1)


def _strip(path: Path, images: torch.Tensor, per_image: int) -> None:
    from . import metrics, plots

    picks = list(range(0, len(images), per_image))[:4]
    rows = [{"LR": images[i, 0], "bicubic": images[i, 1], "teacher": images[i, 2], "student": images[i, 3]}
            for i in picks]
    captions = [{"bicubic": f"{metrics.mean_psnr(images[i:i + 1, 1], images[i:i + 1, 2]):.2f} dB",
                 "student": f"{metrics.mean_psnr(images[i:i + 1, 3], images[i:i + 1, 2]):.2f} dB"} for i in picks]
    plots.save_strip(path, rows, captions=captions)


@torch.no_grad()
def _d_histograms(path: Path, loop, student_out: torch.Tensor) -> bool:
    from . import plots

    nets = loop.nets
    if nets.teacher_d is None or nets.student_d is None:
        return False
    x = student_out.to(loop.device)
    scores = {}
    for name, d in (("teacher D (D_T)", nets.teacher_d), ("student D (D_S)", nets.student_d)):
        d.eval()
        scores[name] = d(x).mean(dim=(1, 2, 3)).cpu()  # one score per image: the mean of the per-pixel logits
    plots.save_histograms(path, scores, title="Discriminator outputs on student images (SDAKD Fig. 3)")
    return True


def write_report(run_dir: Path, recipe, loop, log) -> Path:
    from . import plots

    student_dir = loop.g_dir
    lines = [f"# gankd-distill run `{recipe.name}`", ""]
    if not student_dir.is_dir():
        lines.append("No generator was validated (the run stopped before a generator stage finished).")
        (run_dir / "report.md").write_text("\n".join(lines) + "\n")
        return run_dir / "report.md"
    if loop.task.kind != "sr":
        from .report_gan import write_gan_report

        return write_gan_report(run_dir, recipe, loop, load_model(student_dir, device=loop.device), lines, log)
    student = load_model(student_dir, device=loop.device)
    sconf = student.gankd_config
    rows, images = _quality_rows(loop, student)
    _strip(run_dir / "strip.png", images, recipe.val_crops_per_image)
    has_hist = _d_histograms(run_dir / "d_outputs.png", loop, images[:, 3])
    metric = loop.task.metric
    prov = sconf.provenance
    tconf = loop.nets.teacher.gankd_config
    stages = ", ".join(f"{s.name} {s.epochs}x{loop.steps_per_epoch} steps" for s in loop.stages)
    lines += [
        f"- teacher: `{recipe.teacher}` ({tconf.arch}, x{tconf.scale})",
        f"- student: {sconf.arch} {sconf.kwargs}, width C={width_label(recipe.width)}, init {recipe.init}"
        + (f", teacher blocks {prov.get('blocks')}" if prov.get("blocks") is not None else ""),
        f"- mode: {recipe.mode}; discriminator: {recipe.discriminator} (D width {width_label(recipe.student_d_width)}); "
        f"feature KD: {recipe.feature_kd}; adversarial: {recipe.adversarial}; λ1={recipe.lambda_mlp}, "
        f"λ2={recipe.lambda_adv}; perceptual: {'on' if loop.nets.vgg is not None else 'skipped (no VGG weights)'}",
        f"- stages: {stages}; batch {recipe.batch_size}; HR crops {recipe.hr_size}², degradation {recipe.degradation}",
        f"- best student: step {loop.progress.best_step}, chosen by "
        + ("FID to the validation HR crops (offline Inception)" if metric == "fid" else "PSNR to the teacher"),
        f"- validation: {len(loop.task.val)} crops ({recipe.val_crops_per_image} per image) of "
        + ("the embedded sample photos" if recipe.val_images == "sample" else f"`{recipe.val_images}`"),
        f"- wall time: {loop.elapsed_s / 60:.1f} min on {loop.device}", "",
        "## Quality on the validation crops", "",
        plots.markdown_table(rows, list(rows[0])), "",
        "PSNR/SSIM on RGB, 8-bit quantised; FID (when present) uses few samples and is only comparable between runs "
        "with the same validation set.", "",
        "![LR | bicubic | teacher | student](strip.png)", "",
    ]
    if has_hist:
        lines += ["## Discriminator outputs", "", "![D_T vs D_S on student outputs](d_outputs.png)", ""]
    history = [{"step": h["step"], "stage": h["stage"], **h["val"]} for h in loop.progress.history]
    if history:
        lines += ["## Validation history", "", plots.markdown_table(history, list(history[0])), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    log(f"report: {path}")
    return path


def compare_runs(run_dirs: list[Path], input_size: int = 64) -> list[dict]:
    """One row per run folder: what was trained and its best validation scores (for ablations such as random vs
    teacher init, or SDAKD vs the scratch baselines at the same ``max_minutes``)."""
    import json

    import yaml

    from .errors import GankdError
    from .modelio import load_config

    rows = []
    for run_dir in map(Path, run_dirs):
        resolved, student = run_dir / "config.resolved.yaml", run_dir / "student"
        if not student.is_dir():  # mode train: the run's generator is a teacher
            student = run_dir / "teacher"
        if not resolved.is_file() or not student.is_dir():
            raise GankdError(f"{run_dir} is not a finished run folder (no config.resolved.yaml or student/ or "
                             "teacher/)")
        recipe = yaml.safe_load(resolved.read_text())
        config = load_config(student)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best_step = config.provenance.get("step")
        best = next((r["val"] for r in records if "val" in r and r["step"] == best_step), {})
        state = torch.load(run_dir / "state" / "last.pt", map_location="cpu", weights_only=True)["progress"]
        model = config.build()
        shape = model_input_shapes(config, (1, 3, input_size, input_size))
        rows.append({"run": run_dir.name, "mode": recipe["mode"], "init": recipe["init"],
                     "C": width_label(recipe["width"]), "depth": recipe["depth"] or "all",
                     "steps": state["position"]["step"], "minutes": state["elapsed_s"] / 60,
                     f"GMACs @{input_size}²" if config.task == "sr" else "GMACs": count_macs(model, shape) / 1e9,
                     "best step": best_step, **{k: v for k, v in best.items()}})
    return rows
