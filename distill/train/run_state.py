"""``state/last.pt``: everything needed to continue a run exactly where it stopped.

Modules, optimizers, EMA, the position (stage, epoch, next batch, global step), the torch RNG and the validation
history, as plain tensors and Python values: written atomically (``gankd.serve.files.atomic_write``: tmp + fsync +
rename) so a kill -9 mid-write leaves the previous file, and read with ``torch.load(weights_only=True)`` so a
checkpoint never runs code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gankd.distill.errors import GankdError
from gankd.serve.files import atomic_write

FORMAT = 1


@dataclass
class Position:
    stage: int = 0  # index into the planned stages
    epoch: int = 0  # epoch within the stage
    batch: int = 0  # next batch of that epoch
    step: int = 0  # optimisation steps done, over all stages


@dataclass
class Progress:
    position: Position = field(default_factory=Position)
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # one entry per validation
    elapsed_s: float = 0.0
    qat_best_score: float | None = None  # the qat stage selects its own best (the student's int8_qat folder)
    qat_best_step: int | None = None


def save_state(path: Path, modules: dict, optimizers: dict, progress: Progress) -> None:
    payload = {
        "format": FORMAT,
        "modules": {name: m.state_dict() for name, m in modules.items() if m is not None},
        "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
        "progress": {**asdict(progress), "position": asdict(progress.position)},
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: Path, modules: dict, optimizers: dict) -> Progress:
    if not path.is_file():
        raise GankdError(f"no saved state at {path}: nothing to resume (run without --resume)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: say so in one line
        raise GankdError(f"{path}: unreadable run state ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GankdError(f"{path}: not a gankd run state of format {FORMAT}")
    saved = payload["modules"]
    for name, module in modules.items():
        if module is None:
            continue
        if name not in saved:
            raise GankdError(f"{path}: the saved state has no {name!r}; was it written by another recipe?")
        try:
            module.load_state_dict(saved[name], strict=True)
        except RuntimeError as exc:
            raise GankdError(f"{path}: saved {name!r} does not fit this recipe: "
                             f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    torch.set_rng_state(payload["rng"])
    data = payload["progress"]
    return Progress(position=Position(**data["position"]), best_score=data["best_score"],
                    best_step=data["best_step"], history=list(data["history"]), elapsed_s=data["elapsed_s"],
                    qat_best_score=data.get("qat_best_score"), qat_best_step=data.get("qat_best_step"))
