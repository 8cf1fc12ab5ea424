"""``report.md`` of a run: the quality table (bicubic, teacher, best student on the validation crops), the image strip,
the discriminator-output histograms of SDAKD Fig. 3 and the validation history."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from gankd.distill.models.cost import count_macs, count_params, model_input_shapes
from gankd.distill.models.folder import load_model
from gankd.distill.models.students import width_label
from gankd.distill.train.baselines import DESCRIPTIONS as BASELINE_TEXT


def reference_models(recipe, teacher_config, device) -> list[tuple[str, torch.nn.Module]]:
    """The ``reference`` model folders of a recipe, loaded and checked against the teacher (an SR model of the same
    scale), so a bad folder stops a run at its start, not after an hour of training."""
    from gankd.distill.errors import GankdError

    models = []
    for folder in recipe.reference:
        model = load_model(folder, device=device)
        config = model.gankd_config
        if config.task != "sr" or config.scale != teacher_config.scale:
            raise GankdError(f"reference {folder}: a x{config.scale} {config.task} model cannot stand beside a "
                             f"x{teacher_config.scale} SR teacher")
        models.append((Path(folder).name, model.eval()))
    return models


def _quality_rows(loop, student: torch.nn.Module, references) -> tuple[list[dict], dict]:
    from gankd.distill import metrics
    from gankd.distill.train.task_data import clean_and_degraded, predict

    task, device, batch = loop.task, loop.device, loop.recipe.batch_size
    lr, hr = task.val.lr, task.val.hr
    teacher_out = task.val_teacher_out.clamp(0, 1)
    scale = loop.nets.teacher.gankd_config.scale
    outputs = {"bicubic": (F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1),
                           None),
               "teacher": (teacher_out, loop.nets.teacher),
               "student (best)": (predict(student, (lr,), batch, device).clamp(0, 1), student)}
    for name, model in references:
        outputs[f"reference: {name}"] = (predict(model, (lr,), batch, device).clamp(0, 1), model)
    shape = (1, lr.shape[1], loop.recipe.report_size, loop.recipe.report_size)
    latency = _latencies({name: model for name, (_, model) in outputs.items() if model is not None}, shape, device)
    teacher_vol = metrics.laplacian_variance(teacher_out)
    rows = []
    for name, (out, model) in outputs.items():
        row = {"model": name,
               "params (M)": count_params(model) / 1e6 if model is not None else None,
               f"GMACs @{shape[2]}²": count_macs(model, shape) / 1e9 if model is not None else None,
               f"ms @{shape[2]}²": latency.get(name),
               "speed-up": latency["teacher"] / latency[name] if name in latency else None,
               "PSNR→teacher": metrics.mean_psnr(out, teacher_out) if name != "teacher" else None,
               "VoL/teacher": metrics.laplacian_variance(out) / teacher_vol if teacher_vol > 0 else None,
               "SSIM→teacher": metrics.ssim(out, teacher_out).mean().item() if name != "teacher" else None,
               "PSNR→GT": metrics.mean_psnr(out, hr), "SSIM→GT": metrics.ssim(out, hr).mean().item()}
        for part, index in clean_and_degraded(task.val.kinds).items():  # a photo mix: clean and degraded inputs apart
            reference = teacher_out[index]
            row[f"PSNR→teacher {part}"] = metrics.mean_psnr(out[index], reference) if name != "teacher" else None
            row[f"VoL/teacher {part}"] = metrics.laplacian_variance(out[index]) / max(
                metrics.laplacian_variance(reference), 1e-12)
        if task.fid is not None:
            row["FID"] = task.fid.fid(task.fid.features(out), task.real_feats)
        rows.append(row)
    return rows, {name: out for name, (out, _) in outputs.items()}


def _latencies(models: dict[str, torch.nn.Module], shape: tuple, device, rounds: int = 5) -> dict[str, float]:
    """Median latency (ms) of each model at ``shape`` on the run's device, timed in one interleaved run (PyTorch;
    ``gankd-bench`` measures the exported artifacts)."""
    import statistics

    from gankd.serve.timing import measure_interleaved

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        calls = [lambda m=m: m.eval()(x) for m in models.values()]
        times = measure_interleaved(calls, warmup_ms=200, duration_s=None, iterations=rounds)
    return {name: statistics.median(t) for name, t in zip(models, times)}


def _crops_100(path: Path, outputs: dict[str, torch.Tensor], rows: list[dict],
               among: torch.Tensor | None = None) -> Path:
    """Teacher, student, bicubic and the best reference (highest PSNR to the teacher) on the validation crop with
    the most teacher texture (highest Laplacian variance), among ``among`` (all crops when None), at 100%."""
    from gankd.distill import metrics

    from . import plots

    teacher = outputs["teacher"]
    candidates = range(len(teacher)) if among is None else among.tolist()
    pick = max(candidates, key=lambda i: metrics.laplacian_variance(teacher[i:i + 1]))
    refs = [r for r in rows if r["model"].startswith("reference: ")]
    cells = {"teacher": teacher[pick], "student": outputs["student (best)"][pick],
             "bicubic": outputs["bicubic"][pick]}
    if refs:
        best = max(refs, key=lambda r: r["PSNR→teacher"])
        cells[best["model"].removeprefix("reference: ")] = outputs[best["model"]][pick]
    return plots.save_grid_100(path, cells)


def _speed_plot(path: Path, rows: list[dict]) -> Path:
    from . import plots

    points = [{"name": r["model"].removeprefix("reference: "), "speed-up over the teacher": r["speed-up"],
               "PSNR to the teacher (dB)": r["PSNR→teacher"]} for r in rows
              if r["speed-up"] is not None and r["PSNR→teacher"] is not None]
    return plots.save_pareto(path, points, x="speed-up over the teacher", y="PSNR to the teacher (dB)")


def _strip(path: Path, images: torch.Tensor, per_image: int) -> None:
    from gankd.distill import metrics

    from . import plots

    picks = list(range(0, len(images), per_image))[:4]
    rows = [{"LR": images[i, 0], "bicubic": images[i, 1], "teacher": images[i, 2], "student": images[i, 3]}
            for i in picks]
    captions = [{"bicubic": f"{metrics.mean_psnr(images[i:i + 1, 1], images[i:i + 1, 2]):.2f} dB",
                 "student": f"{metrics.mean_psnr(images[i:i + 1, 3], images[i:i + 1, 2]):.2f} dB"} for i in picks]
    plots.save_strip(path, rows, captions=captions)


def _d_histograms(path: Path, loop, student_out: torch.Tensor) -> bool:
    """Every discriminator of the run (D_T, D_S) on the validation HR crops, the teacher's and the student's outputs
    (SDAKD Figs. 2 and 3: is D_T fooled by the student?); also ``d_outputs.json`` for ``compare``."""
    from .d_outputs import write_d_histograms

    images = {"real": loop.task.val.hr, "teacher": loop.task.val_teacher_out.clamp(0, 1), "student": student_out}
    return write_d_histograms(path, loop.nets, images, loop.recipe.adversarial,
                              title="Discriminator outputs on the validation crops (SDAKD Figs. 2-3)")


def _perceptual_text(recipe, nets) -> str:
    if recipe.perceptual_weight == 0:
        return "off"
    if nets.perceptual is None:
        return "skipped (no VGG weights)"
    return f"{recipe.perceptual_net}, weight {recipe.perceptual_weight}"


def write_report(run_dir: Path, recipe, loop, log) -> Path:
    from . import plots

    student_dir = loop.g_dir
    lines = [f"# gankd-distill run `{recipe.name}`", ""]
    if not student_dir.is_dir():
        lines.append("No generator was validated (the run stopped before a generator stage finished).")
        (run_dir / "report.md").write_text("\n".join(lines) + "\n")
        return run_dir / "report.md"
    if loop.task.kind != "sr":
        from .gan_report import write_gan_report

        return write_gan_report(run_dir, recipe, loop, load_model(student_dir, device=loop.device), lines, log)
    student = load_model(student_dir, device=loop.device)
    sconf = student.gankd_config
    rows, outputs = _quality_rows(loop, student, reference_models(recipe, loop.nets.teacher.gankd_config,
                                                                  loop.device))
    scale = loop.nets.teacher.gankd_config.scale
    lr_big = F.interpolate(loop.task.val.lr, scale_factor=scale, mode="nearest")  # LR shown pixelated at HR size
    images = torch.stack([lr_big, outputs["bicubic"], outputs["teacher"], outputs["student (best)"]], 1)
    _strip(run_dir / "strip.png", images, recipe.val_crops_per_image)
    _crops_100(run_dir / "crops_100.png", outputs, rows)
    from gankd.distill.train.task_data import clean_and_degraded

    degraded = clean_and_degraded(loop.task.val.kinds).get("degraded")
    if degraded is not None:  # users' photos: the same at 100% on a degraded input
        _crops_100(run_dir / "crops_100_degraded.png", outputs, rows, among=degraded)
    _speed_plot(run_dir / "speed_psnr.png", rows)
    has_hist = _d_histograms(run_dir / "d_outputs.png", loop, images[:, 3])
    metric = loop.task.metric
    prov = sconf.provenance
    tconf = loop.nets.teacher.gankd_config
    stages = ", ".join(f"{s.name} {s.epochs}x{loop.steps_per_epoch} steps" for s in loop.stages)
    lines += [
        f"- teacher: `{recipe.teacher}` ({_arch_text(tconf)}, x{tconf.scale})",
        f"- student: {sconf.arch} {sconf.kwargs}, width C={width_label(recipe.width)}, init {recipe.init}"
        + (f", teacher blocks {prov.get('blocks')}" if prov.get("blocks") is not None else ""),
        f"- mode: {recipe.mode}; discriminator: {recipe.discriminator} (D width {width_label(recipe.student_d_width)}); "
        f"feature KD: {_feature_kd_text(recipe, tconf)}; adversarial: {recipe.adversarial}; λ1={recipe.lambda_mlp}, "
        f"λ2={recipe.lambda_adv}; perceptual: {_perceptual_text(recipe, loop.nets)}",
        *([f"- baseline ({recipe.mode}): {BASELINE_TEXT[recipe.mode]}"] if recipe.mode in BASELINE_TEXT else []),
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
        "Speed-ups: PyTorch on the run's device, one interleaved timing at the size of the GMACs column "
        "(`gankd-bench` times the exported artifacts). VoL/teacher: sharpness (variance of the Laplacian) relative "
        "to the teacher's; a student that wins PSNR by blurring shows a low VoL.", "",
        "![LR | bicubic | teacher | student](strip.png)", "",
        "At 100% (one pixel per pixel), the crop with the most texture: teacher, student, bicubic"
        + (" and the best reference" if recipe.reference else "") + ":", "",
        "![teacher | student | bicubic | reference at 100%](crops_100.png)", "",
        *(["On a degraded input (JPEG, noise, blur or a resize chain), the same at 100%:", "",
            "![teacher | student | bicubic | reference at 100%, degraded input](crops_100_degraded.png)", ""]
          if degraded is not None else []),
        "![speed-up vs PSNR to the teacher](speed_psnr.png)", "",
    ]
    if has_hist:
        lines += ["## Discriminator outputs", "", "Per image: the discriminator's mean logit, through a sigmoid for "
                  "the logistic losses (its probability of *real*); `D_T(student)` near 1 means the teacher D is "
                  "fooled by the student (SDAKD Fig. 2).", "",
                  "![each D on real crops, teacher and student outputs](d_outputs.png)", ""]
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

    from gankd.distill.errors import GankdError
    from gankd.distill.models.folder import load_config
    from gankd.distill.train.recipe import load_yaml

    rows = []
    for run_dir in map(Path, run_dirs):
        resolved, student = run_dir / "config.resolved.yaml", run_dir / "student"
        if not student.is_dir():  # mode train: the run's generator is a teacher
            student = run_dir / "teacher"
        if not resolved.is_file() or not student.is_dir():
            raise GankdError(f"{run_dir} is not a finished run folder (no config.resolved.yaml or student/ or "
                             "teacher/)")
        recipe = load_yaml(resolved.read_text(), str(resolved))
        config = load_config(student)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best_step = config.provenance.get("step")
        best = next((r["val"] for r in records if "val" in r and r["step"] == best_step), {})
        state = torch.load(run_dir / "state" / "last.pt", map_location="cpu", weights_only=True)["progress"]
        model = config.build()
        shape = model_input_shapes(config, (1, 3, input_size, input_size))
        d_outputs = run_dir / "d_outputs.json"  # the report's D-output summary (SDAKD Fig. 2), when it has one
        d_means = {f"{name} mean": value["mean"] for name, value in json.loads(d_outputs.read_text())["scores"].items()
                   if name.startswith("D_T(")} if d_outputs.is_file() else {}
        rows.append({"run": run_dir.name, "mode": recipe["mode"], "init": recipe["init"],
                     "C": width_label(recipe["width"]), "depth": recipe["depth"] or "all",
                     "steps": state["position"]["step"], "minutes": state["elapsed_s"] / 60,
                     f"GMACs @{input_size}²" if config.task == "sr" else "GMACs": count_macs(model, shape) / 1e9,
                     "best step": best_step, **{k: v for k, v in best.items()}, **d_means})
    return rows


def reference_rows(run_dir: Path, folders: list[Path], input_size: int = 64) -> list[dict]:
    """Rows for ``compare --reference``: each model folder scored like a run's student (PSNR to the teacher and
    sharpness relative to it) on the validation crops of ``run_dir``'s recipe, rebuilt from its resolved config."""
    from gankd.distill.errors import GankdError
    from gankd.distill.train.recipe import load_yaml, recipe_from_dict
    from gankd.distill.train.task_data import validation_crops_for

    resolved = Path(run_dir) / "config.resolved.yaml"
    if not resolved.is_file():
        raise GankdError(f"{run_dir} is not a run folder (no config.resolved.yaml): references are scored on its "
                         "validation crops")
    recipe = recipe_from_dict(load_yaml(resolved.read_text(), str(resolved)))
    teacher = load_model(recipe.teacher)
    recipe = dataclasses.replace(recipe, reference=[str(f) for f in folders])
    lr, teacher_out = validation_crops_for(recipe, teacher)
    rows = []
    for name, model in reference_models(recipe, teacher.gankd_config, "cpu"):
        scores = score_against_teacher(model, lr, teacher_out, recipe.batch_size)
        shape = model_input_shapes(model.gankd_config, (1, 3, input_size, input_size))
        rows.append({"run": f"reference: {name}", "mode": "reference", "init": "—", "C": "—", "depth": "—",
                     f"GMACs @{input_size}²": count_macs(model, shape) / 1e9, **scores})
    return rows


def score_against_teacher(model: torch.nn.Module, lr: torch.Tensor, teacher_out: torch.Tensor,
                          batch_size: int) -> dict[str, float]:
    """PSNR to the teacher and VoL relative to the teacher's (sharpness): the two numbers every SR row shows."""
    from gankd.distill import metrics
    from gankd.distill.train.task_data import predict

    out = predict(model, (lr,), batch_size, torch.device("cpu")).clamp(0, 1)
    target = teacher_out.clamp(0, 1)
    return {"psnr_teacher": metrics.mean_psnr(out, target),
            "vol_teacher": metrics.laplacian_variance(out) / max(metrics.laplacian_variance(target), 1e-12)}


def _arch_text(config) -> str:
    return f"spandrel {config.kwargs['architecture']}" if config.arch == "spandrel" else config.arch


def _feature_kd_text(recipe, tconf) -> str:
    if tconf.arch != "spandrel":
        return str(recipe.feature_kd)
    if recipe.teacher_feature:
        return f"{recipe.feature_kd} (teacher feature: module `{recipe.teacher_feature}` of the spandrel network)"
    return "off (a spandrel teacher has no feature unless the recipe names one with teacher_feature)"
