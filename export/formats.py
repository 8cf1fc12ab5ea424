"""The file formats: ONNX (+ fp16 and INT8 variants) and torch.export ``.pt2``.

ONNX goes through ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter. On torch 2.15 the
default (dynamo) exporter needs ``onnxscript``, which gankd does not install; the TorchScript exporter handles
RRDBNet and SRVGG (Conv, LeakyRelu/PRelu, Concat, Resize, DepthToSpace, pixel-unshuffle as Reshape/Transpose) with
``dynamic_axes`` for batch, height and width, all in the default ONNX domain. It is deprecated upstream; the
``export_onnx`` function is the one place to switch when it goes. The generate / face_sr graphs (StyleGAN2, GCFSR:
several named inputs, dynamic batch) go through ``export_onnx_graph`` and ``export_pt2_graph``.

Heavy packages (onnx, onnxruntime, onnxslim) import on first use.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gankd.distill.errors import GankdError

from .manifest import INPUT_NAME, OUTPUT_NAME

MIN_OPSET = 17
ONNX_EXPORTER = "torch.onnx.export TorchScript exporter (dynamo=False)"
PT2_EXPORTER = "torch.export.export (strict=False)"


def spatial_multiple(model: nn.Module) -> int:
    """H and W must be multiples of this: RRDBNet x2 / x1 pixel-unshuffle their input by 2 / 4 (BasicSR layout)."""
    return int(getattr(model, "unshuffle", 1))


# ----------------------------------------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, path: Path, opset: int, example: torch.Tensor) -> Path:
    """fp32 ONNX with named ``input``/``output`` and dynamic batch, height and width."""
    if opset < MIN_OPSET:
        raise GankdError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H_out", 3: "W_out"}}
    with warnings.catch_warnings():
        # the TorchScript exporter is chosen on purpose (module docstring); its deprecation notice is noise here
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(model.eval(), (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=axes, do_constant_folding=True, **kwargs)
    return path


def export_onnx_graph(graph, path: Path, opset: int) -> Path:
    """fp32 ONNX of a :class:`gankd.export.tasks.Graph`: its named inputs and output, dynamic batch (sizes fixed)."""
    if opset < MIN_OPSET:
        raise GankdError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    axes = {name: {axis: "N"} for name, axis in graph.batch_axes.items()}
    axes[graph.output_name] = {0: "N"}
    with warnings.catch_warnings():
        # see export_onnx
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        try:
            torch.onnx.export(graph.module.eval(), graph.examples, str(path), input_names=list(graph.input_names),
                              output_names=[graph.output_name], opset_version=opset, dynamic_axes=axes,
                              do_constant_folding=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the first line names the cause
            raise GankdError(f"ONNX export of the {graph.task} model failed: {_first_line(exc)}") from None
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
        return {"applied": False, "tool": f"onnxslim {onnxslim.__version__}", "reason": _first_line(exc)}
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
        raise GankdError(f"{name} fails onnx.checker: {_first_line(exc)}") from None
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


def ort_session(path: Path, threads: int | None = None, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                provider_options: list[dict] | None = None):
    """An ONNX Runtime session with quiet logs. Intra-op threads do not spin between runs, so sessions measured
    in turn (gankd-bench interleaves them) do not steal each other's cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers), provider_options=provider_options)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types (InvalidProtobuf, Fail, ...); one line
        raise GankdError(f"{path} cannot be loaded by ONNX Runtime (corrupted or not an ONNX model?): "
                         f"{_first_line(exc)}") from None


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


def export_pt2(model: nn.Module, path: Path, multiple: int) -> Path:
    """``torch.export`` program with dynamic batch, height and width, saved with ``torch.export.save``.

    Traced at batch 2 and 32×32: a size of 1 would be specialised (torch.export's 0/1 rule). When the model
    pixel-unshuffles its input, H and W are declared as ``multiple × Dim`` so the program accepts exactly the sizes
    the network does."""
    from torch.export import Dim

    if multiple > 1:
        height, width = multiple * Dim("H_blocks"), multiple * Dim("W_blocks")
    else:
        height, width = Dim("H", min=1), Dim("W", min=1)
    example = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    arg = next(iter(inspect.signature(model.forward).parameters))
    try:
        program = torch.export.export(model.eval(), (example,), strict=False,
                                      dynamic_shapes={arg: {0: Dim("N", min=1), 2: height, 3: width}})
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; the first line names the cause
        raise GankdError(f"torch.export failed: {_first_line(exc)}") from None
    torch.export.save(program, str(path))
    return path


def export_pt2_graph(graph, path: Path) -> Path:
    """``torch.export`` program of a :class:`gankd.export.tasks.Graph` with a dynamic batch shared by its inputs."""
    from torch.export import Dim

    batch = Dim("N", min=1)
    shapes = tuple({graph.batch_axes[name]: batch} for name in graph.input_names)
    try:
        program = torch.export.export(graph.module.eval(), graph.examples, strict=False, dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - see export_pt2
        raise GankdError(f"torch.export failed: {_first_line(exc)}") from None
    torch.export.save(program, str(path))
    return path


def load_pt2(path: Path) -> nn.Module:
    try:
        return torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - a damaged archive raises many types; one line
        raise GankdError(f"{path} cannot be loaded by torch.export (corrupted?): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
