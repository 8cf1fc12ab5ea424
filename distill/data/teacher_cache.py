"""The teacher cache: the frozen teacher run once over a crop pool, its answers kept in memory, on disk
(memory-mapped, keyed by the teacher's weights and the input bytes) or shared between DDP ranks."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gankd.distill.errors import GankdError
from gankd.serve.errors import first_line
from gankd.serve.files import publish_folder

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------------------------- teacher cache


def cache_teacher(teacher: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], batch_size: int,
                  max_cache_mb: float, folder: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen teacher once over the pool: (raw outputs, last feature maps), stored where the inputs are.

    ``inputs`` is the LR pool (N×C×H×W), or a tuple of what the teacher takes (GCFSR: LQ faces and their scales).
    Stages 2-3 of SDAKD keep the teacher frozen, so these cached answers are exactly what it would say each step.
    Outputs are kept raw (not clamped): the student matches the teacher, not the teacher's display image. The size
    is estimated from the first batch and checked against ``max_cache_mb`` before anything large is allocated.

    With ``folder`` the answers live on disk as ``.npy`` files, memory-mapped, under a key made of the teacher's
    weights and the exact input bytes: a resumed run, or any run on the same crops with the same teacher, maps them
    instead of running the teacher again (an hour-long run's pool costs the x4plus teacher many CPU minutes). Files
    are written to a temporary folder renamed when complete, so an interrupted run leaves no half-written cache.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    lr = inputs[0]
    if lr.dim() != 4 or lr.shape[0] < 1:
        raise GankdError(f"LR pool must be N×C×H×W with N ≥ 1, got shape {list(lr.shape)}")
    if batch_size < 1:
        raise GankdError(f"batch_size must be at least 1, got {batch_size}")
    if _world_size() > 1:
        return _shared_cache(teacher, inputs, batch_size, max_cache_mb, None if folder is None else Path(folder))
    if folder is not None:
        return _disk_cache(teacher, inputs, batch_size, max_cache_mb, Path(folder))
    # allocated outside inference mode: inference tensors could not be used as loss targets later
    return _run_teacher(teacher, inputs, batch_size, max_cache_mb, lambda name, shape: lr.new_empty(shape))


def _run_teacher(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                 allocate, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    lr = inputs[0]
    n = lr.shape[0]
    device = next(teacher.parameters(), lr).device
    was_training = teacher.training
    teacher.eval()
    try:
        outputs = features = None
        for start in _progress_batches(n, batch_size):
            with torch.inference_mode():
                out, feats = teacher.forward_with_features(*(x[start:start + batch_size].to(device) for x in inputs))
            if outputs is None:
                _check_cache_size(out, feats[-1], total or n, max_cache_mb)
                outputs = allocate("outputs", (n, *out.shape[1:]))
                features = allocate("features", (n, *feats[-1].shape[1:]))
            outputs[start:start + batch_size] = out.to(outputs.device, outputs.dtype)
            features[start:start + batch_size] = feats[-1].to(features.device, features.dtype)
    finally:
        teacher.train(was_training)
    return outputs, features


def _cache_key(teacher: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    tap = getattr(teacher, "feature_tap", None)  # a foreign teacher's named feature module (archs.foreign)
    if tap is not None:
        digest.update(f"feature_tap={tap}".encode())
    for x in inputs:
        digest.update(str(tuple(x.shape)).encode())
        digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def _disk_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import shutil
    import tempfile

    final = folder / _cache_key(teacher, inputs)
    if (final / "outputs.npy").is_file():
        log.info("teacher outputs mapped from %s (cached by an earlier run)", final)
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
        except OSError as exc:
            raise GankdError(f"teacher_cache_dir {str(folder)!r} is not writable ({first_line(exc)})") from None
        maps = {}

        def allocate(name, shape):
            maps[name] = np.lib.format.open_memmap(work / f"{name}.npy", "w+", np.float32, shape)
            return torch.from_numpy(maps[name])

        try:
            _run_teacher(teacher, inputs, batch_size, max_cache_mb, allocate)
            for array in maps.values():
                array.flush()
            maps.clear()
            publish_folder(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("teacher outputs cached on disk in %s", final)
    # copy-on-write maps: writable tensors that never change the files
    return tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in ("outputs", "features"))


def _world_size() -> int:
    """Processes of this run: > 1 under torchrun once :mod:`gankd.distill.train.distributed` joined the process
    group."""
    return torch.distributed.get_world_size() \
        if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def _shared_cache(teacher: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int, max_cache_mb: float,
                  folder: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torchrun: the pool's teacher answers computed once, split over the ranks, and summed into every rank.

    Each rank runs the teacher on a contiguous 1/N of the pool (the ranks' rows change every epoch, so every rank
    needs every answer); an all-reduce of zero-filled copies gives each rank the whole cache. Against every rank
    running the whole pool this divides the cache's wall time by up to N (docs/distill.md, "Many devices"). With
    ``folder``, rank 0 alone decides whether the disk cache is there and alone writes it; the other ranks keep theirs
    in memory, so nodes need not share a filesystem.
    """
    import torch.distributed as dist

    rank, size = dist.get_rank(), dist.get_world_size()
    final = folder / _cache_key(teacher, inputs) if folder is not None and rank == 0 else None
    hit = [final is not None and (final / "outputs.npy").is_file()]
    dist.broadcast_object_list(hit, src=0)
    if hit[0]:
        mapped = tuple(torch.from_numpy(np.load(final / f"{name}.npy", mmap_mode="c")) for name in
                       ("outputs", "features")) if rank == 0 else None
        shapes = [None if mapped is None else [tuple(t.shape) for t in mapped]]
        dist.broadcast_object_list(shapes, src=0)
        cache = mapped or tuple(inputs[0].new_zeros(shape, dtype=torch.float32) for shape in shapes[0])
        for tensor in cache:  # rank 0 adds a copy of its map (which stays read-only) to the others' zeros
            _sum_over_ranks(tensor.clone() if rank == 0 else tensor)
        log.info("teacher outputs mapped from %s (cached by an earlier run) and shared by %d processes", final, size)
        return cache
    n = inputs[0].shape[0]
    per_rank = math.ceil(n / size)
    start, stop = min(rank * per_rank, n), min((rank + 1) * per_rank, n)
    mine = _run_teacher(teacher, tuple(x[start:stop] for x in inputs), batch_size, max_cache_mb,
                        lambda name, shape: inputs[0].new_empty(shape), total=n) if stop > start else None
    shapes = [None if mine is None else [tuple(t.shape[1:]) for t in mine]]
    dist.broadcast_object_list(shapes, src=0)  # rank 0 always has rows: a rank past the end learns the shapes
    cache = tuple(inputs[0].new_zeros((n, *shape), dtype=torch.float32) for shape in shapes[0])
    for i, tensor in enumerate(cache):
        if mine is not None:
            tensor[start:stop] = mine[i]
        _sum_over_ranks(tensor)
    if final is not None:
        _write_disk_cache(final, cache)
    return cache


def _sum_over_ranks(tensor: torch.Tensor, rows_per_call: int = 64) -> None:
    """In-place sum over ranks; nccl reduces on the GPU, so CPU tensors go through it in blocks of rows."""
    import torch.distributed as dist

    if dist.get_backend() != "nccl" or tensor.is_cuda:
        dist.all_reduce(tensor)
        return
    device = torch.device("cuda", torch.cuda.current_device())
    for start in range(0, tensor.shape[0], rows_per_call):
        block = tensor[start:start + rows_per_call].to(device)
        dist.all_reduce(block)
        tensor[start:start + rows_per_call] = block.cpu()


def _write_disk_cache(final: Path, cache: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Rank 0 keeps the shared cache on disk as a one-process run would (tmp folder renamed when complete)."""
    import shutil
    import tempfile

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-", dir=final.parent))
    except OSError as exc:
        raise GankdError(f"teacher_cache_dir {str(final.parent)!r} is not writable ({first_line(exc)})") from None
    try:
        for name, tensor in zip(("outputs", "features"), cache):
            np.save(work / f"{name}.npy", tensor.numpy())
        publish_folder(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("teacher outputs cached on disk in %s", final)


def _check_cache_size(out: torch.Tensor, feat: torch.Tensor, n: int, max_cache_mb: float) -> None:
    per_crop = (out[0].numel() * out.element_size()) + (feat[0].numel() * feat.element_size())
    needed_mb = per_crop * n / 2**20
    if needed_mb > max_cache_mb:
        raise GankdError(f"the teacher cache needs {needed_mb:.1f} MB for {n} crops, over max_cache_mb="
                         f"{max_cache_mb:g}; lower the pool's crop count or hr_size, or raise max_cache_mb")


def _progress_batches(n: int, batch_size: int):
    from tqdm import tqdm

    return tqdm(range(0, n, batch_size), desc="teacher cache", unit="batch", disable=not sys.stderr.isatty(),
                leave=False)


