"""Several processes of one stage (torchrun / accelerate launch): who is who, and how they meet.

Stages that split their items over processes (encode: clips, generate: videos) read their place
from the launcher's environment and exchange only small Python objects at the end, over gloo, so
the same code runs on CPUs and GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from lamo_cli.errors import LamoError

BARRIER_TIMEOUT = timedelta(hours=24)  # ranks finish at different times; the default 30 min is too short


@dataclass
class Ranks:
    """This process's place among the processes of a launch (torchrun, accelerate launch; one
    process without a launcher), and a gloo group for CPU-side messages between them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None
    created_default_group: bool = False

    @classmethod
    def from_env(cls) -> "Ranks":
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
            raw = os.environ.get(name)
            try:
                values[name] = int(raw) if raw not in (None, "") else default
            except ValueError:
                raise LamoError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun or unset it") from None
        world, rank = values["WORLD_SIZE"], values["RANK"]
        if world < 1 or not 0 <= rank < world:
            raise LamoError(f"RANK={rank} / WORLD_SIZE={world} are inconsistent; launch with torchrun or unset them")
        local = values["LOCAL_RANK"] if values["LOCAL_RANK"] is not None else rank
        return cls(rank, world, local)

    def start(self) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            # The launcher's group may be NCCL; a separate gloo group carries our CPU-side messages.
            self.group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
            return
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:
            raise LamoError(f"WORLD_SIZE={self.world_size} but {', '.join(missing)} unset; launch with torchrun or accelerate launch")
        dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=BARRIER_TIMEOUT)
        self.created_default_group = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def close(self) -> None:
        if self.created_default_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.created_default_group = False

    def default_device(self) -> str:
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank}" if self.world_size > 1 else "cuda"
        return "cpu"
