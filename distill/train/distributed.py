"""Many devices: ``torchrun --nproc_per_node=N -m gankd.distill run RECIPE`` trains one run on N processes.

torchrun starts the processes and sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; this module is the one place that
reads them. Without torchrun (``WORLD_SIZE`` unset) :data:`SINGLE` stands for the one process and every collective
below is the identity, so the single-process run is the code path it always was.

The contract a distributed run keeps (docs/distill.md, "Many devices"):

- ``batch_size`` is the *global* batch. Every rank draws the same seeded permutation and keeps the rows
  ``rank::world`` of each batch (:meth:`World.rows`), so the sequence of global batches does not depend on N.
- Losses are means over a rank's rows and DistributedDataParallel averages gradients over ranks: with equal
  shards that is the gradient of the global-batch mean (the N=1 step), up to float summation order.
- Every decision that ends or changes the run (a NaN, a signal, the time budget, the validation score) is reduced
  or broadcast, so all ranks take it at the same step; only rank 0 writes files.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from gankd.distill.errors import GankdError

# A collective waits this long for a missing rank: rank 0 validates alone while the others wait in a broadcast, so
# it must outlast a validation. A rank that dies is noticed sooner: torchrun stops the others, and gloo sees the
# closed connection at once.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run (``size`` 1: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n``: strided (``rank::size``), so the ranks' shards are disjoint,
        cover the batch, and hold the same samples in the same groups as StyleGAN2's strided minibatch-stddev."""
        if n % self.size:
            raise GankdError(f"batch_size: a global batch of {n} does not split evenly over {self.size} processes; "
                             f"use a multiple of {self.size} (batch_size is the global batch, not per process)")
        return slice(self.rank, n, self.size)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a small tensor (losses to log, finiteness to agree on); returned on the CPU."""
        if not self.distributed:
            return values
        values = values.detach().to(self.device, torch.float64)
        torch.distributed.all_reduce(values)
        return (values / self.size).cpu()

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag is true on every rank when it is true on any (a signal or the budget seen by one rank)."""
        if not self.distributed:
            return flags
        values = torch.tensor([float(f) for f in flags], device=self.device)
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
        return tuple(bool(v) for v in values.tolist())

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (validation scores: computed once, the same everywhere)."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


SINGLE = World()


def under_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment, checked."""
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise GankdError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers: start distributed "
                         "runs with torchrun") from None
    if size < 1 or not 0 <= rank < size:
        raise GankdError(f"RANK={rank} is outside WORLD_SIZE={size}")
    return rank, size, local_rank


def start(device_name: str) -> World:
    """Join the process group torchrun set up: one process per device, gloo on CPU and nccl on CUDA."""
    rank, size, local_rank = env_world()
    if device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise GankdError("device: cuda was asked for but torch sees no CUDA device")
        if local_rank >= torch.cuda.device_count():
            raise GankdError(f"LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s): use --nproc_per_node <= the number of GPUs (one process per device)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        device = torch.device("cpu")
        torch.distributed.init_process_group("gloo", timeout=TIMEOUT)
    return World(rank=rank, size=size, local_rank=local_rank, device=device)


def stop() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class _Methods(nn.Module):
    """DDP hooks ``forward`` only; this routes ``forward_with_features`` through it too."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, method: str, *args):
        return self.module(*args) if method == "forward" else getattr(self.module, method)(*args)


class Synced:
    """A trained module under DistributedDataParallel, called as the module is (``m(x)``,
    ``m.forward_with_features(x)``): its gradients are averaged over ranks during ``backward``. The module itself
    stays unwrapped in :class:`~gankd.distill.train.stages.Nets` for frozen uses, EMA and checkpoints."""

    def __init__(self, module: nn.Module, world: World):
        from torch.nn.parallel import DistributedDataParallel

        # buffers (spectral-norm vectors) follow from identical weights on every rank: no broadcast each forward
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel).parameters else "broadcast_buffers"  # newer torch: the new name
        self.ddp = DistributedDataParallel(_Methods(module), device_ids=[world.device.index]
                                           if world.device.type == "cuda" else None, **{no_sync: False})

    def __call__(self, *args):
        return self.ddp("forward", *args)

    def forward_with_features(self, *args):
        return self.ddp("forward_with_features", *args)


def lost_rank_message(world: World, where: str, exc: BaseException, kept: str) -> str:
    import re

    from gankd.serve.errors import first_line

    detail = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc))  # gloo/nccl prefix their source file and line
    detail = detail.split(". ")[0][:120]  # the first sentence names what failed; gloo's advice follows it
    return (f"rank {world.rank} of {world.size}: another process of this run stopped or cannot be reached "
            f"({where}: {detail}); {kept}; continue with --resume")
