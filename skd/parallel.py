"""The one answer to "is there a process group?", for every module that asks (norms, losses,
metrics, the engine). torchrun's set-up itself lives in skd.engine.distributed."""
from __future__ import annotations

import torch.distributed as dist


def process_group_active() -> bool:
    """True when torch.distributed is built and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Ranks in `group` (default group), or 1 without a process group."""
    return dist.get_world_size(group) if process_group_active() else 1


def rank() -> int:
    """This process's rank in the default group, or 0 without a process group."""
    return dist.get_rank() if process_group_active() else 0
