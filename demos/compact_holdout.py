"""Students against the teacher and against what a user could download instead, on photos nothing was tuned on.

    python demos/compact_holdout.py TEACHER_DIR MODEL_DIR [MODEL_DIR ...] [--rounds 10] [--threads 2]

MODEL_DIRs are any SR model folders of the teacher's scale: gankd students and the references (e.g. the wheel's
realesr-animevideov3: ``gankd-distill import-teacher --from ncnn-package realesr-animevideov3-x4 --out DIR``).
On the held-out photos (``holdout``: 4 scikit-image photos, and ``holdout_photos``: 3 JPEG photos from other
installed packages; gankd.distill.data), 4 LR crops of 64² per photo (bicubic ÷scale), it prints per model the mean
PSNR to the teacher's output on each set, the sharpness relative to the teacher's (variance of the Laplacian of
8-bit luma, ``VoL/teacher``: a model that wins PSNR by blurring shows it here), and the ONNX Runtime CPU latency at
1×3×64×64 with the speed-up over the teacher, all models timed in one interleaved run. Bicubic is the first row.
Quote the CPU line with any figure.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from gankd.distill import load_model
from gankd.distill.data import sample_images, validation_pool
from gankd.distill.metrics import laplacian_variance, mean_psnr
from gankd.distill.profile import measure_interleaved
from gankd.export import exporter, formats, int8

SPLITS = ("holdout", "holdout_photos")


def holdout_lr(scale: int, split: str = "holdout") -> torch.Tensor:
    """4 LR crops of 64² per photo of a held-out split (centre, then a grid), bicubic ÷scale."""
    return validation_pool([img for _, img in sample_images(split)], 64 * scale, scale, per_image=4).lr


def _run(model: torch.nn.Module, lr: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[None]) for x in lr]).clamp(0, 1)


def quality_rows(teacher: torch.nn.Module, models: dict[str, torch.nn.Module]) -> list[dict]:
    """PSNR to the teacher per held-out split and VoL/teacher over both, for bicubic and every model."""
    scale = teacher.gankd_config.scale
    rows = {name: {"model": name} for name in ["bicubic", *models]}
    for split in SPLITS:
        lr = holdout_lr(scale, split)
        target = _run(teacher, lr)
        outputs = {"bicubic": F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1),
                   **{name: _run(model, lr) for name, model in models.items()}}
        teacher_vol = laplacian_variance(target)
        for name, out in outputs.items():
            rows[name][split] = mean_psnr(out, target)
            rows[name].setdefault("vol", []).append(laplacian_variance(out) / teacher_vol)
    for row in rows.values():
        row["vol"] = statistics.fmean(row["vol"])
    return list(rows.values())


def speed(model_dirs: dict[str, Path], work: Path, rounds: int, threads: int) -> dict[str, float]:
    """Median ORT latency (ms) at 1×3×64×64 of every model folder (the teacher first), timed interleaved."""
    sessions = {}
    for name, folder in model_dirs.items():
        art = work / name
        exporter.export_model(folder, art, exporter.ExportSettings(formats=("onnx",)), log=lambda _msg: None)
        sessions[name] = formats.ort_session(art / "model.onnx", threads)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).numpy()
    calls = [lambda s=s: s.run(None, {"input": x}) for s in sessions.values()]
    times = measure_interleaved(calls, warmup_ms=300, duration_s=None, iterations=rounds)
    return {name: statistics.median(t) for name, t in zip(sessions, times)}


def teacher_and_models_args(description: str) -> tuple[argparse.Namespace, torch.nn.Module]:
    """The command line both held-out scripts take (TEACHER MODEL... --rounds --threads), and the loaded teacher."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args, load_model(args.teacher)


def main() -> None:
    args, teacher = teacher_and_models_args(__doc__.split("\n\n")[0])
    names = [d.name if d.name not in ("student",) else d.parent.name for d in args.models]
    models = {name: load_model(d) for name, d in zip(names, args.models)}
    rows = quality_rows(teacher, models)
    with tempfile.TemporaryDirectory() as tmp:
        latency = speed({"teacher": args.teacher, **dict(zip(names, args.models))}, Path(tmp), args.rounds,
                        args.threads)
    cpu = int8.cpu_features()
    bicubic = rows[0]
    print(f"CPU: {cpu['model']} (flags: {', '.join(cpu['flags'] or []) or 'none'}); {args.threads} threads; "
          f"teacher {args.teacher.name} {latency['teacher']:.0f} ms @1x3x64x64 (ORT)\n")
    print("| model | PSNR→teacher holdout (Δ bicubic) | PSNR→teacher holdout_photos (Δ bicubic) | VoL/teacher | "
          "ORT ms @1x3x64x64 | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ms = latency.get(row["model"])
        deltas = [f"{row[s]:.2f} ({row[s] - bicubic[s]:+.2f})" for s in SPLITS]
        timing = f"{ms:.1f} | {latency['teacher'] / ms:.1f}x" if ms else "— | —"
        print(f"| {row['model']} | {deltas[0]} | {deltas[1]} | {row['vol']:.2f} | {timing} |", flush=True)


if __name__ == "__main__":
    main()
