"""Multi-process data parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

``torchrun --nproc-per-node 2 -m kdsearch distill ...`` starts one process per worker with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment. Every process runs the same
command; the trainer shards each epoch's shuffled indices across ranks, DDP averages the
student's gradients, and only rank 0 evaluates, writes checkpoints and model files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DistributedContext", "process_rank", "is_main_process"]


def process_rank() -> int:
    """This process's rank under ``torchrun`` (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True for the process that writes files and prints (rank 0, or a plain run)."""
    return process_rank() == 0


@dataclass
class DistributedContext:
    """The process group of one training run; inert (``active=False``) in a plain run.

    Attributes:
        rank: this process's rank.
        world_size: number of processes.
        active: a process group is in use.
        owns_group: this context initialised the group, so :meth:`close` destroys it.
    """

    rank: int = 0
    world_size: int = 1
    active: bool = False
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: torch.device) -> "DistributedContext":
        """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        owns = not dist.is_initialized()
        if owns:
            if device.type == "cuda":  # NCCL collectives run on the current device: this rank's GPU
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), True, owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum ``values`` element-wise over all ranks (identity in a plain run)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)  # (n,)
        dist.all_reduce(t)
        return t.tolist()

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of parameters DDP does not manage (learned loss connectors)."""
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self, wait: bool = True) -> None:
        """Wait for every rank (when ``wait``), then tear the group down if this context made it."""
        if self.active and self.owns_group:
            import torch.distributed as dist

            if wait:
                dist.barrier()
            dist.destroy_process_group()
        self.active = False
