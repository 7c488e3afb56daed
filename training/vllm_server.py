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

The command itself is built here too (``vllm_serve_command``, ``vllm_serve_shell``): TRL's own flags for its
client, data parallel 1, and the recipe's image budget (training/image_budget.py) as ``--mm-processor-kwargs``.
The entry point lives in training/model_utils.py (``python -m medbridge.training.model_utils vllm-serve``),
which imports this module; this module imports nothing of model_utils.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.training.image_budget import DEFAULT_MIN_PIXELS, PAPER_MAX_PIXELS, image_geometry

__all__ = [
    "installed_vllm_version",
    "recipe_fields",
    "serve_main",
    "valid_tensor_parallel_sizes",
    "visible_gpu_count",
    "vllm_python",
    "vllm_serve_command",
    "vllm_serve_shell",
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


# ------------------------------------------------------------ the server command TRL's server mode talks to


# vLLM registers the routes TRL's client needs for multimodal prompts only with this flag (vLLM >= 0.30).
SCALE_OUT_FLAG = "--enable-scale-out"
SCALE_OUT_MIN_VLLM = "0.30.0"


def vllm_serve_command(
    model: str,
    *,
    max_pixels: int,
    min_pixels: int,
    tensor_parallel_size: int = 1,
    port: int = 8000,
    host: str = "0.0.0.0",
    revision: str | None = None,
    python: str | None = None,
    vllm_version: str | None = None,
) -> list[str]:
    """The vLLM server command that TRL 1.16's server mode talks to, with the recipe's image budget.

    ``trl vllm-serve`` is deprecated in TRL 1.16 (it only re-runs ``vllm serve``); this asks TRL's own
    command builder for the flags its client needs (weight transfer, processed logprobs) and runs vLLM's
    server directly (with ``VLLM_SERVER_DEV_MODE=1`` in the environment). Data parallel stays 1: TRL's
    server documents that data parallel > 1 errors on dense models (vLLM PR #30739).

    ``python``: the interpreter of the environment vLLM is installed in (the command becomes
    ``python -m vllm.entrypoints.cli.main serve ...``); default the ``vllm`` program. ``vllm_version``: the
    version that will run, which decides ``--enable-scale-out`` (TRL decides it from the vLLM importable
    here, which is not the server's when vLLM has an environment of its own); None keeps TRL's decision.
    """
    from packaging.version import Version
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    script_args = ScriptArguments(
        model=model,
        revision=revision,
        tensor_parallel_size=tensor_parallel_size,
        data_parallel_size=1,
        host=host,
        port=port,
    )
    command = build_command(script_args, ["--mm-processor-kwargs", json.dumps(image_geometry(max_pixels, min_pixels))])
    serve = command[command.index("serve") :]
    if vllm_version is not None:
        serve = [arg for arg in serve if arg != SCALE_OUT_FLAG]
        if Version(vllm_version) >= Version(SCALE_OUT_MIN_VLLM):
            serve.insert(serve.index("--weight-transfer-config"), SCALE_OUT_FLAG)
    prefix = ["vllm"] if python is None else [python, "-m", "vllm.entrypoints.cli.main"]
    return [*prefix, *serve]


def vllm_serve_shell(recipe: str, tensor_parallel_size: int, port: int, **command_kwargs: Any) -> str:
    """``VLLM_SERVER_DEV_MODE=1 vllm serve ...`` for a recipe's model and image budget (used by the SLURM script);
    ``command_kwargs`` go to :func:`vllm_serve_command` (``python``, ``vllm_version``)."""
    config = recipe_fields(recipe)
    command = vllm_serve_command(
        config["model_name_or_path"],
        max_pixels=config.get("max_pixels", PAPER_MAX_PIXELS),
        min_pixels=config.get("min_pixels", DEFAULT_MIN_PIXELS),
        tensor_parallel_size=tensor_parallel_size,
        port=port,
        revision=config.get("model_revision"),
        **command_kwargs,
    )
    return "VLLM_SERVER_DEV_MODE=1 " + shlex.join(command)


def recipe_fields(recipe: str) -> dict[str, Any]:
    """A recipe file's mapping (size-limited read), with model_name_or_path required."""
    from medbridge.harness_ext.limited_io import CONFIG_LIMIT_BYTES, load_yaml

    config = load_yaml(recipe, what="recipe", limit=CONFIG_LIMIT_BYTES) or {}
    if not isinstance(config, dict) or not config.get("model_name_or_path"):
        raise MedbridgeError(f"recipe {recipe}: model_name_or_path is not set")
    return config


# ------------------------------------------------------------ vllm-serve: check the node, print the command, run it


def _usage() -> int:
    print(
        "usage: python -m medbridge.training.model_utils vllm-serve RECIPE.yaml [TENSOR_PARALLEL|auto] [PORT] "
        "[--dry-run]",
        file=sys.stderr,
    )
    return 2


def _serve(recipe: str, tensor_parallel: str, port: int, dry_run: bool) -> int:
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
