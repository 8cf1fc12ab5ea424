"""Serving artifacts from a Triton Inference Server: ``gankd-demo triton`` (DESIGN.md "Scaling out").

Each artifact folder becomes one Triton model, named after the folder, that runs the artifact's :class:`Session`
(any of its backends: ORT, ncnn, TensorRT, torch.export) inside Triton's Python backend; ``auto`` is resolved once
by the server process (:meth:`TritonServer.start`), so all instances of a model serve the same runtime. The server
is the ``tritonserver`` 2.51 that ``nvidia-pytriton`` ships, started and stopped by PyTriton
(:class:`pytriton.triton.Triton`) on a model repository written here: ``<name>/config.pbtxt``
(:func:`config_pbtxt`, the same text ``gankd-export --triton-repo`` writes for NGC's container, with
``backend: "python"`` instead of a platform) and ``<name>/1/model.py``, which imports :class:`TritonPythonModel`
below.

Why a Python-backend model rather than PyTriton's ``bind``: with ``bind``, an exception in the bound function fails
every request of its dynamic batch, with a multi-line traceback as the message (measured, PyTriton 0.7.0). Here
each request of a batch is checked on its own and a bad one gets its own one-line Triton error
(``pb_utils.TritonError``), while the other requests of the batch are answered.

- Inputs and outputs come from the manifest: sr ``input`` [N, 3, H, W] -> ``output``; generate ``z`` (+ ``psi``)
  -> ``image``; face_sr ``image`` + ``scale`` -> ``restored``. Per-sample scalars (psi, scale) are dims [1] with
  ``reshape: { shape: [] }``, so the network sees [N]. Outputs are the network's raw output (``Session.forward``),
  as the ONNX model in NGC's container gives it.
- Triton checks dtype, rank, fixed dims (channels), the batch limit and the model name; :class:`BatchRunner` checks
  the values: NaN / infinity, the size limits (``images.check_size``: at least ``MIN_SIDE_PX`` a side, so H = 0 or
  a 1x1 image gets gankd's line and not ONNX Runtime's; at most ``--max-pixels``), H and W multiples of the model's
  pixel-unshuffle factor, psi and scale ranges.
- Dynamic batching: requests of one shape are stacked into one forward call; requests of different H x W never
  share one (:meth:`BatchRunner.run` groups whatever batch Triton's batcher hands it by shape).
- The Python backend's stub links ``libpython3.X.so``; with an interpreter that is not the system's (pyenv), the
  system's library is found first and runs against this interpreter's standard library, and PyTriton's own models
  fail to load (``'_thread.RLock' object has no attribute '_recursion_count'``). :func:`stub_environment` puts this
  interpreter's own ``LIBDIR`` first on ``LD_LIBRARY_PATH`` of the tritonserver process, so the stub maps the
  library its standard library belongs to.

pytriton and tritonclient import inside functions, so ``import gankd.serve`` stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ServeError, first_line
from .images import MAX_PIXELS, check_size
from .manifest import read_manifest, task_of
from .ports import check_port_free  # before tritonserver starts; tests call it here too

MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # what Triton (and PyTriton) accept as a model name
DEFAULT_MAX_PIXELS = MAX_PIXELS  # per image: the one limit of gankd.serve (images.MAX_PIXELS)
TRITON_TYPES = {"float32": "TYPE_FP32"}
STARTUP_TIMEOUT_S = 120.0
MODEL_PY = ('"""Triton Python-backend model written by gankd-demo triton: runs a gankd artifact\'s Session."""\n'
            "from gankd.serve.triton import TritonPythonModel  # noqa: F401  (the name the Python backend loads)\n")


@dataclass(frozen=True)
class TritonSettings:
    """What ``gankd-demo triton`` takes: endpoints, batching, instances and the per-model Session options."""

    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    max_batch: int = 8  # Triton's max_batch_size: images per forward call (1: no dynamic batching)
    max_queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    instances: int = 1  # model instances (stub processes, each with its own Session)
    backend: str = "auto"
    threads: int | None = None  # intra-op threads per instance
    max_pixels: int = DEFAULT_MAX_PIXELS  # per image (sr: H x W of the input)
    verify: bool = True
    exit_timeout_s: int = 30  # how long a stop waits for in-flight requests

    def check(self) -> None:
        ports = {"--http-port": self.http_port, "--grpc-port": self.grpc_port, "--metrics-port": self.metrics_port}
        if len(set(ports.values())) < len(ports):
            raise ServeError("the HTTP, gRPC and metrics ports must differ, got " +
                             ", ".join(f"{k} {v}" for k, v in ports.items()))
        for option, value in (("--max-batch", self.max_batch), ("--instances", self.instances),
                              ("--max-pixels", self.max_pixels)):
            if value < 1:
                raise ServeError(f"{option} must be at least 1, got {value}")
        if self.max_queue_delay_us < 0:
            raise ServeError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")


# ----------------------------------------------------------------------------------------------- the model config


@dataclass(frozen=True)
class TritonTensor:
    """One input or output as Triton's model config has it: dims without the batch dimension (-1: variable);
    ``scalar`` marks a per-sample value ([N] in the graph), declared dims [1] and reshaped to []."""

    name: str
    dims: tuple[int, ...]
    data_type: str = "TYPE_FP32"
    scalar: bool = False

    def pbtxt(self, kind: str) -> str:
        lines = [f'{kind} {{', f'  name: "{self.name}"', f"  data_type: {self.data_type}",
                 f"  dims: [ {', '.join(str(d) for d in self.dims)} ]"]
        if self.scalar:
            lines.append("  reshape: { shape: [ ] }")
        return "\n".join([*lines, "}"])


def model_name(artifact_dir: str | Path) -> str:
    """The Triton model name of an artifact folder: its folder name; ServeError when Triton would refuse it."""
    name = Path(artifact_dir).resolve().name
    if not MODEL_NAME.fullmatch(name):
        raise ServeError(f"{str(artifact_dir)!r}: Triton model names take letters, digits, '.', '_' and '-' only; "
                         f"rename the folder (got {name!r})")
    return name


def triton_tensors(manifest: dict) -> tuple[list[TritonTensor], list[TritonTensor]]:
    """The manifest's inputs and outputs as Triton tensors: symbolic sizes (H, W*4) become -1, the batch N goes."""

    def convert(spec: dict) -> TritonTensor:
        dtype = spec.get("dtype", "float32")
        if dtype not in TRITON_TYPES:
            raise ServeError(f"input/output {spec.get('name')!r} has dtype {dtype!r}; gankd serves float32 only")
        shape = list(spec["shape"])
        if not shape or shape[0] != "N":
            raise ServeError(f"{spec.get('name')!r}: the first axis of a served tensor must be the batch N, got "
                             f"{shape}")
        dims = tuple(d if isinstance(d, int) else -1 for d in shape[1:])
        return TritonTensor(spec.get("name", "input"), dims or (1,), TRITON_TYPES[dtype], scalar=not dims)

    return [convert(s) for s in manifest["inputs"]], [convert(s) for s in manifest["outputs"]]


def config_pbtxt(name: str, manifest: dict, *, max_batch: int, max_queue_delay_us: int, instances: int,
                 platform: str | None = None, backend: str | None = None,
                 parameters: dict[str, str] | None = None) -> str:
    """A Triton ``config.pbtxt`` (protobuf text of ``inference.ModelConfig``) for an artifact: ``platform``
    (onnxruntime_onnx, tensorrt_plan) or ``backend`` (python), ``max_batch_size``, inputs and outputs from the
    manifest, dynamic batching (when ``max_batch`` > 1) and ``instances`` CPU instances (KIND_GPU for TensorRT)."""
    if (platform is None) == (backend is None):
        raise ValueError("give a platform or a backend")
    inputs, outputs = triton_tensors(manifest)
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_CPU"
    lines = [f'name: "{name}"', f'platform: "{platform}"' if platform else f'backend: "{backend}"',
             f"max_batch_size: {max_batch}",
             *(t.pbtxt("input") for t in inputs), *(t.pbtxt("output") for t in outputs)]
    if max_batch > 1:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(value)} }}\n}}')
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- running requests


class BatchRunner:
    """One artifact's Session behind Triton's batcher: checks each request, stacks requests of one shape into one
    forward call and splits the output back. :meth:`run` returns, per request, its output or its ServeError."""

    def __init__(self, session, name: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.session = session  # a Session (anything with ``manifest`` and ``forward``)
        self.name = name
        self.task = task_of(self.session.manifest)
        self.inputs, outputs = triton_tensors(self.session.manifest)
        self.input_names = tuple(t.name for t in self.inputs)
        self.output_name = outputs[0].name
        self.max_pixels = max_pixels
        self.multiple = int(self.session.manifest["inputs"][0].get("spatial_multiple") or 1)
        self.ranges = {spec["name"]: spec.get("range") for spec in self.session.manifest["inputs"]}

    @classmethod
    def open(cls, artifact_dir: str | Path, backend: str = "auto", threads: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = True) -> "BatchRunner":
        from .session import Session

        session = Session(artifact_dir, backend=backend, threads=threads, verify=verify, max_pixels=max_pixels)
        return cls(session, model_name(artifact_dir), max_pixels)

    def check(self, feeds: dict) -> tuple[np.ndarray, ...]:
        """The request's arrays in graph order (per-sample scalars as [N]); ServeError naming the problem."""
        arrays = []
        for tensor in self.inputs:
            array = feeds.get(tensor.name)
            if array is None:
                raise ServeError(f"{self.name}: the request has no input {tensor.name!r} (inputs: "
                                 f"{', '.join(self.input_names)})")
            array = np.asarray(array)
            if array.dtype != np.float32:
                raise ServeError(f"{self.name}: input {tensor.name!r} must be FP32, got {array.dtype}")
            if tensor.scalar and array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]  # [N, 1] where Triton did not apply the reshape
            expected = 1 + (0 if tensor.scalar else len(tensor.dims))
            if array.ndim != expected or any(d != -1 and d != s for d, s in zip(tensor.dims, array.shape[1:])) \
                    or len(array) == 0:
                raise ServeError(f"{self.name}: input {tensor.name!r} must be [N, "
                                 f"{', '.join('?' if d == -1 else str(d) for d in tensor.dims)}], got "
                                 f"{list(array.shape)}")
            if not np.isfinite(array).all():
                raise ServeError(f"{self.name}: input {tensor.name!r} has NaN or infinite values")
            self._check_values(tensor, array)
            arrays.append(np.ascontiguousarray(array))
        if len({len(a) for a in arrays}) > 1:
            raise ServeError(f"{self.name}: the inputs have different batch sizes "
                             f"({', '.join(f'{t.name} {len(a)}' for t, a in zip(self.inputs, arrays))})")
        return tuple(arrays)

    def _check_values(self, tensor: TritonTensor, array: np.ndarray) -> None:
        if self.task == "sr":
            height, width = array.shape[2:]
            try:
                check_size(width, height, self.max_pixels)
            except ServeError as exc:
                raise ServeError(f"{self.name}: {exc}") from None
            if height % self.multiple or width % self.multiple:
                raise ServeError(f"{self.name}: H and W must be multiples of {self.multiple} for this model, got "
                                 f"{height}x{width}")
        elif tensor.scalar and self.ranges.get(tensor.name):
            lo, hi = (float(v) for v in self.ranges[tensor.name])
            if array.min() < lo or array.max() > hi:
                raise ServeError(f"{self.name}: input {tensor.name!r} takes values in [{lo:g}, {hi:g}], got "
                                 f"{float(array.min()):g}..{float(array.max()):g}")

    def run(self, requests: list[dict]) -> list[np.ndarray | ServeError]:
        """Each request (``{input name: array}``) -> its output array or its ServeError. Requests whose inputs have
        the same shapes run as one forward call; no forward call mixes shapes."""
        results: list[np.ndarray | ServeError | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, tuple[np.ndarray, ...]]]] = {}
        for index, feeds in enumerate(requests):
            try:
                arrays = self.check(feeds)
            except ServeError as exc:
                results[index] = exc
                continue
            groups.setdefault(tuple(a.shape[1:] for a in arrays), []).append((index, arrays))
        for members in groups.values():
            stacked = [np.concatenate([arrays[k] for _, arrays in members]) for k in range(len(self.inputs))]
            try:
                output = np.asarray(self.session.forward(*stacked), dtype=np.float32)
            except Exception as exc:  # noqa: BLE001 - a backend failure, reported per request in one line
                for index, _ in members:
                    results[index] = ServeError(f"{self.name}: the model failed: {first_line(exc)}")
                continue
            counts = np.cumsum([len(arrays[0]) for _, arrays in members])[:-1]
            for (index, _), part in zip(members, np.split(output, counts)):
                results[index] = np.ascontiguousarray(part)
        return results


class TritonPythonModel:
    """The Triton Python-backend model of one artifact (``<name>/1/model.py`` imports it); the artifact and the
    Session options come as the config's ``parameters``. Runs in the backend's stub process."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.runner = BatchRunner.open(params["artifact_dir"], backend=params.get("backend", "auto"),
                                  threads=int(params.get("threads") or 0) or None,
                                  max_pixels=int(params.get("max_pixels") or DEFAULT_MAX_PIXELS),
                                  verify=params.get("verify", "1") == "1")

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        feeds = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.runner.input_names}
            feeds.append({name: t.as_numpy() for name, t in tensors.items() if t is not None})
        responses = []
        for result in self.runner.run(feeds):
            if isinstance(result, ServeError):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(result))))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.runner.output_name, result)]))
        return responses

    def finalize(self) -> None:
        self.runner = None


# ----------------------------------------------------------------------------------------------- the server


def python_library_dir() -> Path | None:
    """This interpreter's folder of ``libpython3.X.so`` (sysconfig's LIBDIR), or None when it has none (a static
    build: the stub then finds the system's library)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if libdir and any(Path(libdir).glob(f"libpython{version}*.so*")):
        return Path(libdir)
    return None


@contextlib.contextmanager
def stub_environment():
    """``LD_LIBRARY_PATH`` with this interpreter's LIBDIR first while tritonserver starts (PyTriton copies
    ``os.environ`` into the process it spawns, and the backend stubs inherit it); restored afterwards."""
    previous = os.environ.get("LD_LIBRARY_PATH")
    libdir = python_library_dir()
    if libdir is not None:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([str(libdir), *([previous] if previous else [])])
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = previous


def write_repository(artifact_dirs, root: Path, settings: TritonSettings,
                     backends: dict[str, str] | None = None) -> list[str]:
    """A Python-backend model repository in ``root``, one model per artifact; returns the model names.
    ``backends``: the backend of each model by name where it is not ``settings.backend`` (what auto chose)."""
    names = []
    for artifact_dir in artifact_dirs:
        artifact_dir = Path(artifact_dir).resolve()
        manifest = read_manifest(artifact_dir)
        name = model_name(artifact_dir)
        if name in names:
            raise ServeError(f"two artifact folders are named {name!r}: Triton model names must be unique")
        params = {"artifact_dir": str(artifact_dir), "backend": (backends or {}).get(name, settings.backend),
                  "threads": str(settings.threads or 0), "max_pixels": str(settings.max_pixels),
                  "verify": "1" if settings.verify else "0"}
        text = config_pbtxt(name, manifest, max_batch=settings.max_batch,
                            max_queue_delay_us=settings.max_queue_delay_us, instances=settings.instances,
                            backend="python", parameters=params)
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text, encoding="utf-8")
        (root / name / "1" / "model.py").write_text(MODEL_PY, encoding="utf-8")
        names.append(name)
    return names


class TritonServer:
    """``tritonserver`` (PyTriton's) serving artifact folders; ``start`` returns once every model is ready.

    ``with TritonServer(dirs, settings) as server: ...``; ``stop`` lets in-flight requests finish (SIGINT to
    tritonserver, which waits up to ``exit_timeout_s``)."""

    def __init__(self, artifact_dirs, settings: TritonSettings = TritonSettings()):
        if not artifact_dirs:
            raise ServeError("give at least one artifact folder to serve")
        settings.check()
        self.artifact_dirs = [Path(d) for d in artifact_dirs]
        self.settings = settings
        self.names: list[str] = []
        self.backends: dict[str, tuple[str, str]] = {}  # model name -> (backend served, why): what start chose
        self._triton = None
        self._token: str | None = None
        self._root: Path | None = None

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host

    @property
    def endpoints(self) -> dict[str, str]:
        host, s = self.client_host, self.settings
        return {"http": f"http://{host}:{s.http_port}", "grpc": f"{host}:{s.grpc_port}",
                "metrics": f"http://{host}:{s.metrics_port}/metrics"}

    def start(self) -> "TritonServer":
        from .session import verify_artifact

        s = self.settings
        for artifact_dir in self.artifact_dirs:  # every one-line failure before tritonserver starts
            read_manifest(artifact_dir)
            if s.verify:
                verify_artifact(artifact_dir)
        for option, port in (("--http-port", s.http_port), ("--grpc-port", s.grpc_port),
                             ("--metrics-port", s.metrics_port)):
            check_port_free(s.host, port, option)
        self.backends = self._choose_backends()
        try:
            from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
        except ImportError as exc:
            raise ServeError(f"gankd-demo triton needs nvidia-pytriton (pip install 'gankd[all]'): "
                             f"{first_line(exc)}") from None
        self._root = Path(tempfile.mkdtemp(prefix="gankd-triton-"))
        try:
            self.names = write_repository(self.artifact_dirs, self._root / "models", s,
                                          {name: chosen for name, (chosen, _) in self.backends.items()})
            config = TritonConfig(model_repository=self._root / "models", http_address=s.host, http_port=s.http_port,
                                  grpc_address=s.host, grpc_port=s.grpc_port, metrics_address=s.host,
                                  metrics_port=s.metrics_port, allow_gpu_metrics=False, exit_on_error=False,
                                  exit_timeout_secs=s.exit_timeout_s, strict_readiness=False,
                                  log_file=self._root / "tritonserver.log")
            # PyTriton's default protection (a token it generates) minus the statistics, which are read-only and
            # what an operator checks batching with; loading/unloading models, shared memory, trace and logging stay
            # restricted
            security = TritonSecurityConfig(
                restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
            self._triton = Triton(config=config, security_config=security)
            self._token = security.access_token
            with stub_environment():
                self._triton.run()
            self._wait_ready()
        except ServeError:
            self.stop()
            raise
        except Exception as exc:  # noqa: BLE001 - PyTriton's start-up failures, in one line with the server's
            detail = self._log_error()
            self.stop()
            raise ServeError(f"tritonserver did not start: {first_line(exc)}" + (f" ({detail})" if detail else "")) \
                from None
        except BaseException:
            self.stop()
            raise
        return self

    def _choose_backends(self) -> dict[str, tuple[str, str]]:
        """Each model's backend and why. ``auto`` is decided here, once, by a Session in this process (it measures
        the runtimes if this machine has no recorded order, and caches it), so every instance of a model serves the
        same one and the choice is printed; an explicit backend is passed on as it is."""
        from .session import Session

        s, chosen = self.settings, {}
        for artifact_dir in self.artifact_dirs:
            if s.backend != "auto":
                chosen[model_name(artifact_dir)] = (s.backend, "")
                continue
            session = Session(artifact_dir, backend="auto", threads=s.threads, verify=s.verify,
                              max_pixels=s.max_pixels)
            chosen[model_name(artifact_dir)] = (session.backend, session.backend_note)
            del session
        return chosen

    def _log_error(self) -> str:
        """The last error line of tritonserver's log, if any."""
        try:
            lines = (self._root / "tritonserver.log").read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return ""
        errors = [line.split("] ", 1)[-1].strip() for line in lines if line.startswith("E")]
        return first_line(Exception(errors[-1])) if errors else ""

    def _wait_ready(self) -> None:
        from pytriton.triton import TRITON_ACCESS_HEADER
        from tritonclient.http import InferenceServerClient

        client = InferenceServerClient(self.endpoints["http"].removeprefix("http://"))
        headers = {TRITON_ACCESS_HEADER: self._token} if self._token else None
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline:
                index = {entry["name"]: entry for entry in client.get_model_repository_index(headers=headers)}
                states = {name: index.get(name, {}).get("state") for name in self.names}
                failed = [n for n, state in states.items() if state == "UNAVAILABLE"]
                if failed:
                    reason = index[failed[0]].get("reason", "")
                    raise ServeError(f"Triton could not load {failed[0]!r}: {_last_error_line(reason)}")
                if all(state == "READY" for state in states.values()):
                    return
                time.sleep(0.2)
            raise ServeError(f"the models were not ready after {STARTUP_TIMEOUT_S:.0f} s: {states}")
        finally:
            client.close()

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def _last_error_line(reason: str) -> str:
    """The line of a model's load failure that names the error. The Python backend reports ``Internal: ServeError:
    <message>`` and then where (``At:`` ...); a Python traceback names its error on its last error line."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return "unknown reason"
    if "Traceback (most recent call last)" in lines[0]:
        errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
        return errors[-1] if errors else lines[-1]
    return re.sub(r"^(Internal|Unavailable|Invalid argument): ", "", lines[0])
