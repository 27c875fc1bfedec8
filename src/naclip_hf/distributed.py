"""Running one job on several processes: `naclip segment`, `naclip label` and `naclip evaluate` under `torchrun` or
`accelerate launch`.

`ProcessGroup.start()` joins the processes when the launcher started several (`WORLD_SIZE > 1`): gloo on CPU,
NCCL/XPU through accelerate on accelerators, one device per process (`cuda:LOCAL_RANK`). Items are split by
position (process `r` of `W` takes items `r, r + W, r + 2W, ...`), so the split depends only on the item list, never
on timing. Counts are exchanged as int64 sums, so a result summed over processes equals the single-process one. A
single process imports neither torch, accelerate nor `torch.distributed`.

Example:

```python
>>> group = ProcessGroup.start()
>>> mine = group.shard(images)  # this process's images
>>> totals = group.sum_array(counts)  # the same int64 array on every process
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

@dataclass
class ProcessGroup:
    """This process's place among the processes of a run: `rank` of `world_size`, and its `device`.

    `ProcessGroup.start()` joins the processes when launched with several (`WORLD_SIZE > 1`), else describes the
    single process without importing `torch.distributed`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None
    _state: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is process 0 (which prints the progress bar and the final summary)."""
        return self.rank == 0

    @property
    def model_device(self) -> str | None:
        """Where this process loads its model: its accelerator under a multi-process launch, else None (the
        loader's default)."""
        if self.world_size > 1 and self.device is not None and not self.device.startswith("cpu"):
            return self.device
        return None

    @classmethod
    def start(cls) -> ProcessGroup:
        """Join the processes of a `torchrun` / `accelerate launch` run (gloo when there is no accelerator; one
        device per process), or return the single-process group.

        Raises `ValueError` when the launcher asked for several processes but they joined a group of another size.
        """
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return cls()
        import torch
        from accelerate.state import PartialState

        has_device = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
        state = PartialState(cpu=not has_device)  # a state the caller set up already is reused as it is
        if state.num_processes != world_size:
            raise ValueError(
                f"Launched with WORLD_SIZE={world_size} but the processes joined a group of {state.num_processes}; "
                "launch with `torchrun --nproc_per_node N` or `accelerate launch --multi_gpu --num_processes N`."
            )
        return cls(state.process_index, state.num_processes, state.local_process_index, str(state.device), state)

    def shard(self, items: Sequence[T]) -> list[T]:
        """The items this process handles: positions `rank, rank + world_size, ...` (see `shard_for_process`)."""
        return shard_for_process(items, self.rank, self.world_size)

    def gather(self, value: Any) -> list[Any]:
        """`value` of every process, in rank order, on every process (picklable values)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def sum_array(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of an integer array over the processes, on every process: int64, same shape (e.g. the
        confusion matrices of an evaluation). On one process, an int64 copy of `values`."""
        values = np.array(values, dtype=np.int64)
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(values)
        if dist.get_backend() == "nccl":
            tensor = tensor.to(self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy()

    def sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sum of integer `values` over the processes, on every process."""
        return [int(value) for value in self.sum_array(np.array([int(v) for v in values], dtype=np.int64))]

    def rounds(self, num_items: int) -> int:
        """How many items the busiest process handles: loops that exchange counts once per item (e.g. for one
        progress bar) run this many times on every process, idle ones passing None."""
        return -(-num_items // self.world_size)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def shard_for_process(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Items `rank, rank + world_size, rank + 2 * world_size, ...` of `items`: every item goes to exactly one of
    the `world_size` processes, the same one on every run with the same items.

    Example:

    ```python
    >>> shard_for_process(["a", "b", "c", "d", "e"], rank=1, world_size=2)
    ['b', 'd']
    ```
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size}).")
    return list(items[rank::world_size])


__all__ = ["ProcessGroup", "shard_for_process"]
