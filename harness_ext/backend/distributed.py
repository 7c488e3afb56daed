"""Data parallel by lmms-eval's conventions, for medbridge_vlm and the test-only models.

lmms-eval's evaluator reads ``lm.rank`` / ``lm.world_size`` to shard documents, and pads and
gathers request counts across ranks through ``lm.accelerator`` and tensors on ``lm.device``
(lmms_eval/evaluator.py). Under ``accelerate launch`` or ``torchrun`` (WORLD_SIZE > 1) the model
builds an ``accelerate.Accelerator`` (NCCL on GPUs, gloo on the CPU) and takes its global rank,
so several nodes form one run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def launcher_world_size() -> int:
    """WORLD_SIZE as set by torchrun / accelerate launch (1 when not launched by them)."""
    raw = os.environ.get("WORLD_SIZE", "1")  # the launchers' variable, not a MEDBRIDGE_* setting
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={raw!r} is not an integer (set by torchrun / accelerate launch)") from None


class DataParallel:
    """Mixin for an lmms-eval model: call ``setup_data_parallel(device)`` in ``__init__``."""

    _device: Any = None

    def setup_data_parallel(self, device: str = "cpu") -> str:
        """Join the launcher's process group if there is one; returns the device this rank uses
        (``cuda`` or ``auto`` become ``cuda:<LOCAL_RANK>`` when several processes share a node)."""
        import torch

        if launcher_world_size() > 1:
            from accelerate import Accelerator

            on_cpu = str(device) == "cpu" or (device == "auto" and not torch.cuda.is_available())
            self.accelerator = Accelerator(cpu=on_cpu)
            if self.accelerator.num_processes == 1 and on_cpu:
                # lmms-eval's CLI builds Accelerator() before the model; on a machine without a GPU that
                # settles accelerate's shared state as one process (accelerate forms a CPU process group
                # only when asked with cpu=True). Rebuild it as the multi-process CPU (gloo) state.
                from accelerate.state import AcceleratorState

                AcceleratorState._reset_state(reset_partial_state=True)
                self.accelerator = Accelerator(cpu=True)
            if self.accelerator.num_processes != launcher_world_size():
                raise RuntimeError(
                    f"WORLD_SIZE={launcher_world_size()} but accelerate formed a group of "
                    f"{self.accelerator.num_processes}; launch with torchrun or accelerate launch"
                )
            self._rank = self.accelerator.process_index  # global: ranks on other nodes continue the count
            self._world_size = self.accelerator.num_processes
            if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
                device = f"cuda:{self.accelerator.local_process_index}"
        elif device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        return str(self._device)

    @property
    def device(self):
        return self._device

    def rank_path(self, path: str | os.PathLike | None) -> str | None:
        """A per-rank file name for files each process writes (``stats.json`` -> ``stats.rank1.json``)."""
        if path is None or self._world_size <= 1:
            return None if path is None else str(path)
        p = Path(path)
        return str(p.with_name(f"{p.stem}.rank{self._rank}{p.suffix}"))
