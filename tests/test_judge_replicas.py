"""Judge replicas (issue 26): several base URLs of one judge behind one client. Requests go to the least busy
replica; a replica that dies mid-run is routed around (counted, warned) and no verdict is lost; replicas that
serve different models are refused by name; one verdict cache serves them all; ``medbridge judge serve
--replicas N`` starts N servers, each on its own GPU group, and prints the URL list."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from medbridge.harness_ext.errors import MedbridgeError, SettingError
from medbridge.judges import JudgeConfig, JudgePool, VerdictCache, choice_inputs, http
from medbridge.judges import server as vllm_server
from medbridge.tests.fake_judge_server import MODEL_NAME, FakeJudgeServer, stub_judge_config
from medbridge.tests.judge_redteam import OPTIONS, QUESTION

from medbridge import judges as judge


def _jobs(n: int) -> list[dict]:
    return [
        choice_inputs(QUESTION, OPTIONS, f"<think>case {i}</think><answer>{'ABCD'[i % 4]}</answer>") for i in range(n)
    ]


def _run(config: JudgeConfig, inputs):
    async def go():
        client = judge.JudgeClient(config)
        try:
            return await client.judge_many(judge.MCQ_CHOICE, inputs), client
        finally:
            await client.aclose()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_stub(port: int, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "medbridge.tests.fake_judge_server", "--port", str(port), "--delay", str(delay)]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http.get_text(f"http://127.0.0.1:{port}", "/health", timeout_s=1)
            return proc
        except http.JudgeHTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stub judge did not start")


# ---------------------------------------------------------------------------------------- settings


def test_replicas_are_a_comma_separated_setting_or_a_list_and_the_key_stays_bound():
    env = {
        "MEDBRIDGE_JUDGE_BASE_URL": "http://a:8000/v1, http://b:8000/v1",
        "MEDBRIDGE_JUDGE_MODEL": "judge",
        "MEDBRIDGE_JUDGE_API_KEY": "sk-replicas",
    }
    cfg = JudgeConfig.resolve(env=env)
    assert cfg.base_urls == ("http://a:8000/v1", "http://b:8000/v1") and cfg.api_key == "sk-replicas"
    # A task file's list of the same replicas (any order, trailing slashes) keeps the environment's key ...
    same = JudgeConfig.resolve(metadata={"judge": {"base_url": ["http://b:8000/v1/", "http://a:8000/v1"]}}, env=env)
    assert same.base_urls == ("http://b:8000/v1/", "http://a:8000/v1") and same.api_key == "sk-replicas"
    # ... a list with one more replica does not.
    more = JudgeConfig.resolve(metadata={"judge": {"base_url": ["http://a:8000/v1", "http://c:8000/v1"]}}, env=env)
    assert more.api_key is None
    with pytest.raises(SettingError, match="twice"):
        JudgeConfig(base_url="http://a:8000/v1,http://a:8000/v1/", model="judge")
    with pytest.raises(SettingError, match="not an http"):
        JudgeConfig(base_url="http://a:8000/v1,ftp://b/v1", model="judge")


# ----------------------------------------------------------------------------------- spreading


def test_least_in_flight_spreads_requests_over_replicas_with_one_cache(tmp_path):
    with FakeJudgeServer(delay_s=0.2) as one, FakeJudgeServer(delay_s=0.2) as two:
        cfg = stub_judge_config(f"{one.base_url},{two.base_url}", tmp_path, concurrency=4)
        start = time.monotonic()
        verdicts, client = _run(cfg, _jobs(32))
        elapsed = time.monotonic() - start
        assert [v.letter for v in verdicts] == ["ABCD"[i % 4] for i in range(32)]
        # 4 in flight per replica, 8 in all: 4 waves of 0.2 s, where one replica would need 8.
        assert one.state.counts["requests"] == two.state.counts["requests"] == 16
        assert one.state.max_inflight == two.state.max_inflight == 4
        assert elapsed < 8 * 0.2, elapsed
        # One verdict cache: a rerun through either replica alone asks nothing.
        _, alone = _run(cfg, _jobs(32))
    assert alone.stats["requests"] == 0 and alone.stats["cache_hits"] == 32
    assert VerdictCache(tmp_path / "cache.sqlite").count() == 32


@pytest.mark.slow
def test_a_replica_killed_mid_run_is_routed_around_and_no_verdict_is_lost(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ports = [_free_port(), _free_port()]
    stubs = [_start_stub(port, delay=0.05) for port in ports]
    urls = [f"http://127.0.0.1:{port}/v1" for port in ports]
    jobs = _jobs(60)
    pool = JudgePool(stub_judge_config(",".join(urls), tmp_path, concurrency=2, max_attempts=6))
    try:
        futures = [pool.submit(judge.MCQ_CHOICE, job) for job in jobs]
        while sum(f.done() for f in futures) < 12:
            time.sleep(0.01)
        answered_by_first = http.get_json(urls[0].removesuffix("/v1"), "/stats")["counts"]["requests"]
        stubs[0].kill()  # SIGKILL: its in-flight requests die with it
        stubs[0].wait()
        verdicts = [f.result(timeout=120) for f in futures]
        answered_by_second = http.get_json(urls[1].removesuffix("/v1"), "/stats")["counts"]["requests"]
        summary = pool.client.replicas.summary()
    finally:
        pool.close()
        for stub in stubs:
            stub.kill()
            stub.wait()
    assert [v.letter for v in verdicts] == ["ABCD"[i % 4] for i in range(60)]  # every verdict landed
    assert pool.stats["failed"] == 0 and VerdictCache(tmp_path / "cache.sqlite").count() == 60
    assert answered_by_first > 0 and answered_by_second > 0  # both replicas answered
    dead, alive = summary
    assert dead["failures"] >= 1 and pool.stats["replica_failures"] >= 1 and alive["answered"] >= 60 - 12
    assert f"judge replica {urls[0]} failed" in caplog.text and "routing around it" in caplog.text


def test_replicas_serving_different_models_are_refused_by_name(tmp_path, caplog, capsys):
    with FakeJudgeServer(root="/models/judge-32b") as one, FakeJudgeServer(root="/models/judge-7b") as two:
        cfg = stub_judge_config(f"{one.base_url},{two.base_url}", tmp_path)
        verdicts, client = _run(cfg, _jobs(3))
        assert [(v.status, v.error) for v in verdicts] == [("failed", "JudgeRefused")] * 3
        assert one.state.counts["requests"] == two.state.counts["requests"] == 0  # no verdict asked at all
        for name in (one.base_url, two.base_url, "/models/judge-32b", "/models/judge-7b"):
            assert name in client.refused and name in caplog.text
        assert VerdictCache(tmp_path / "cache.sqlite").count() == 0
        # The same refusal from `medbridge judge check --probe`.
        from medbridge.cli import main

        code = main(["judge", "check", "--base-url", f"{one.base_url},{two.base_url}", "--model", MODEL_NAME,
                     "--probe"])
    captured = capsys.readouterr()
    assert code == 1 and "judge refused" in captured.err and "/models/judge-7b" in captured.err
    assert captured.out.count("is up and serves") == 2


def test_a_replica_down_at_start_is_checked_before_its_first_verdict(tmp_path):
    port = _free_port()
    with FakeJudgeServer() as one:
        cfg = stub_judge_config(f"{one.base_url},http://127.0.0.1:{port}/v1", tmp_path, concurrency=2)

        async def go():
            client = judge.JudgeClient(cfg)
            try:
                first = await client.judge_many(judge.MCQ_CHOICE, _jobs(4))
                with FakeJudgeServer(port=port, root="/models/another") as late:
                    await asyncio.sleep(1.2)  # the down replica's first cooldown (1 s) ends
                    late_verdicts = await client.judge_many(judge.MCQ_CHOICE, _jobs(40)[4:])
                    return first, late_verdicts, client, late.state.counts["requests"]
            finally:
                await client.aclose()

        first, late_verdicts, client, late_requests = asyncio.run(go())
    assert [v.status for v in first] == ["letter"] * 4  # the live replica judged while the other was down
    # Back, but serving another model: refused before any verdict is asked of it, and the judge with it.
    assert late_requests == 0 and client.refused and "/models/another" in client.refused
    assert "JudgeRefused" in {v.error for v in late_verdicts}
    assert {v.status for v in late_verdicts} <= {"letter", "failed"}


def test_a_long_outage_keeps_the_cooldown_capped():
    from medbridge.judges.replicas import COOLDOWN_MAX_S, ReplicaSet

    replicas = ReplicaSet([http.JudgeHTTP("http://127.0.0.1:9/v1"), http.JudgeHTTP("http://127.0.0.1:10/v1")], 4)
    dead = replicas.replicas[0]
    for _ in range(5000):  # every failed try of every question of a long outage
        replicas.failed(dead, "Unreachable")
    assert dead.failures == 5000 and dead.down_until - time.monotonic() <= COOLDOWN_MAX_S
    assert replicas.another_is_up(dead)
    replicas.answered(dead)
    assert dead.down_until == 0.0 and dead.down_streak == 0


# ------------------------------------------------------------------------------------ judge serve


def test_replica_layout_gives_each_replica_its_own_gpu_group():
    opts = vllm_server.ServeOptions(model="/m", port=9000, tensor_parallel_size=2)
    layout = vllm_server.replica_options(opts, 3, ["0", "1", "2", "3", "4", "5", "6", "7"])
    assert [(o.port, o.gpus) for o in layout] == [(9000, ("0", "1")), (9001, ("2", "3")), (9002, ("4", "5"))]
    with pytest.raises(MedbridgeError, match="need 8 GPUs, but 4 are visible"):
        vllm_server.replica_options(opts, 4, ["0", "1", "2", "3"])
    cpu = vllm_server.replica_options(vllm_server.ServeOptions(model="/m", port=9000), 2, [])
    assert [(o.port, o.gpus) for o in cpu] == [(9000, ()), (9001, ())]
    assert vllm_server.visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5,-1"}) == ["3", "5"]


_FAKE_VLLM = """#!/bin/sh
# Stands in for the vLLM interpreter: records the command and the devices it was given, then serves the stub judge.
port=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--port" ]; then port="$arg"; fi
  prev="$arg"
done
echo "$$ devices=$CUDA_VISIBLE_DEVICES args=$*" >> "{record}"
exec "{python}" -m medbridge.tests.fake_judge_server --port "$port"
"""


@pytest.mark.slow
def test_judge_serve_starts_replicas_on_their_gpus_and_prints_the_url_list(tmp_path, capsys):
    from medbridge.cli import main

    record = tmp_path / "launches.txt"
    fake = tmp_path / "fake-vllm-python"
    fake.write_text(_FAKE_VLLM.format(record=record, python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    port = _free_port()
    while _free_port() == port + 1:  # the second replica takes port + 1
        pass
    args = ["judge", "serve", "--model", "/models/judge", "--served-name", MODEL_NAME, "--port", str(port),
            "--replicas", "2", "--tensor-parallel-size", "2", "--gpus", "0,1,2,3", "--vllm-python", str(fake),
            "--timeout", "60", "--detach"]
    try:
        assert main(args) == 0
        out = capsys.readouterr().out
        urls = [f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port + 1}/v1"]
        assert f"MEDBRIDGE_JUDGE_BASE_URL={','.join(urls)}" in out.splitlines()
        launches = sorted(record.read_text().splitlines(), key=lambda line: "--port " + str(port) not in line)
        assert "devices=0,1" in launches[0] and f"--port {port} " in launches[0]
        assert "devices=2,3" in launches[1] and f"--port {port + 1} " in launches[1]
        assert all("--tensor-parallel-size 2" in line for line in launches)
        # The printed list is the judge setting: both replicas answer through one client.
        cfg = stub_judge_config(",".join(urls), tmp_path)
        verdicts, client = _run(cfg, _jobs(8))
        assert [v.status for v in verdicts] == ["letter"] * 8
        assert all(r["answered"] > 0 for r in client.replicas.summary())
    finally:
        for line in record.read_text().splitlines() if record.exists() else []:
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
