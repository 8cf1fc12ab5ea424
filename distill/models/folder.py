"""Model folders: ``config.json`` + ``model.safetensors`` + ``model.safetensors.sha256`` (DESIGN.md "Directory
contracts").

A model is rebuilt from its folder alone: ``registry[arch](**kwargs)`` then ``load_state_dict(strict=True)``
(after diffusers ``save_pretrained``). Writes are atomic (tmp + rename) so an interrupted save loses nothing. The
weights' sha256 is written beside them and checked on every load, as an artifact's files are checked against its
manifest: a flipped bit is refused, not exported with parity "ok".
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.files import atomic_write, sha256_file

from . import archs as _archs  # noqa: F401  (registers the architectures)
from .registry import create_model, get_arch, make_config
from .weight_files import load_state_dict_strict, read_weights

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUM_FILE = "model.safetensors.sha256"  # `sha256sum -c` reads it; every gankd tool checks it on load
_VERIFY = contextvars.ContextVar("gankd_verify_model_folders", default=True)
log = logging.getLogger(__name__)
TASKS = ("sr", "face_sr", "generate")
Task = Literal["sr", "face_sr", "generate"]


@dataclass(frozen=True)
class ModelConfig:
    """What ``config.json`` holds. ``kwargs`` are the arch config's fields; ``width`` is the fraction C of the
    teacher's channels (1.0 for a teacher); ``provenance`` records where the weights came from."""

    arch: str
    kwargs: dict
    task: Task = "sr"
    scale: int | None = 4
    input_range: tuple[float, float] = (0.0, 1.0)
    width: float = 1.0
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        # kwargs as config.json will hold them (tuples become lists), so a saved and reloaded config compares equal
        object.__setattr__(self, "kwargs", json.loads(json.dumps(self.kwargs)))
        make_config(self.arch, self.kwargs)  # unknown arch / option / bad value -> GankdError
        if self.task not in TASKS:
            raise GankdError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.scale is not None and (not isinstance(self.scale, int) or self.scale < 1):
            raise GankdError(f"scale must be a positive integer or null, got {self.scale!r}")
        lo, hi = self.input_range
        if not lo < hi:
            raise GankdError(f"input_range must be [lo, hi] with lo < hi, got {list(self.input_range)}")
        if not self.width > 0:
            raise GankdError(f"width must be positive, got {self.width!r}")

    @property
    def kind(self) -> str:
        return get_arch(self.arch).kind

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["input_range"] = list(self.input_range)
        return out

    @classmethod
    def from_json(cls, data: dict, source: str = CONFIG_FILE) -> "ModelConfig":
        if not isinstance(data, dict):
            raise GankdError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise GankdError(f"{source}: unknown key {unknown[0]!r}; expected keys: {', '.join(sorted(names))}")
        for required in ("arch", "kwargs"):
            if required not in data:
                raise GankdError(f"{source}: missing key {required!r}")
        data = dict(data)
        if "input_range" in data:
            data["input_range"] = tuple(data["input_range"])
        try:
            return cls(**data)
        except GankdError as exc:
            raise GankdError(f"{source}: {exc}") from None

    def build(self) -> nn.Module:
        return create_model(self.arch, **self.kwargs)


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise GankdError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise GankdError(f"{str(path)!r} is a file, not a model folder (expected a folder with {CONFIG_FILE})")
    if not (path / CONFIG_FILE).is_file():
        raise GankdError(f"{str(path)!r} is not a gankd model folder: {CONFIG_FILE} is missing")


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    _check_folder(path)
    source = str(path / CONFIG_FILE)
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GankdError(f"{source} is not valid JSON ({exc})") from None
    return ModelConfig.from_json(data, source)


def is_model_folder(path: str | Path) -> bool:
    """A folder gankd wrote as a model folder: its config.json names an arch (what ``--force`` may replace)."""
    try:
        data = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "arch" in data and "kwargs" in data


@contextlib.contextmanager
def unverified():
    """Inside it, model folders load without checking their weights' sha256 (``--no-verify``)."""
    token = _VERIFY.set(False)
    try:
        yield
    finally:
        _VERIFY.reset(token)


def verify_weights(path: str | Path) -> None:
    """Check ``model.safetensors`` against ``model.safetensors.sha256``, as artifacts are checked against their
    manifest. A folder written before checksums existed loads with a one-line notice."""
    path = Path(path)
    record = path / CHECKSUM_FILE
    if not record.is_file():
        log.warning("notice: model folder %s has no %s (written before gankd recorded checksums); its weights are "
                    "not verified", path, CHECKSUM_FILE)
        return
    expected = record.read_text(encoding="utf-8", errors="replace").split()[:1]
    actual = sha256_file(path / WEIGHTS_FILE)
    if expected != [actual]:
        shown = expected[0][:12] if expected else "nothing"
        raise GankdError(f"{str(path / WEIGHTS_FILE)!r} does not match its recorded sha256 ({shown}... in "
                         f"{CHECKSUM_FILE}, {actual[:12]}... on disk): the file was altered or damaged; write the "
                         "folder again, or pass --no-verify to load it anyway")


def load_model(path: str | Path, device: str | torch.device = "cpu", verify: bool | None = None) -> nn.Module:
    """Rebuild the model stored in a model folder, in eval mode. ``model.gankd_config`` holds its ModelConfig.
    The weights are checked against their recorded sha256 unless ``verify`` is False (None: True, except inside
    :func:`unverified`)."""
    path = Path(path)
    config = load_config(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise GankdError(f"{str(weights)!r} is missing: the folder has a config but no weights")
    if _VERIFY.get() if verify is None else verify:
        verify_weights(path)
    model = config.build()
    load_state_dict_strict(model, read_weights(weights), source=str(weights))
    model.gankd_config = config
    return model.to(device).eval()


def save_model(path: str | Path, model: nn.Module, config: ModelConfig) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` (created if needed), each atomically
    (``gankd.serve.files.atomic_write``: tmp + fsync + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GankdError(f"cannot save a model to {str(path)!r}: it is a file")
    expected = config.build().state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise GankdError(f"cannot save: the model's weights do not match its config (arch {config.arch!r})")
    path.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "gankd", "arch": config.arch}
    weights = atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    atomic_write(path / CHECKSUM_FILE, f"{sha256_file(weights)}  {WEIGHTS_FILE}\n")
    atomic_write(path / CONFIG_FILE, json.dumps(config.to_json(), indent=2, sort_keys=False) + "\n")
    return path
