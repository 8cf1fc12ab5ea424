"""INT8 against fp32 on the held-out photos: what `gankd-export --int8` would ship, measured on images nothing was
trained, calibrated, validated or selected on.

    python demos/int8_holdout.py TEACHER_DIR MODEL_DIR [MODEL_DIR ...] [--rounds 10] [--threads 2]

For each model folder: export ONNX with the INT8 gate's bars at zero (so model.int8.onnx is always written with the
family's recipe, gankd.export.int8), quantize the same fp32 graph a second time with the 2026-11 settings (8-bit
weights, nothing kept in fp32: the ones that saturate without VNNI), then on 16 LR crops of 64² from the
``holdout`` split (4 per photo, bicubic ÷scale) report mean PSNR to the teacher's output (fp32, PyTorch) and to the
model's own fp32 ONNX output, and the ORT speed-up over fp32 at 1×3×64×64 measured interleaved. Prints a markdown
table with the CPU model and its int8 flags: quote them with any figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from gankd.distill import load_model
from gankd.distill.data.images import sample_images
from gankd.distill.data.crops import validation_pool
from gankd.distill.metrics import mean_psnr
from gankd.export import exporter, int8
from gankd.serve.backends import ort_session
from gankd.serve.timing import measure_interleaved

LEGACY = int8.Int8Recipe(reduce_range=False, keep_first_convs=0, keep_last_convs=0)  # the 2026-11 settings


def holdout_lr(scale: int, split: str = "holdout") -> torch.Tensor:
    """4 LR crops of 64² per photo of a held-out split (centre, then a grid), bicubic ÷scale."""
    return validation_pool([img for _, img in sample_images(split)], 64 * scale, scale, per_image=4).lr


def teacher_and_models_args(description: str) -> tuple[argparse.Namespace, torch.nn.Module]:
    """The command line (TEACHER MODEL... --rounds --threads), and the loaded teacher."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, load_model(args.teacher)


def run_ort(session, lr: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.from_numpy(session.run(None, {"input": x[None].numpy()})[0]) for x in lr])


def measure(model_dir: Path, teacher_out: torch.Tensor, lr: torch.Tensor, work: Path, rounds: int,
            threads: int) -> list[dict]:
    settings = exporter.ExportSettings(formats=("onnx",), int8=True, int8_min_psnr_db=0.0, int8_min_speedup=0.0)
    art = work / model_dir.name
    manifest = exporter.export_model(model_dir, art, settings, log=lambda _msg: None)
    scale = manifest["scale"]
    legacy = art / "model.legacy-int8.onnx"
    int8.quantize(art / "model.onnx", legacy, exporter.calibration_batches(settings, (1, 3, 64, 64), scale), LEGACY)
    sessions = {"fp32": ort_session(art / "model.onnx", threads),
                "int8 (gankd recipe)": ort_session(art / "model.int8.onnx", threads),
                "int8 (2026-11 settings)": ort_session(legacy, threads)}
    outputs = {name: run_ort(s, lr).clamp(0, 1) for name, s in sessions.items()}
    x = lr[:1].numpy()
    calls = [lambda s=s: s.run(None, {"input": x}) for s in sessions.values()]
    times = measure_interleaved(calls, warmup_ms=200, duration_s=None, iterations=rounds)
    medians = [statistics.median(t) for t in times]
    rows = []
    for (name, out), median in zip(outputs.items(), medians):
        rows.append({"model": model_dir.name, "variant": name, "psnr_teacher": mean_psnr(out, teacher_out),
                     "psnr_own_fp32": None if name == "fp32" else mean_psnr(out, outputs["fp32"]),
                     "median_ms": median, "speedup": medians[0] / median})
    return rows


def main() -> None:
    args, teacher = teacher_and_models_args(__doc__.split("\n\n")[0])
    lr = holdout_lr(teacher.gankd_config.scale)
    with torch.no_grad():
        teacher_out = torch.cat([teacher(x[None]) for x in lr]).clamp(0, 1)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=teacher.gankd_config.scale, mode="bicubic",
                                              align_corners=False).clamp(0, 1)
    cpu = int8.cpu_features()
    print(f"CPU: {cpu['model']} (int8 flags: {', '.join(cpu['flags'] or []) or 'none'}); {args.threads} threads; "
          f"{len(lr)} held-out LR crops of 64x64; bicubic PSNR->teacher {mean_psnr(bicubic, teacher_out):.2f} dB\n")
    print("| model | variant | PSNR→teacher dB | Δ vs fp32 | PSNR→own fp32 dB | median ms @1x3x64x64 | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model_dir in args.models:
            rows = measure(model_dir, teacher_out, lr, Path(tmp), args.rounds, args.threads)
            for r in rows:
                delta = r["psnr_teacher"] - rows[0]["psnr_teacher"]
                own = "—" if r["psnr_own_fp32"] is None else f"{r['psnr_own_fp32']:.2f}"
                print(f"| {r['model']} | {r['variant']} | {r['psnr_teacher']:.2f} | {delta:+.2f} | {own} | "
                      f"{r['median_ms']:.1f} | {r['speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
