"""The file formats: ONNX (+ fp16 and INT8 variants) and torch.export ``.pt2``.

ONNX goes through ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter. On torch 2.15 the
default (dynamo) exporter needs ``onnxscript``, which gankd does not install; the TorchScript exporter handles
RRDBNet and SRVGG (Conv, LeakyRelu/PRelu, Concat, Resize, DepthToSpace, pixel-unshuffle as Reshape/Transpose) with
``dynamic_axes`` for batch, height and width, all in the default ONNX domain. It is deprecated upstream; the
``export_onnx`` function is the one place to switch when it goes. Every task goes through the same
``export_onnx`` and ``export_pt2``: the module and its :class:`gankd.export.tasks.Signature` (named inputs with their
dynamic axes, the output, example inputs); gankd-distill search's ORT timing too (:func:`ort_latency_runner`).

Heavy packages (onnx, onnxruntime, onnxslim) import on first use.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.backends import ort_session  # the one factory: what is benchmarked is what is served
from gankd.serve.errors import first_line

from .manifest import INPUT_NAME, OUTPUT_NAME
from .tasks import Port, Signature

MIN_OPSET = 17
ONNX_EXPORTER = "torch.onnx.export TorchScript exporter (dynamo=False)"
PT2_EXPORTER = "torch.export.export (strict=False)"


# ----------------------------------------------------------------------------------------------- ONNX


def export_onnx(module: nn.Module, path: Path, opset: int, signature: Signature) -> Path:
    """fp32 ONNX of ``module`` with the named inputs and output of ``signature``, traced on its examples; the
    ports' dynamic axes (batch, and H/W for sr) are symbolic, the other sizes fixed."""
    if opset < MIN_OPSET:
        raise GankdError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {port.name: port.dynamic for port in (*signature.inputs, signature.output)}
    with warnings.catch_warnings():
        # the TorchScript exporter is chosen on purpose (module docstring); its deprecation notice is noise here
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        try:
            torch.onnx.export(module.eval(), signature.examples, str(path), input_names=list(signature.input_names),
                              output_names=[signature.output.name], opset_version=opset, dynamic_axes=axes,
                              do_constant_folding=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the first line names the cause
            raise GankdError(f"ONNX export of {type(module).__name__} failed: {first_line(exc)}") from None
    return path


def simplify_onnx(path: Path) -> dict:
    """Simplify the graph in place with onnxslim; on any failure keep the exported graph and say why."""
    try:
        import onnx
        import onnxslim
    except ImportError as exc:
        return {"applied": False, "tool": None, "reason": f"onnxslim is not installed ({exc.name})"}
    try:
        slim = onnxslim.slim(onnx.load(str(path)))
        check_onnx(slim, path.name)
    except Exception as exc:  # noqa: BLE001 - any simplifier failure leaves the plain export, recorded
        return {"applied": False, "tool": f"onnxslim {onnxslim.__version__}", "reason": first_line(exc)}
    onnx.save(slim, str(path))
    return {"applied": True, "tool": f"onnxslim {onnxslim.__version__}", "reason": None}


def check_onnx(model_or_path, name: str | None = None) -> None:
    """``onnx.checker`` (full check, with shape inference) and no operator outside the default ONNX domain."""
    import onnx

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    name = name or str(model_or_path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise GankdError(f"{name} fails onnx.checker: {first_line(exc)}") from None
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise GankdError(f"{name} uses custom-domain operators: {', '.join(custom)}")


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations, float32 input and output (casts at the edges), so callers feed the same
    arrays as to the fp32 model. Uses onnxruntime's own converter (``onnxruntime.transformers.float16``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "values clipped to fp16 range" is reported by parity
        half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _topological_sort(half.graph)  # the converter appends the input casts at the end of the node list
    check_onnx(half, dst.name)
    onnx.save(half, str(dst))
    return dst


def _topological_sort(graph) -> None:
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise GankdError("the fp16 graph has a cycle or a dangling input; cannot order it")
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# ----------------------------------------------------------------------------------------------- torch.export


def export_pt2(module: nn.Module, path: Path, signature: Signature) -> Path:
    """``torch.export`` program of ``module`` with the dynamic axes of ``signature``'s inputs, saved with
    ``torch.export.save``.

    A symbol names one dimension for all inputs (the batch ``N`` is shared). Spatial axes of a port whose
    ``multiple`` is above 1 (models that pixel-unshuffle their input) are declared as ``multiple × Dim``, so the
    program accepts exactly the sizes the network does. The examples are at batch 2 and 32×32: a size of 1 would
    be specialised (torch.export's 0/1 rule)."""
    from torch.export import Dim

    dims: dict[str, object] = {}

    def dim(symbol: str, multiple: int):
        if symbol not in dims:
            dims[symbol] = multiple * Dim(f"{symbol}_blocks") if multiple > 1 else Dim(symbol, min=1)
        return dims[symbol]

    shapes = tuple({axis: dim(symbol, port.multiple if axis in port.spatial else 1)
                    for axis, symbol in port.dynamic.items()} for port in signature.inputs)
    try:
        program = torch.export.export(module.eval(), signature.examples, strict=False, dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the first line names the cause
        raise GankdError(f"torch.export failed: {first_line(exc)}") from None
    torch.export.save(program, str(path))
    return path


def load_pt2(path: Path) -> nn.Module:
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises many types; one line
        raise GankdError(f"{path} cannot be loaded by torch.export (corrupted?): {first_line(exc)}") from None


# ----------------------------------------------------------------------------------------------- runners


def ort_runner(path: Path, names: tuple[str, ...], threads: int | None = None) -> Callable[..., np.ndarray]:
    """A call taking the model's inputs (arrays, in ``names`` order) and returning its output, in ONNX Runtime."""
    session = ort_session(path, threads)
    return lambda *xs: session.run(None, dict(zip(names, xs)))[0]


def pt2_runner(path: Path) -> Callable[..., np.ndarray]:
    """The same for a saved ``.pt2`` (the file, not an in-memory program: parity proves the file)."""
    module = load_pt2(path)

    def run(*xs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(*(torch.from_numpy(x) for x in xs)).numpy()

    return run


def ort_latency_runner(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    """``model`` exported by :func:`export_onnx` at the fixed shape of ``example`` and loaded into ONNX Runtime
    with ``threads`` intra-op threads: a call that runs it once on ``example``.

    ``gankd-distill search`` times its candidates with it. gankd.distill never imports gankd.export (DESIGN.md),
    so it finds this function through the ``gankd.latency`` entry point ``ort`` declared in pyproject.toml."""
    signature = Signature((Port(INPUT_NAME, batch=False),), Port(OUTPUT_NAME, batch=False), (example,))
    with tempfile.TemporaryDirectory(prefix="gankd-latency-") as tmp:
        run = ort_runner(export_onnx(model, Path(tmp) / "model.onnx", MIN_OPSET, signature), (INPUT_NAME,), threads)
    x = example.numpy()
    return lambda: run(x)
