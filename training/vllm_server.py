"""The vLLM server node of a multi-node run (``training/slurm/train_multinode.slurm``).

    python -m medbridge.training.model_utils vllm-serve RECIPE.yaml [TENSOR_PARALLEL|auto] [PORT] [--dry-run]

Checked on the server node itself, before vLLM starts, so the job fails in seconds rather than after a
model load:

* **Every GPU of the node serves.** ``auto`` (the default) is tensor parallel = the GPUs this process sees
  (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``). Data parallel stays 1 (TRL: > 1 errors on dense
  models), so a tensor-parallel size that leaves GPUs idle is refused unless ``MEDBRIDGE_ALLOW_IDLE_GPUS=1``,
  and one that does not divide the model's attention heads (vLLM shards heads) is refused with the sizes
  that do: give the server node that many GPUs (a heterogeneous SLURM job, see the script).
* **The vLLM that runs decides the flags.** vLLM may live in an environment of its own: ``VLLM_PYTHON``
  names its interpreter (default: the one of the ``vllm`` program on PATH, else this Python). Its installed
  version is read there, and ``--enable-scale-out`` (the routes TRL's client uses for multimodal prompts,
  vLLM >= 0.30) is set from that version, not from whatever vLLM this environment can import.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError

__all__ = [
    "installed_vllm_version",
    "serve_main",
    "valid_tensor_parallel_sizes",
    "visible_gpu_count",
    "vllm_python",
]

ALLOW_IDLE_ENV = "MEDBRIDGE_ALLOW_IDLE_GPUS"
_VERSION_SCRIPT = (
    "import importlib.metadata as m\n"
    "names = m.packages_distributions().get('vllm') or []\n"
    "print(m.version(names[0]) if names else '')\n"
)


def vllm_python() -> str:
    """The interpreter of the environment vLLM runs in: $VLLM_PYTHON, else the ``vllm`` program's, else ours."""
    chosen = os.environ.get("VLLM_PYTHON")
    if chosen:
        if shutil.which(chosen) is None:
            raise MedbridgeError(f"VLLM_PYTHON={chosen}: no such executable on this node")
        return chosen
    program = shutil.which("vllm")
    if program:
        try:
            first = Path(program).read_bytes()[:512].split(b"\n", 1)[0].decode("utf-8", "replace")
        except OSError:
            first = ""
        if first.startswith("#!"):
            interpreter = shlex.split(first[2:].strip())
            if interpreter and Path(interpreter[-1]).name.startswith("python"):
                return interpreter[-1]
    return sys.executable


def installed_vllm_version(python: str) -> str:
    """The version of the vLLM distribution importable by ``python`` (read from its metadata, no vLLM import)."""
    try:
        out = subprocess.run(
            [python, "-c", _VERSION_SCRIPT], capture_output=True, text=True, timeout=120, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        raise MedbridgeError(f"cannot ask {python} for its vLLM version ({err})") from None
    if not out:
        raise MedbridgeError(
            f"no vLLM is installed in the environment of {python}: install vLLM there (pip install vllm), "
            "or set VLLM_PYTHON to the python of the environment that has it"
        )
    return out.splitlines()[-1]


def visible_gpu_count() -> int | None:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else ``nvidia-smi -L``; None if neither says."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(line.startswith("GPU ") for line in out.splitlines())


def _head_counts(config: Any) -> tuple[list[int], list[int]]:
    """(attention head counts, key-value head counts) of a config and its sub-configs (text, vision)."""
    heads, kv_heads = [], []
    seen = set()
    stack = [config]
    while stack:
        cfg = stack.pop()
        if id(cfg) in seen:
            continue
        seen.add(id(cfg))
        for name in ("num_attention_heads", "num_heads"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                heads.append(value)
        value = getattr(cfg, "num_key_value_heads", None)
        if isinstance(value, int) and value > 0:
            kv_heads.append(value)
        for name in ("text_config", "vision_config"):
            sub = getattr(cfg, name, None)
            if sub is not None:
                stack.append(sub)
    return heads, kv_heads


def valid_tensor_parallel_sizes(model: str, upto: int, revision: str | None = None) -> list[int]:
    """Tensor-parallel sizes <= ``upto`` that vLLM can shard the model's heads by (every attention head count
    divisible; key-value heads divisible, or replicated evenly when fewer than the size)."""
    from transformers import AutoConfig

    heads, kv_heads = _head_counts(AutoConfig.from_pretrained(model, revision=revision))
    if not heads:
        raise MedbridgeError(f"{model}: its config names no attention head count; set the tensor parallel size")
    return [
        size
        for size in range(1, upto + 1)
        if all(h % size == 0 for h in heads) and all(k % size == 0 or size % k == 0 for k in kv_heads)
    ]


def _usage() -> int:
    print(
        "usage: python -m medbridge.training.model_utils vllm-serve RECIPE.yaml [TENSOR_PARALLEL|auto] [PORT] "
        "[--dry-run]",
        file=sys.stderr,
    )
    return 2


def _serve(recipe: str, tensor_parallel: str, port: int, dry_run: bool) -> int:
    from medbridge.training.model_utils import recipe_fields, vllm_serve_shell

    config = recipe_fields(recipe)
    model, revision = config["model_name_or_path"], config.get("model_revision")
    gpus = visible_gpu_count()
    if tensor_parallel == "auto":
        if not gpus:
            raise MedbridgeError("tensor parallel 'auto': this node shows no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi)")
        size = gpus
    elif tensor_parallel.isdigit() and int(tensor_parallel) > 0:
        size = int(tensor_parallel)
    else:
        raise MedbridgeError(f"tensor parallel {tensor_parallel!r}: give a positive number or 'auto'")
    if gpus is not None and size > gpus:
        raise MedbridgeError(f"tensor parallel {size} needs {size} GPUs; this node shows {gpus}")
    valid = valid_tensor_parallel_sizes(model, max(size, gpus or 0), revision)
    if size not in valid:
        raise MedbridgeError(
            f"tensor parallel {size} does not divide the attention heads of {model}; sizes that do: "
            f"{', '.join(map(str, valid))}. Give the server node that many GPUs (a heterogeneous job, see "
            "training/slurm/train_multinode.slurm) or set VLLM_TP to one of them"
        )
    if gpus is not None and size < gpus and not settings.get_flag(ALLOW_IDLE_ENV):
        raise MedbridgeError(
            f"tensor parallel {size} leaves {gpus - size} of this node's {gpus} GPUs idle (data parallel stays 1: "
            f"TRL's server mode). Use VLLM_TP={max(v for v in valid if v <= gpus)}, give the server node exactly "
            f"{size} GPU(s) (a heterogeneous job), or set {ALLOW_IDLE_ENV}=1 to accept the idle GPUs"
        )
    python = vllm_python()
    version = installed_vllm_version(python)
    shell = vllm_serve_shell(recipe, size, port, python=python, vllm_version=version)
    scale_out = "--enable-scale-out" in shlex.split(shell)
    print(
        f"[medbridge] vLLM {version} ({python}); tensor parallel {size} of {gpus if gpus is not None else '?'} "
        f"GPU(s); scale-out routes {'on' if scale_out else 'off (vLLM < 0.30: no multimodal prompts over TRL)'}",
        flush=True,
    )
    print(shell, flush=True)
    if dry_run:
        return 0
    command = shlex.split(shell.removeprefix("VLLM_SERVER_DEV_MODE=1 "))
    os.execvpe(command[0], command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
    return 0  # not reached: the server replaced this process


def serve_main(argv: list[str]) -> int:
    """``vllm-serve RECIPE [TP|auto] [PORT] [--dry-run]`` (see the module docstring): print the server command
    and replace this process with it; ``--dry-run`` prints it only. Bad settings exit 2 with one paragraph."""
    from medbridge.error_handling import run_guarded

    dry_run = "--dry-run" in argv
    args = [a for a in argv if a != "--dry-run"]
    if not 2 <= len(args) <= 4 or args[0] != "vllm-serve":
        return _usage()
    tensor_parallel = args[2] if len(args) > 2 else "auto"
    if len(args) > 3 and not args[3].isdigit():
        return _usage()
    port = int(args[3]) if len(args) > 3 else 8000
    return run_guarded(
        lambda: _serve(args[1], tensor_parallel, port, dry_run),
        ["vllm-serve", *args[1:]],
        lambda: "medbridge vllm-serve",
    )
