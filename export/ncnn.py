"""ncnn ``.param``/``.bin`` of an SR student, for realesrgan-ncnn-vulkan, Upscayl and any other ncnn runtime.

Conversion goes through **pnnx** (Tencent's PyTorch → ncnn converter, PyPI ``pnnx``): the student is traced with
``torch.jit.trace`` at two input sizes (so H and W stay free), and the pnnx executable writes the ncnn pair with
fp16 weight storage (ncnn's default, what the shipped Real-ESRGAN models use). The executable is run here, not
through ``pnnx.export``, because that wrapper discards its exit status and messages.

The blobs are renamed to what realesrgan-ncnn-vulkan reads: input ``data``, output ``output`` (pnnx writes ``in0``
and ``out0``). The model takes RGB in [0, 1] and returns RGB in [0, 1] at ``scale``× the size, as the shipped
models do, so the pair drops into a ``models/`` folder under any name (``NAME.param`` + ``NAME.bin``).

What was verified is stated in the manifest (:data:`VERIFIED`): the parity check runs every export in the ``ncnn``
Python runtime from PyPI; the tests also run SRVGG and RRDB exports in realesrgan-ncnn-py's own runtime (the
realesrgan-ncnn-vulkan code, with the files loaded in place of a shipped model).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.errors import ServeError

PARAM_FILE, BIN_FILE = "model.ncnn.param", "model.ncnn.bin"
INPUT_BLOB, OUTPUT_BLOB = "data", "output"  # realesrgan-ncnn-vulkan's names (pnnx writes in0 / out0)
PNNX_BLOBS = {"in0": INPUT_BLOB, "out0": OUTPUT_BLOB}
# what the tests run exported pairs in (tests/export/test_ncnn_export.py), by gankd arch
VERIFIED = {
    "verified_runtimes": ["ncnn (PyPI), CPU: every export's parity check",
                          "realesrgan-ncnn-py 2.0.0 (the realesrgan-ncnn-vulkan code), CPU: srvgg_compact and "
                          "rrdbnet exports in gankd's tests"],
    "verified_archs": ["srvgg_compact", "rrdbnet"],
}
PNNX_TIMEOUT_S = 600
BARRIER_NOTE = "an identity LeakyReLU(1.0) after each RRDB block, so pnnx does not inline the residual chain"
# pnnx may take at most this share of the machine's RAM (address space, never under 2 GiB, which a small model
# stays well inside). Its passes can grow without bound (see pnnx_graph: the plain RRDBNet's peak grows steeply with
# every block past 16), and unchecked only the kernel's OOM killer stops them, which may pick the user's training
# run instead.
PNNX_MEMORY_SHARE = 0.5
OUT_OF_MEMORY_SIGNS = ("std::bad_alloc", "can't allocate memory", "Cannot allocate memory")


def pnnx_memory_limit() -> int:
    """Bytes of address space the pnnx process gets (:data:`PNNX_MEMORY_SHARE` of RAM, at least 2 GiB)."""
    return max(2 << 30, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * PNNX_MEMORY_SHARE))


def export_ncnn(module: nn.Module, out_dir: Path, example: torch.Tensor, example2: torch.Tensor) -> dict:
    """Write ``PARAM_FILE`` and ``BIN_FILE`` into ``out_dir``; returns the converter record for the manifest."""
    pnnx = _require_pnnx()
    with tempfile.TemporaryDirectory(prefix="gankd-pnnx-") as work:
        work = Path(work)
        try:
            # torch.jit.trace is what pnnx reads (it converts TorchScript); its deprecation notice is noise here
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = pnnx_graph(module)
                traced = torch.jit.trace(graph.eval(), example, check_trace=False)
            traced.save(str(work / "model.pt"))
        except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; the first line names it
            raise GankdError(f"ncnn export: torch.jit.trace of {type(module).__name__} failed: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        command = [pnnx.EXEC_PATH, "model.pt", f"inputshape={_shape_arg(example)}",
                   f"inputshape2={_shape_arg(example2)}", "device=cpu", "optlevel=2", "fp16=1",
                   "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin"]
        limit = pnnx_memory_limit()
        try:
            done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        except subprocess.TimeoutExpired:
            raise GankdError(f"ncnn export: pnnx did not finish within {PNNX_TIMEOUT_S} s") from None
        param, weights = work / "model.ncnn.param", work / "model.ncnn.bin"
        said = f"{done.stderr or ''}{done.stdout or ''}"
        if done.returncode != 0 and (done.returncode == -9 or any(sign in said for sign in OUT_OF_MEMORY_SIGNS)):
            raise GankdError(_oom_message(module, limit))
        if done.returncode != 0 or not param.is_file() or not weights.is_file():
            tail = (done.stderr or done.stdout or "").strip().splitlines()
            raise GankdError(f"ncnn export: pnnx failed (exit {done.returncode})"
                             + (f": {tail[-1]}" if tail else ""))
        text = rename_blobs(param.read_text())
        (out_dir / PARAM_FILE).write_text(text)
        shutil.copyfile(weights, out_dir / BIN_FILE)
    return {"converter": f"pnnx {getattr(pnnx, '__version__', 'unknown')}", "weights": "fp16 storage",
            "input_blob": INPUT_BLOB, "output_blob": OUTPUT_BLOB, "layers": _layer_count(text), **VERIFIED,
            **({"graph_change": BARRIER_NOTE} if graph is not module else {})}


def _oom_message(module: nn.Module, limit: int) -> str:
    return (f"ncnn export: pnnx ran out of memory (limit {limit / 2**30:.1f} GiB; gankd caps it at half the RAM, "
            f"at least 2 GiB) converting {type(module).__name__}; export it as onnx instead")


def pnnx_graph(module: nn.Module) -> nn.Module:
    """The module pnnx is given: ``module`` itself, except an RRDBNet, which gets an identity ``LeakyReLU(1.0)``
    after each RRDB block (a copy; the caller's model is untouched).

    Why: pnnx (20261020) fuses the chain of residuals ``y_k = 0.2·f(y_{k-1}) + y_{k-1}`` into expressions, and the
    peak memory of its ncnn pass then grows steeply with every block past 16, at any width (the full 23-block x4plus
    runs out of memory). Without the RRDB residual the blocks convert in little memory, so the residual chain is the
    trigger. A LeakyReLU with slope 1 is the identity (x·1.0 for x < 0) and not an expression op, so pnnx stops
    there, x4plus converts within :data:`PNNX_MEMORY_SHARE`, and ncnn's ``ReLU`` layer with slope 1 returns its
    input unchanged (tests/export/test_ncnn_export.py: a 23-block RRDB under a 512 MiB limit, with and without).
    The parity check compares against ``module``.
    """
    from gankd.distill.models.archs.rrdbnet import RRDBNet

    if not isinstance(module, RRDBNet):
        return module
    import copy

    graph = copy.deepcopy(module)
    graph.body = nn.Sequential(*[nn.Sequential(block, nn.LeakyReLU(1.0)) for block in graph.body])
    return graph


def rename_blobs(param_text: str) -> str:
    """pnnx's ``in0``/``out0`` to ``data``/``output``, as whole tokens of the ``.param`` text."""
    for old, new in PNNX_BLOBS.items():
        if re.search(rf"(?<=\s){new}(?=\s|$)", param_text):
            raise GankdError(f"ncnn export: the graph already has a blob named {new!r}")
        param_text = re.sub(rf"(?<=\s){old}(?=\s|$)", new, param_text, flags=re.MULTILINE)
    return param_text


def ncnn_runner(param: Path, weights: Path, threads: int = 1):
    """callable(N×3×H×W float32) → N×3×(H·s)×(W·s): the pair in the ``ncnn`` Python runtime on the CPU, one image
    at a time (ncnn has no batch axis). The runner of ``gankd.serve`` (``serve.backends.ncnn_runner``), so parity
    and gankd-bench run what a Session serves."""
    from gankd.serve.backends import ncnn_runner as serve_ncnn_runner

    require_ncnn()
    return serve_ncnn_runner(Path(param), Path(weights), threads, input_blob=INPUT_BLOB, output_blob=OUTPUT_BLOB)


def ncnn_latency_runner(model: nn.Module, example: torch.Tensor, threads: int):
    """``model`` converted by :func:`export_ncnn` and loaded into the ncnn runtime with ``threads`` threads
    (:func:`ncnn_runner`): a call that runs it once on ``example`` (1×3×H×W).

    The ncnn twin of ``formats.ort_latency_runner``: ``gankd-distill eval`` finds it through the ``gankd.latency``
    entry point ``ncnn`` (pyproject.toml), since gankd.distill never imports gankd.export."""
    require_ncnn()
    _, channels, height, width = example.shape
    with tempfile.TemporaryDirectory(prefix="gankd-latency-") as tmp:
        # a second trace size keeps H and W free, as the export does; +16 keeps any pixel-unshuffle multiple
        export_ncnn(model, Path(tmp), example[:1], torch.rand(1, channels, height + 16, width + 16))
        run = ncnn_runner(Path(tmp) / PARAM_FILE, Path(tmp) / BIN_FILE, threads)  # read into memory here
    x = example.numpy()
    return lambda: run(x)


def _shape_arg(x: torch.Tensor) -> str:
    return "[" + ",".join(str(d) for d in x.shape) + "]f32"


def _layer_count(param_text: str) -> int:
    lines = param_text.splitlines()
    return int(lines[1].split()[0]) if len(lines) > 1 and lines[1].split() else 0


def _require_pnnx():
    try:
        import pnnx
    except ImportError:
        raise GankdError("--formats ncnn needs pnnx (pip install pnnx; part of gankd[all])") from None
    return pnnx


def require_ncnn():
    """The ncnn module, imported as gankd.serve imports it (``serve.backends.require_ncnn``: its OpenMP threads do
    not spin), so every timing of ncnn in gankd is of the same runtime."""
    from gankd.serve.backends import require_ncnn as serve_require_ncnn

    try:
        return serve_require_ncnn()
    except ServeError:
        raise GankdError("checking an ncnn export needs the ncnn runtime (pip install ncnn; part of gankd[all])") \
            from None
