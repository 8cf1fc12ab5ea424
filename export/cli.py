"""``gankd-export`` and ``gankd-bench``.

Every bad input ends in one line on stderr (``error: ...``) and exit status 2, as in ``gankd-distill``; nothing
saved is replaced unless ``--force`` is given.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from gankd.distill.cli import run_click, verify_option
from gankd.distill.errors import GankdError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


class _ShapeList(click.ParamType):
    name = "NxCxHxW[,NxCxHxW...]"

    def convert(self, value, param, ctx):
        from gankd.distill.models.cost import parse_shape

        if not isinstance(value, str):
            return value
        try:
            shapes = tuple(parse_shape(part) for part in _split(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not shapes:
            self.fail("give at least one shape, e.g. 1x3x64x64", param, ctx)
        return shapes


class _BatchList(click.ParamType):
    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            batches = tuple(int(part) for part in _split(value))
        except ValueError:
            self.fail(f"batch sizes are positive integers separated by commas, e.g. 1,4; got {value!r}", param, ctx)
        if not batches or any(b < 1 for b in batches):
            self.fail(f"batch sizes are positive integers separated by commas, e.g. 1,4; got {value!r}", param, ctx)
        return batches


class _Shape(click.ParamType):
    """Checked here for form only; the export checks it against the model (channels, multiples)."""

    name = "NxCxHxW"

    def convert(self, value, param, ctx):
        from gankd.distill.models.cost import parse_shape

        try:
            parse_shape(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


@click.command(context_settings=CONTEXT)
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Artifact folder to write (manifest.json + model files).")
@click.option("--formats", "formats_text", default="onnx,pt2", show_default=True,
              help="Comma-separated: onnx, pt2, trt (trt also writes model.onnx, the engine's source); sr models "
                   "also ncnn (model.ncnn.param/.bin via pnnx, for realesrgan-ncnn-vulkan / Upscayl) and pth (the "
                   "official Real-ESRGAN params_ema checkpoint of rrdbnet/srvgg_compact, for inference_realesrgan.py, "
                   "chaiNNer, ComfyUI).")
@click.option("--fp16", is_flag=True, help="Also write model.fp16.onnx (float32 I/O); fp16 TensorRT engine.")
@click.option("--int8", is_flag=True,
              help="Also write model.int8.onnx (ONNX Runtime static QDQ: 7-bit per-channel weights, uint8 "
                   "activations, exact on any x86 CPU), only if it passes the INT8 gate; else one line says why.")
@click.option("--int8-min-psnr-db", type=float, default=None,
              help="INT8 gate: PSNR to the fp32 model on real crops [default: the onnx-int8 tolerance, 40 dB]. "
                   "Lower it only on purpose; the manifest records the bar used.")
@click.option("--int8-min-speedup", type=click.FloatRange(0, None), default=1.0, show_default=True,
              help="INT8 gate: speed-up over the fp32 ONNX model, measured interleaved here at --opt-shape.")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="INT8 gate: the student's teacher folder; INT8 is then judged by its PSNR to the teacher on "
                   "held-out crops, clean and degraded, against fp32's [default: the teacher the student's run "
                   "names, where that folder is here; else PSNR to fp32].")
@click.option("--int8-max-loss-db", type=click.FloatRange(0, None), default=0.3, show_default=True,
              help="INT8 gate with a teacher: the most PSNR to the teacher INT8 may lose against fp32.")
@click.option("--opset", type=click.IntRange(17, None), default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--calib", default="sample", show_default=True,
              help="INT8 calibration images: 'sample' (the embedded train photos, downscaled to LR) or a folder "
                   "of LR images.")
@click.option("--calib-count", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Random crops (at the --opt-shape H x W) used to calibrate INT8.")
@click.option("--min-shape", type=_Shape(), default=None,
              help="TensorRT profile minimum NxCxHxW [default: the opt shape].")
@click.option("--opt-shape", type=_Shape(), default="1x3x64x64", show_default=True,
              help="TensorRT profile optimum; also the size of the INT8 calibration crops.")
@click.option("--max-shape", type=_Shape(), default=None,
              help="TensorRT profile maximum NxCxHxW [default: the opt shape].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing cache file [default: ~/.cache/gankd/trt/<gpu>.<version>.timing-cache].")
@click.option("--no-simplify", is_flag=True, help="Keep the exported ONNX graph as is (no onnxslim).")
@click.option("--psi", is_flag=True,
              help="generate models: add a second input 'psi' [N] (truncation, 1 = none; the average latent of "
                   "4096 seeded z is baked in and recorded in the manifest).")
@click.option("--force", is_flag=True,
              help="Replace a non-empty --out, and keep the artifacts when a parity tolerance is broken "
                   "(recorded as failed in the manifest).")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton model repository entry DIR/<out name>/ (config.pbtxt + 1/model.onnx, and "
                   "model.plan with trt) for NVIDIA's Triton container; needs onnx or trt in --formats.")
@verify_option
def export_cmd(model_dir: Path, out_dir: Path, formats_text: str, fp16: bool, int8: bool,
               int8_min_psnr_db: float | None, int8_min_speedup: float, teacher: Path | None,
               int8_max_loss_db: float, opset: int, calib: str,
               calib_count: int, min_shape: str | None, opt_shape: str, max_shape: str | None,
               timing_cache: Path | None, no_simplify: bool, psi: bool, force: bool,
               triton_repo: Path | None = None) -> None:
    """Export MODEL_DIR (a teacher or student model folder) to deployable files with parity checks against the
    PyTorch model on real photos, and a manifest.json describing them.

    By task (config.json): sr models take input [N,3,H,W] (dynamic N, H, W). generate models (StyleGAN2) take
    z [N,style_dim] (+ psi [N] with --psi) and give image [N,3,S,S] in [-1,1]; parity on seeded z batches.
    face_sr models (GCFSR) take image [N,3,S,S] (the low-quality face) and scale [N] (4-64) and give restored
    [N,3,S,S]; parity per scale 4/8/16/32/64 on a real face. For generate and face_sr only the batch is dynamic,
    INT8 calibrates from seeded z / embedded faces, and trt is not available.

    Tolerances: fp32 ONNX, pt2 and pth (reloaded by spandrel) max abs error <= 1e-4 on outputs mapped to [0, 1]; ncnn
    (fp16 weight storage) <= 2/255; fp16 >= 40 dB PSNR to the fp32 output. A broken tolerance exits with status 2 and
    writes nothing, unless --force. INT8 is different: a file that loses more than 0.3 dB of fp32's PSNR to the
    student's teacher on held-out crops (or, with no teacher known, is under 40 dB PSNR to fp32), or is not faster than
    fp32 here, is left out (the rest is exported) and one line gives the measured figures. A QAT student's INT8 file
    (gankd-distill run with n_qat) carries the activation ranges it learned, and its parity is against its
    fake-quantized model (each quantized layer within one output step, and >= 30 dB end to end). With trt in --formats, a missing tensorrt package or GPU fails before anything is
    exported."""
    from .exporter import ExportSettings, export_model

    settings = ExportSettings(formats=_split(formats_text), fp16=fp16, int8=int8, opset=opset, calib=calib,
                              calib_count=calib_count, min_shape=min_shape, opt_shape=opt_shape,
                              max_shape=max_shape, simplify=not no_simplify, force=force, timing_cache=timing_cache,
                              psi=psi, int8_min_psnr_db=int8_min_psnr_db, int8_min_speedup=int8_min_speedup,
                              teacher=teacher, int8_max_loss_db=int8_max_loss_db)
    if triton_repo is not None:  # fail before exporting
        from .triton_repo import check_target

        check_target(out_dir, triton_repo, settings.formats, force)
    manifest = export_model(model_dir, out_dir, settings, log=lambda msg: click.echo(msg, err=True))
    files = ", ".join(entry["path"] for entry in manifest["files"].values())
    status = "parity ok" if manifest["parity"]["passed"] else "PARITY FAILED (kept: --force)"
    click.echo(f"exported {model_dir} -> {out_dir}: {files}, manifest.json ({status})")
    if triton_repo is not None:
        from .triton_repo import write_triton_model

        model = write_triton_model(out_dir, triton_repo, force=force)
        click.echo(f"wrote Triton model {model} (config.pbtxt checked against Triton's model-config schema)")


@click.command(context_settings=CONTEXT)
@click.argument("artifact_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backends", "backends_text", default="torch,ort", show_default=True,
              help="Comma-separated: torch (model.pt2), ort (model.onnx on CPU, plus int8/fp16 rows), ort-cuda, trt, "
                   "ncnn (model.ncnn.param/.bin in the ncnn runtime on CPU).")
@click.option("--shapes", type=_ShapeList(), default="1x3x64x64", show_default=True,
              help="sr artifacts: comma-separated input shapes NxCxHxW.")
@click.option("--batch", "batches", type=_BatchList(), default=None,
              help="generate and face_sr artifacts (fixed input size): comma-separated batch sizes [default: 1]. "
                   "generate rows run z of seeds 0..N-1 (shape N x style_dim), face_sr rows the astronaut's face "
                   "degraded x16 at the artifact's size (N x 3 x S x S).")
@click.option("--variants", "variants_text", default="fp32,int8,fp16", show_default=True,
              help="Which ONNX files the ort backends run, where the artifact has them.")
@click.option("--warmup-ms", type=click.FloatRange(0, None), default=200.0, show_default=True,
              help="Warm-up time per row before timing.")
@click.option("--duration-s", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Timed phase: rounds until duration x rows seconds have passed [default: 3].")
@click.option("--iterations", type=click.IntRange(1, None), default=None,
              help="Timed phase: exactly this many rounds instead of a duration.")
@click.option("--threads", type=click.IntRange(1, None), default=None,
              help="CPU threads for torch and ONNX Runtime [default: the physical cores].")
@click.option("--peak-gflops", type=click.FloatRange(0, None, min_open=True), default=None,
              help="Use this FP32 peak instead of the one computed from /proc/cpuinfo.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of latency versus PSNR to the first artifact.")
@click.option("--write-manifest", is_flag=True, help="Store the results in each artifact's manifest.json.")
@click.option("--reference", "references", multiple=True, type=click.Path(path_type=Path),
              help="A model folder (e.g. the compact model you would otherwise deploy; gankd-distill "
                   "import-teacher) or artifact folder, measured in the same interleaved run as a row of its own "
                   "(model folders are exported to ONNX and torch.export first, with parity checks). Repeatable.")
@click.option("--sweep", is_flag=True,
              help="sr artifacts: cost against image size instead of --shapes: every fp32 artifact at --sweep-sizes, "
                   "whole and through --tile tiles (as gankd.serve runs images): median ms, Mpx/s of output, peak "
                   "RSS, tiling overhead; --plot draws ms against pixels.")
@click.option("--sweep-sizes", default="64,128,256,512,720x1280", show_default=True,
              help="--sweep: LR input sizes, N (square) or HxW, and 'photo' (a held-out photo, 500x741, whole).")
@click.option("--tile", type=click.IntRange(16, None), default=256, show_default=True,
              help="--sweep: the tiled rows' LR tile (gankd-demo's and upscale's default).")
@click.option("--pad", type=click.IntRange(0, None), default=10, show_default=True,
              help="--sweep: context px around each tile and around the whole image (gankd.serve's default).")
@click.option("--max-run-s", type=click.FloatRange(0, None, min_open=True), default=20.0, show_default=True,
              help="--sweep: a run projected to take longer (linear in pixels from the previous size) is recorded "
                   "as projected, not run.")
def bench_cmd(artifact_dirs: tuple[Path, ...], backends_text: str, shapes, batches, variants_text: str,
              warmup_ms: float,
              duration_s: float | None, iterations: int | None, threads: int | None, peak_gflops: float | None,
              json_path: Path | None, plot_path: Path | None, write_manifest: bool,
              references: tuple[Path, ...], sweep: bool = False, sweep_sizes: str = "64,128,256,512,720x1280",
              tile: int = 256, pad: int = 10, max_run_s: float = 20.0) -> None:
    """Measure ARTIFACT_DIRs the way trtexec does: latency min/mean/median/p90/p95/p99 and throughput per
    (artifact, backend, shape), artifacts interleaved (A B A B ...) so ratios hold on a noisy machine. The first
    artifact is the reference (the teacher): speed-up and PSNR are against it. All artifacts of one call share a
    task: sr artifacts run at --shapes, generate and face_sr artifacts at --batch sizes.

    Achieved GFLOP/s = 2 x MACs / median latency; % FP32 peak divides by cores x clock x 2 FMA units x fp32 lanes
    (16 with AVX-512, 8 with AVX2) x 2, read from /proc/cpuinfo (see the note under the table)."""
    from . import bench

    if duration_s is not None and iterations is not None:
        raise GankdError("give --duration-s or --iterations, not both")
    if duration_s is None and iterations is None:
        duration_s = 3.0
    settings = bench.BenchSettings(backends=_split(backends_text), shapes=shapes, batches=batches,
                                   variants=_split(variants_text),
                                   warmup_ms=warmup_ms, duration_s=duration_s, iterations=iterations,
                                   threads=threads, peak_gflops=peak_gflops)
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    if sweep:
        if write_manifest:
            raise GankdError("--write-manifest stores --shapes results; a --sweep goes to --json")
        return _sweep(list(artifact_dirs), references, _split(backends_text), sweep_sizes, tile, pad, max_run_s,
                      duration_s, threads, json_path, plot_path, log)
    result = _with_references(list(artifact_dirs), references, log,
                              lambda dirs: bench.benchmark(dirs, settings, log=log))
    click.echo(bench.format_table(result))
    _write_json(result, json_path)
    if plot_path:
        saved = bench.save_plot(result, plot_path)
        click.echo(f"wrote {saved}" if saved else "no plot: no row has a PSNR to the first artifact (give the "
                                                  "teacher first, then students of the same scale)", err=True)
    if write_manifest:
        for path in bench.write_to_manifests(result):
            click.echo(f"updated {path}", err=True)


def _sweep(artifact_dirs, references, backends, sizes_text, tile, pad, max_run_s, duration_s, threads, json_path,
           plot_path, log) -> None:
    from . import sweep

    sizes = sweep.parse_sizes(sizes_text)
    result = _with_references(artifact_dirs, references, log, lambda dirs: sweep.sweep(
        dirs, backends, sizes, tile, pad, max_run_s, duration_s=duration_s or 3.0, threads=threads, log=log))
    click.echo(sweep.format_table(result))
    _write_json(result, json_path)
    if plot_path:
        click.echo(f"wrote {sweep.save_plot(result, plot_path)}", err=True)


def _with_references(artifact_dirs: list, references, log, measure):
    """``measure`` over the artifacts and the ``--reference`` folders (model folders exported to a temporary
    folder first)."""
    with tempfile.TemporaryDirectory(prefix="gankd-bench-ref-") as tmp:
        refs = [_reference_artifact(Path(r), Path(tmp), log) for r in references]
        return measure(list(artifact_dirs) + refs)


def _write_json(result: dict, json_path: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}", err=True)


def _reference_artifact(path: Path, tmp: Path, log) -> Path:
    """An artifact folder for a ``--reference``: itself when it is one, else the model folder exported."""
    from . import exporter

    if (path / "manifest.json").is_file():
        return path
    if not (path / "config.json").is_file():
        raise GankdError(f"--reference {path}: neither a model folder (config.json) nor an artifact folder "
                         "(manifest.json)")
    out = tmp / path.name
    log(f"exporting reference {path} to a temporary artifact")
    exporter.export_model(path, out, exporter.ExportSettings(formats=("onnx", "pt2")), log=lambda msg: None)
    return out


def export_main(argv: list[str] | None = None) -> int:
    return run_click(export_cmd, "gankd-export", argv)


def bench_main(argv: list[str] | None = None) -> int:
    return run_click(bench_cmd, "gankd-bench", argv)


if __name__ == "__main__":
    sys.exit(export_main())
