"""Data parallel by lmms-eval's conventions, for medbridge_vlm and the test-only models.

lmms-eval's evaluator reads ``lm.rank`` / ``lm.world_size`` to shard documents, and pads and
gathers request counts across ranks through ``lm.accelerator`` and tensors on ``lm.device``
(lmms_eval/evaluator.py). Under ``accelerate launch`` or ``torchrun`` (WORLD_SIZE > 1) the model
builds an ``accelerate.Accelerator`` (NCCL on GPUs, gloo on the CPU) and takes its global rank,
so several nodes form one run.

The vLLM engine runs its model outside that group: each rank builds its own engine on its own GPU(s)
(``vllm_device_plan``: LOCAL_RANK's group of ``tensor_parallel_size`` consecutive GPUs, or a share of
one when there are more ranks than groups), started under ``engine_environment`` (only those GPUs
visible, the launcher's variables hidden, so vLLM forms its own tensor-parallel group).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError


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


# ------------------------------------------------------------------ the vLLM engine's devices per rank

# Variables torchrun / accelerate launch set for the evaluation's own process group. A rank's vLLM engine is a
# group of its own (its workers rendezvous on a free local port), so it must not see them while it starts.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


@dataclass(frozen=True)
class DevicePlan:
    """The devices one rank's vLLM engine is built on."""

    local_rank: int
    local_world_size: int
    devices: tuple[str, ...]  # entries of CUDA_VISIBLE_DEVICES (ids or UUIDs); () = no GPU (vLLM's CPU backend)
    tensor_parallel_size: int
    gpu_memory_utilization: float  # per device, already divided among the ranks sharing it
    ranks_per_device: int

    def as_dict(self) -> dict[str, Any]:
        return {"local_rank": self.local_rank, "local_world_size": self.local_world_size,
                "devices": list(self.devices), "tensor_parallel_size": self.tensor_parallel_size,
                "gpu_memory_utilization": self.gpu_memory_utilization, "ranks_per_device": self.ranks_per_device}


def visible_gpus() -> list[str]:
    """The node's GPUs as this process may use them (CUDA_VISIBLE_DEVICES when set, else every /dev/nvidiaN;
    no CUDA call, so the parent of a vLLM engine never initialises CUDA): the judge's own rule, one code."""
    from medbridge.judges.server import visible_gpus as judge_visible_gpus

    return judge_visible_gpus()


def vllm_device_plan(gpus: Sequence[str], *, local_rank: int, local_world_size: int, tensor_parallel_size: int,
                     gpu_memory_utilization: float) -> DevicePlan:
    """Which of the node's ``gpus`` rank ``local_rank`` of ``local_world_size`` builds its engine on.

    The GPUs form ``len(gpus) // tensor_parallel_size`` groups of consecutive devices. With at least as many
    groups as ranks, rank r takes group r. With more ranks than groups and a whole number of ranks per
    group, consecutive ranks share a group and each gets ``gpu_memory_utilization / ranks_per_group``.
    Anything else is an error that says what would fit. No GPUs: the engine runs on vLLM's CPU backend."""
    tp = int(tensor_parallel_size)
    if tp < 1:
        raise MedbridgeError(f"tensor_parallel_size must be >= 1, got {tp}")
    if not 0 <= local_rank < local_world_size:
        raise MedbridgeError(f"LOCAL_RANK={local_rank} is not among the node's {local_world_size} ranks")
    if not gpus:
        return DevicePlan(local_rank, local_world_size, (), tp, gpu_memory_utilization, 1)
    n = len(gpus)
    shown = f"CUDA_VISIBLE_DEVICES={','.join(gpus)}" if "CUDA_VISIBLE_DEVICES" in os.environ else f"{n} GPUs"
    if n % tp:
        raise MedbridgeError(
            f"engine=vllm, tensor_parallel_size={tp}: this node's {n} GPUs ({shown}) do not divide into groups of "
            f"{tp}. Use a tensor_parallel_size that divides {n}, or set CUDA_VISIBLE_DEVICES to a multiple of {tp}.")
    groups = n // tp
    if local_world_size <= groups:
        group, per = local_rank, 1
    elif local_world_size % groups == 0:
        per = local_world_size // groups
        group = local_rank // per
    else:
        raise MedbridgeError(
            f"engine=vllm: {local_world_size} ranks on this node cannot share {groups} group(s) of {tp} GPU(s) "
            f"({shown}) evenly. Start {groups} rank(s) per node (or a multiple of {groups}), or change "
            "tensor_parallel_size.")
    return DevicePlan(local_rank, local_world_size, tuple(gpus[group * tp:(group + 1) * tp]), tp,
                      gpu_memory_utilization / per, per)


def local_topology() -> tuple[int, int]:
    """(LOCAL_RANK, LOCAL_WORLD_SIZE) as the launcher set them; (0, 1) for a single process."""
    def number(name: str, default: int) -> int:
        raw = os.environ.get(name)  # the launchers' variables, not MEDBRIDGE_* settings
        try:
            return default if raw is None else int(raw)
        except ValueError:
            raise MedbridgeError(f"{name}={raw!r} is not an integer (set by torchrun / accelerate launch)") from None

    world = launcher_world_size()
    return number("LOCAL_RANK", 0), number("LOCAL_WORLD_SIZE", world)


@contextmanager
def engine_environment(plan: DevicePlan) -> Iterator[None]:
    """While a rank's vLLM engine starts: only its own GPUs visible, the launcher's group variables hidden."""
    saved = {name: os.environ.get(name) for name in (*LAUNCHER_VARIABLES, "CUDA_VISIBLE_DEVICES")}
    try:
        for name in LAUNCHER_VARIABLES:
            os.environ.pop(name, None)
        if plan.devices:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(plan.devices)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
