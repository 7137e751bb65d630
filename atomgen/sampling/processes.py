"""The processes of a sampling run, as ``accelerate launch`` (torchrun) starts them, coordinated through
the output folder alone.

No ``torch.distributed`` process group is created: a sampling process needs nothing from the others
but their files, and under an initialised group the batch methods' separation energy gathers atoms
from every process (``atomgen.distributed``, the training semantics), which would couple one process's
batch with another's. The few points where a process waits for another (the plan written, every batch
written) are polls of the folder; if a process fails, torchrun ends the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes.

    Attributes:
        index: the global rank (``RANK``).
        count: the number of processes (``WORLD_SIZE``).
        local_index: the rank on this machine (``LOCAL_RANK``), which picks the GPU.
    """

    index: int = 0
    count: int = 1
    local_index: int = 0

    @classmethod
    def from_environment(cls) -> Processes:
        """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun and ``accelerate launch``)."""
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            try:
                values[name] = int(text)
            except ValueError:
                raise ValueError(f"environment variable {name}={text!r} is not an integer") from None
        processes = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if not 0 <= processes.index < processes.count:
            raise ValueError(f"RANK={processes.index} is not one of WORLD_SIZE={processes.count} processes")
        return processes

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def device(self, requested: str | None) -> torch.device:
        """The requested device; by default, or for a bare ``cuda``, this process's GPU, else the CPU."""
        if requested is not None:
            device = torch.device(requested)
            if not (device.type == "cuda" and device.index is None):
                return device
        elif not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_index % max(torch.cuda.device_count(), 1))


def wait_until(condition: Callable[[], bool], interval: float = 0.2) -> None:
    """Return once ``condition()`` holds, checking every ``interval`` seconds."""
    while not condition():
        time.sleep(interval)


__all__ = ["Processes", "wait_until"]
