"""Benchmark: the distillation step time of a recipe against its FLOP floor, and the cost of the perceptual term.

    python -m gankd.distill.tools.bench_step quickstart [key=value ...] [--steps 5]

For each planned stage it times ``stages.step`` on one batch of the recipe's shapes (random data, the recipe's real
networks) and counts the step's convolution FLOPs: teacher forward (0 when the teacher cache is on), student
forward + backward (3x forward), the adapter, and every discriminator forward/backward of the G and D steps. The
floor is FLOPs / the FP32 throughput this machine reaches on a large matrix multiply (measured here, printed), so the
ratio says how far the step is from compute-bound. The perceptual term is timed with a randomly initialised VGG19
(only its cost is meaningful: no VGG weights are reachable offline). Speed targets live here, not in tests.
"""

from __future__ import annotations

import statistics
import sys

import click
import torch

from gankd.distill.models.cost import count_macs
from gankd.distill.train.recipe import load_recipe
from gankd.distill.train.stages import Batch, Nets, plan_stages, step
from gankd.serve.timing import measure_interleaved


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    times_ms = measure_interleaved([lambda: torch.mm(a, b)], warmup_ms=0, duration_s=None, iterations=repeats)[0]
    return 2 * size**3 / (min(times_ms) / 1e3) / 1e9


def _gmacs(model, shape) -> float:
    from gankd.distill.train.qat import unwrap

    # a student wrapped for a qat stage counts as the model it wraps (the fake quantization is not convolution work)
    return count_macs(unwrap(model)[0], shape) / 1e9 if model is not None else 0.0


def step_gflop(stage, nets: Nets, recipe, lr_shape, hr_shape) -> float:
    """Convolution GFLOP (2 per MAC) of one step of ``stage``; backward counted as 2x forward."""
    n = lr_shape[0]
    macs = 0.0 if recipe.cache_teacher else _gmacs(nets.teacher, lr_shape)
    if stage.g_target:
        macs += 3 * _gmacs(nets.student, lr_shape)
        if "mlp" in stage.g_terms:
            feat = nets.student.forward_features(torch.zeros(1, *lr_shape[1:]))[-1]
            macs += 3 * _gmacs(nets.adapter, (n, *feat.shape[1:]))
        if "adv" in stage.g_terms:
            macs += 3 * _gmacs(nets.get(stage.adv_net), hr_shape)  # forward, and backward to the student's output
        if "perceptual" in stage.g_terms and nets.perceptual is not None:
            macs += 4 * _gmacs(nets.perceptual, hr_shape)  # target forward + output forward and backward
    if stage.d_net:
        d = _gmacs(nets.get(stage.d_net), hr_shape)
        macs += 3 * d * (3 if stage.d_mode == "distill" else 2)
        if stage.d_mode == "distill":
            macs += 3 * _gmacs(nets.teacher_d, hr_shape)
    return 2 * macs


def time_step(stage, nets, batch, recipe, steps: int) -> float:
    """Median seconds of ``steps`` steps after one warm-up step."""
    step(stage, nets, batch, recipe, where="warm-up")
    times_ms = measure_interleaved([lambda: step(stage, nets, batch, recipe, where="bench")], warmup_ms=None,
                                   duration_s=None, iterations=steps)[0]
    return statistics.median(times_ms) / 1e3


@click.command()
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--steps", type=click.IntRange(1, 100), default=5, show_default=True, help="Timed steps per stage.")
def main(recipe: str, overrides: tuple[str, ...], steps: int) -> None:
    from gankd.distill.models.folder import load_model
    from gankd.distill.train.loop import build_nets

    resolved = load_recipe(recipe, list(overrides))
    if resolved.threads:
        torch.set_num_threads(resolved.threads)
    torch.manual_seed(0)
    teacher = load_model(resolved.teacher).requires_grad_(False)
    scale = teacher.gankd_config.scale
    lr_side = resolved.hr_size // scale
    lr = torch.rand(resolved.batch_size, 3, lr_side, lr_side)
    from types import SimpleNamespace

    from gankd.distill.train.task_data import sr_discriminator_config

    # what build_nets reads of a task, without building the crop pools
    task = SimpleNamespace(kind="sr", example_inputs=lambda n=1: (lr[:n],),
                           discriminator_config=sr_discriminator_config)
    nets, _, _ = build_nets(resolved, teacher, task, torch.device("cpu"), log=lambda msg: None)
    with torch.no_grad():
        out, feats = teacher.forward_with_features(lr)
    batch = Batch(inputs=(lr,), hr=torch.rand_like(out).clamp(0, 1), teacher_out=out, teacher_feat=feats[-1])
    peak = matmul_gflops()
    click.echo(f"recipe {resolved.name}: batch {resolved.batch_size}, LR {lr_side}², HR {resolved.hr_size}², "
               f"{torch.get_num_threads()} threads; this machine's FP32 matmul: {peak:.0f} GFLOP/s")
    click.echo("| stage | step ms | GFLOP/step | floor ms | step / floor |")
    click.echo("|---|---:|---:|---:|---:|")
    for stage in plan_stages(resolved, have_teacher_d=bool(resolved.teacher_d)):
        # count before timing: a spectral-norm module that has run forward cannot be deep-copied to the meta device
        gflop = step_gflop(stage, nets, resolved, tuple(lr.shape), tuple(out.shape))
        ms = 1e3 * time_step(stage, nets, batch, resolved, steps)
        floor = 1e3 * gflop / peak
        click.echo(f"| {stage.name} | {ms:.0f} | {gflop:.1f} | {floor:.0f} | {ms / floor:.2f} |")
    from gankd.distill.train.perceptual import VGGFeatures, layer_weights, load_features

    stage3 = next(s for s in plan_stages(resolved, have_teacher_d=True) if s.name == "stage3")
    nets.perceptual = None  # build_nets may have loaded it already: "without" must be without
    without = 1e3 * time_step(stage3, nets, batch, resolved, steps)
    net = resolved.perceptual_net
    layers = layer_weights(net, resolved.perceptual_layers)
    # the recipe's own network: the offline Inception, or a VGG19 with random weights where no file is given (cost only)
    nets.perceptual = (load_features(net, resolved.perceptual_weights, list(layers))
                       if net == "inception" or resolved.perceptual_weights else VGGFeatures(list(layers)))
    nets.perceptual_layers = list(layers.values())
    with_term = 1e3 * time_step(stage3, nets, batch, resolved, steps)
    click.echo(f"perceptual term ({net} to {list(layers)[-1]}): stage3 step {without:.0f} ms "
               f"without, {with_term:.0f} ms with = x{with_term / without:.2f}")


if __name__ == "__main__":
    sys.exit(main())
