"""``gankd-export ... --triton-repo DIR``: a standard Triton model repository for NVIDIA's NGC Triton container.

One model per artifact folder, named after it::

    DIR/<name>/config.pbtxt     platform onnxruntime_onnx (tensorrt_plan when the artifact has an engine),
                                max_batch_size, inputs/outputs from the manifest (-1 for dynamic H/W),
                                dynamic batching, instance group
    DIR/<name>/1/model.onnx     the artifact's fp32 ONNX graph
    DIR/<name>/1/model.plan     the TensorRT engine, when there is one (the platform is then tensorrt_plan, its
                                max_batch_size at most the engine profile's largest N; model.onnx stays as its
                                source)

The config text is the one ``gankd-demo triton`` serves with (``gankd.serve.triton.config_pbtxt``), with a platform
instead of the Python backend. :func:`check_model` parses it with Triton's own model-configuration schema (the
``inference.ModelConfig`` protobuf that ``tritonclient`` ships) and checks the layout the server expects. Running
the repository in the container was not possible here (no Docker, no GPU): see docs/export.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from gankd.distill.errors import GankdError
from gankd.serve.triton import config_pbtxt, model_name

from .manifest import artifact_file, read_manifest

DEFAULT_FILENAMES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
MAX_BATCH = 8
MAX_QUEUE_DELAY_US = 2000


def check_target(artifact_dir: Path, repo_dir: Path, formats, force: bool) -> None:
    """What ``gankd-export --triton-repo`` checks before exporting: a format Triton serves, a model name Triton
    takes, and no existing model folder of that name unless ``force``."""
    if not {"onnx", "trt"} & set(formats):
        raise GankdError("--triton-repo serves model.onnx (or a TensorRT engine): add onnx to --formats")
    _check_replaceable(Path(repo_dir) / model_name(artifact_dir), force)


def _check_replaceable(target: Path, force: bool) -> None:
    """An existing model folder of the repository is replaced only with ``force``, and only if it is a Triton model
    folder (config.pbtxt): --force never deletes a folder of someone's other files."""
    if target.exists() and any(target.iterdir()):
        if not force:
            raise GankdError(f"{str(target)!r} already exists and is not empty; pass --force to replace it")
        if not (target / "config.pbtxt").is_file():
            raise GankdError(f"--force replaces only a Triton model folder (config.pbtxt); {str(target)!r} holds "
                             "other files: choose another --triton-repo")


def write_triton_model(artifact_dir: str | Path, repo_dir: str | Path, force: bool = False, *,
                       max_batch: int = MAX_BATCH, max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
                       instances: int = 1) -> Path:
    """Write ``repo_dir/<name>/`` for the artifact folder ``artifact_dir``; returns that model folder. An existing
    non-empty model folder is replaced only with ``force`` (other models in the repository are left alone)."""
    artifact_dir, repo_dir = Path(artifact_dir), Path(repo_dir)
    manifest = read_manifest(artifact_dir)
    name = model_name(artifact_dir)
    onnx = artifact_file(artifact_dir, manifest, "onnx")
    if onnx is None:
        raise GankdError(f"--triton-repo needs model.onnx: export {str(artifact_dir)!r} with onnx in --formats")
    plan = artifact_file(artifact_dir, manifest, "trt")
    platform = "tensorrt_plan" if plan is not None else "onnxruntime_onnx"
    if plan is not None:
        profile_max_n = int(manifest["files"]["trt"].get("profile", {}).get("max", [max_batch])[0])
        max_batch = max(1, min(max_batch, profile_max_n))
    target = repo_dir / name
    _check_replaceable(target, force)
    text = config_pbtxt(name, manifest, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
                        instances=instances, platform=platform)
    if target.exists():
        shutil.rmtree(target)
    (target / "1").mkdir(parents=True)
    (target / "config.pbtxt").write_text(text, encoding="utf-8")
    shutil.copyfile(onnx, target / "1" / "model.onnx")
    if plan is not None:
        shutil.copyfile(plan, target / "1" / "model.plan")
    check_model(target)
    return target


def parse_config(path: Path):
    """``config.pbtxt`` as Triton's ``inference.ModelConfig`` message; GankdError (one line) when Triton's schema
    refuses it (unknown field, bad enum value, syntax)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise GankdError(f"{path}: not a valid Triton model config: {exc}") from None


def check_model(model_dir: str | Path):
    """Check one model folder of a repository as Triton would load it: the config parses against the
    model-configuration schema, its name is the folder's, a platform it can run, numeric version folders each
    holding the platform's default file, named FP32 tensors with dims, dynamic batching only with batching.
    Returns the parsed config; GankdError (one line) on the first problem."""
    model_dir = Path(model_dir)
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        raise GankdError(f"{str(model_dir)!r} has no config.pbtxt")
    config = parse_config(path)
    if config.name != model_dir.name:
        raise GankdError(f"{path}: name {config.name!r} is not the folder's name {model_dir.name!r}")
    if config.platform not in DEFAULT_FILENAMES:
        raise GankdError(f"{path}: platform {config.platform!r}; gankd writes {', '.join(DEFAULT_FILENAMES)}")
    versions = [p for p in model_dir.iterdir() if p.is_dir()]
    if not versions or not all(p.name.isdigit() for p in versions):
        raise GankdError(f"{str(model_dir)!r}: version folders must be numbers (1/), found "
                         f"{sorted(p.name for p in versions) or 'none'}")
    filename = config.default_model_filename or DEFAULT_FILENAMES[config.platform]
    for version in versions:
        if not (version / filename).is_file():
            raise GankdError(f"{str(version)!r} lacks {filename}, which platform {config.platform} loads")
    if config.max_batch_size < 0 or (config.HasField("dynamic_batching") and config.max_batch_size < 1):
        raise GankdError(f"{path}: dynamic batching needs max_batch_size >= 1, got {config.max_batch_size}")
    tensors = [*config.input, *config.output]
    if not config.input or not config.output:
        raise GankdError(f"{path}: a model needs inputs and outputs")
    names = [t.name for t in tensors]
    if len(set(names)) < len(names) or not all(names):
        raise GankdError(f"{path}: tensor names must be unique and non-empty, got {names}")
    for tensor in tensors:
        if not tensor.dims or any(d == 0 or d < -1 for d in tensor.dims):
            raise GankdError(f"{path}: {tensor.name!r} has dims {list(tensor.dims)} (positive sizes or -1)")
    return config
