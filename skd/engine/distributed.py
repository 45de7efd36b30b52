"""Process-group set-up from torchrun's environment, and the few helpers the engine needs.

`torchrun --nproc_per_node=K -m skd.train ...` sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
`python -m skd.train` sets none of them and runs as a single process. NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from skd.errors import SkdError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (if any) and pick this rank's device.

    device: "cpu", "cuda" or "auto" (CUDA when available). Under torchrun with CUDA, each rank
    takes the GPU of its LOCAL_RANK.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank, local_rank, world_size)
    if device.startswith("cuda"):
        dev = torch.device("cuda", local_rank if info.enabled else torch.device(device).index or 0)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return info, dev


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar logs over ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's value on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def agree_max(value: int, device: torch.device) -> int:
    """The largest of every rank's `value` (identity in a single process): a decision all ranks
    take together, e.g. to stop when any of them got a signal."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's `obj` on rank 0, in rank order (None on the other ranks); [obj] in a single
    process. Pickled over the process group: for small objects such as random states."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def share_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity in a single process); pickled, for small objects."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_decides(decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and give its result to every rank; an SkdError it raises is
    raised on every rank with the same message, so all of them stop at once (identity in a
    single process)."""
    result, error = None, None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        try:
            result = decide()
        except SkdError as e:
            error = str(e)
    result, error = share_from_main((result, error))
    if error is not None:
        raise SkdError(error)
    return result
