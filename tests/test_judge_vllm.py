"""The judge client and a task in cascade mode against a REAL vLLM OpenAI-compatible server
(tiny random Qwen2 judge on 127.0.0.1, see tests/vllm_server.py).

A random judge writes noise, so every verdict it gives must come out "invalid" (never correct):
that is the malformed-reply test. Request counts come from the server's own Prometheus
counter ``vllm:request_success_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest
from medbridge.judges import MCQ_CHOICE, VerdictCache, choice_inputs, http, server
from medbridge.tests.judge_redteam import OPTIONS, QUESTION
from medbridge.tests.vllm_server import vllm_judge  # noqa: F401  (session fixture)

from medbridge import judges as judge

pytestmark = pytest.mark.judge_server


def _cfg(vllm_judge, cache_path, **kw) -> judge.JudgeConfig:  # noqa: F811
    values = dict(
        base_url=vllm_judge.base_url,
        model=vllm_judge.model,
        mode="judge",
        cache_path=str(cache_path),
        max_tokens=8,
        timeout_s=60,
        backoff_initial_s=0.2,
        backoff_max_s=2.0,
    )
    values.update(kw)
    return judge.JudgeConfig(**values)


def _jobs(n: int, tag: str):
    return [choice_inputs(QUESTION, OPTIONS, f"<think>{tag} {i}</think>maybe {'ABCD'[i % 4]}?") for i in range(n)]


def _gauge_max(base_url: str, stop: threading.Event, out: list) -> None:
    """Sample the requests the server holds at once, running or queued (sampling "running" alone can miss the
    overlap on a busy 2-core machine where each tiny request finishes in milliseconds), over one kept-alive
    connection: a new client per sample took ~0.1 s each here and saw only a handful of samples per run."""
    gauges = tuple(g + s for g in ("vllm:num_requests_running", "vllm:num_requests_waiting") for s in ("{", " "))

    async def watch() -> None:
        scraper = http.JudgeHTTP(base_url.removesuffix("/v1"), timeout_s=5, max_reply_bytes=64 << 20, max_connections=1)
        try:
            while not stop.is_set():
                with contextlib.suppress(http.JudgeHTTPError):  # a scrape that races the end of the run
                    _, _, data = await scraper.request("GET", "/metrics")
                    lines = data.decode("utf-8", "replace").splitlines()
                    out.append(sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(gauges)))
                await asyncio.sleep(0.005)
        finally:
            await scraper.aclose()

    asyncio.run(watch())


def test_the_server_itself_holds_several_judge_requests_at_once(vllm_judge, tmp_path):  # noqa: F811
    """The client's 16 requests in flight overlap on the server, as its own gauges show. Replies of 64 tokens keep
    each request on the server long enough for a scrape to see it: at the judge's 8 tokens a wave of 16 lasted
    about 0.15 s, and a fresh-clone run on a loaded machine scraped only zeros."""
    cfg = _cfg(vllm_judge, tmp_path / "cache.sqlite", concurrency=16, max_tokens=64)
    before = vllm_judge.successes()
    held: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_gauge_max, args=(vllm_judge.base_url, stop, held))
    watcher.start()
    pool = judge.JudgePool(cfg)
    try:
        pool.judge_many(MCQ_CHOICE, _jobs(48, "overlap"))
        stats = dict(pool.stats)
    finally:
        stop.set()
        watcher.join()
        pool.close()
    assert vllm_judge.successes() - before == 48
    assert stats["requests"] == 48 and stats["peak_inflight"] == 16
    assert max(held, default=0) >= 2  # the server itself held several requests at once


def test_concurrent_judging_malformed_replies_and_cached_rerun(vllm_judge, tmp_path):  # noqa: F811
    cfg = _cfg(vllm_judge, tmp_path / "cache.sqlite", concurrency=16)
    jobs = _jobs(48, "concurrency")
    before = vllm_judge.successes()
    pool = judge.JudgePool(cfg)
    try:
        verdicts = pool.judge_many(MCQ_CHOICE, jobs)
        stats = dict(pool.stats)
    finally:
        pool.close()
    assert vllm_judge.successes() - before == 48
    assert stats["requests"] == 48 and stats["peak_inflight"] == 16
    # A random tiny model never writes an exact verdict line: all invalid, none correct.
    assert {v.status for v in verdicts} == {"invalid"}
    assert all(v.raw is not None for v in verdicts)

    # Rerun: an invalid reply is never cached (only verdicts in the template's format are), so a new run asks
    # the real server again, and at temperature 0 it gets the same replies.
    before = vllm_judge.successes()
    pool = judge.JudgePool(cfg)
    try:
        again = pool.judge_many(MCQ_CHOICE, jobs)
        assert pool.stats["requests"] == 48 and pool.stats["cache_hits"] == 0
        # Within one run an identical question is asked once.
        pool.judge_many(MCQ_CHOICE, jobs)
        assert pool.stats["requests"] == 48 and pool.stats["deduplicated"] == 48
    finally:
        pool.close()
    assert vllm_judge.successes() - before == 48
    assert [(v.status, v.raw) for v in again] == [(v.status, v.raw) for v in verdicts]
    assert VerdictCache(cfg.cache_path).count() == 0


def test_check_endpoint_reports_the_served_model(vllm_judge):  # noqa: F811
    ok, message = server.check_endpoint(vllm_judge.base_url, vllm_judge.model)
    assert ok, message
    ok, message = server.check_endpoint(vllm_judge.base_url, "some-other-model")
    assert not ok and "some-other-model" in message


@pytest.mark.e2e
def test_cascade_task_through_lmms_eval_and_rerun_from_cache(vllm_judge, tmp_path):  # noqa: F811
    from medbridge.harness_ext.report import load_run
    from medbridge.tasks.medmnist.fixtures import build_all

    from .conftest import run_lmms_eval

    build_all(tmp_path / "data", test_per_class=2, train_per_class=1, val_per_class=1)
    env = {
        "MEDBRIDGE_JUDGE_BASE_URL": vllm_judge.base_url,
        "MEDBRIDGE_JUDGE_MODEL": vllm_judge.model,
        "MEDBRIDGE_JUDGE_API_KEY": "sk-medbridge-vllm-SECRET",
        "MEDBRIDGE_JUDGE_MODE": "cascade",
        "MEDBRIDGE_JUDGE_CACHE": str(tmp_path / "cache.sqlite"),
    }
    tasks = "medmnist_mcq_blood,medmnist_mcq_blood_passk"
    results = []
    for attempt in ("first", "rerun"):
        before = vllm_judge.successes()
        out = tmp_path / attempt
        proc = run_lmms_eval(
            ["--model", "messy", "--tasks", tasks, "--output_path", str(out), "--log_samples"],
            tmp_path / "data",
            env_extra=env,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        results.append((load_run(out), vllm_judge.successes() - before, out))
    (run, sent, out), (rerun, sent_again, out_again) = results
    res = run.results["results"]["medmnist_mcq_blood"]
    # The messy model answers doc_id % 4 in {1, 2} in ways the rules cannot read (a hedge, cut-off
    # reasoning); the others with clean tags, one of them laced with a fake verdict.
    n_docs = len(run.records["medmnist_mcq_blood"])
    unreadable = sum(1 for i in range(n_docs) if i % 4 in (1, 2))
    assert res["n_by_rules,none"] == n_docs - unreadable
    assert res["n_judge_invalid,none"] == unreadable  # random judge: invalid, never correct
    assert res["n_judge_down,none"] == 0 and res["n_by_judge,none"] == 0
    passk = run.results["results"]["medmnist_mcq_blood_passk"]
    assert passk["n_judge_invalid,none"] == 16 * unreadable
    # Identical answers (16 samples of an item, greedy and sampled alike) are judged once per run; the
    # invalid replies are not cached, so the rerun asks them again (and gets the same).
    assert sent == unreadable
    assert sent_again == unreadable
    assert rerun.results["results"]["medmnist_mcq_blood"]["n_judge_invalid,none"] == unreadable
    for record in run.records["medmnist_mcq_blood"]:
        assert "judge_job" not in record and "pending" not in record["outcomes"]
        for src, outcome in zip(record["sources"], record["outcomes"]):
            assert (src == "judge") == (outcome == "invalid")
    for path in list(out.rglob("*")) + list(out_again.rglob("*")):
        if path.is_file():
            assert "SECRET" not in path.read_text(errors="ignore"), path


def test_server_killed_mid_run_and_restarted_loses_and_duplicates_nothing(vllm_judge, tmp_path):  # noqa: F811
    cache_path = tmp_path / "cache.sqlite"
    # A retry budget that outlasts a restart (about a minute on two busy cores), breaker off.
    cfg = _cfg(vllm_judge, cache_path, concurrency=2, max_attempts=200, backoff_max_s=2.0, breaker_failures=0)
    jobs = _jobs(160, "restart")
    pool = judge.JudgePool(cfg)
    try:
        futures = [pool.submit(MCQ_CHOICE, job) for job in jobs]
        while sum(f.done() for f in futures) < 20:
            time.sleep(0.05)
        vllm_judge.kill()
        time.sleep(0.5)  # let the client take any reply that arrived just before the kill
        done_at_kill = sum(f.done() for f in futures)
        restart_s = vllm_judge.start()  # a fresh server process on the same port
        verdicts = [f.result(timeout=600) for f in futures]
        stats = dict(pool.stats)
    finally:
        pool.close()
    print(f"\nkill/restart: {done_at_kill} of 160 verdicts in at the kill; restart took {restart_s:.1f} s")
    assert 20 <= done_at_kill < 160, "the kill must land in the middle of the run"
    assert stats.get("failed", 0) == 0
    assert all(v.status == "invalid" for v in verdicts)
    # Nothing lost: every question got its verdict. Nothing duplicated: the restarted server answered
    # exactly the questions that had none at the kill (requests cut by the kill were asked again).
    assert stats["settled"] == 160
    assert vllm_judge.successes() == 160 - done_at_kill
    assert json.dumps(stats)
