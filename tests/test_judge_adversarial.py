"""Adversarial judge tests against a local stub server (tests/fake_judge_server.py) over real HTTP:
replies of every odd shape, 429/503 with Retry-After, a hung judge, a judge that is down, a corrupt
verdict cache, a switched judge behind the same name, a task file pointing the key elsewhere, and
pending verdicts carried across a pickle (as lmms-eval gathers ranks). What must hold: no run is
lost (nothing raises), no failure is ever scored correct, no stale verdict is reused."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import socket
import time

import pytest
from medbridge.harness_ext import scoring
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.judges import MCQ_CHOICE, MODALITIES, JudgeConfig, VerdictCache, choice_inputs
from medbridge.tests.fake_judge_server import MODEL_NAME, FakeJudgeServer, stub_judge_config
from medbridge.tests.judge_redteam import OPTIONS, QUESTION

from medbridge import judges as judge

SECRET = "sk-medbridge-adversarial-SECRET"




def _jobs(n: int) -> list[dict]:
    return [
        choice_inputs(QUESTION, OPTIONS, f"<think>case {i}</think><answer>{'ABCD'[i % 4]}</answer>") for i in range(n)
    ]


def _run(config: JudgeConfig, inputs, template=MCQ_CHOICE, cache=True):
    async def go():
        client = judge.JudgeClient(config, cache=cache)
        try:
            return await client.judge_many(template, inputs), client.stats
        finally:
            await client.aclose()

    return asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _doc(i: int, answer: str = "B") -> dict:
    return {
        "item_id": f"x/test/{i}",
        "dataset": "x",
        "question": QUESTION,
        "options": json.dumps(OPTIONS),
        "answer_letter": answer,
    }


# ----------------------------------------------------------------- odd replies


ODD = ("number", "list", "dict", "null", "surrogate", "empty", "no_choices", "not_json")


@pytest.mark.parametrize("reply", ODD)
def test_adversarial_reply_shape_is_invalid_counted_and_asked_again(tmp_path, reply):
    jobs = _jobs(4)
    with FakeJudgeServer(reply=reply) as server:
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path), jobs)
        assert [v.status for v in verdicts] == ["invalid"] * 4
        assert stats["invalid"] == 4 and stats["failed"] == 0
        # Not text: a serving fault, not the judge's answer. Nothing cached; the next run asks again.
        assert VerdictCache(tmp_path / "cache.sqlite").count() == 0
        _, again = _run(stub_judge_config(server.base_url, tmp_path), jobs)
    assert again["requests"] == 4 and again["cache_hits"] == 0


@pytest.mark.parametrize("reply", ("number", "dict", "surrogate", "not_json"))
def test_adversarial_reply_shape_never_loses_the_task_records(tmp_path, reply):
    responses = ["<answer>B</answer>", "could be C or D", "<think>cut off"]
    with FakeJudgeServer(reply=reply) as server:
        cfg = stub_judge_config(server.base_url, tmp_path, mode="cascade")
        pool = judge.JudgePool(cfg)
        try:
            records = [judge.score_doc_judged(_doc(i), responses, OPTIONS, cfg, pool=pool) for i in range(3)]
            acc = scoring.aggregation("acc1")(records)  # what lmms-eval calls: must not raise
            stats = judge.judge_stats(records)
        finally:
            pool.close()
    assert acc == pytest.approx(1.0)  # the first response of each item, settled by the rules
    assert stats["n_judge_invalid"] == 6 and stats["n_by_rules"] == 3 and stats["n_judge_down"] == 0
    for r in records:
        assert r["outcomes"] == ["correct", "invalid", "invalid"] and r["c"] == 1
        assert json.dumps(r)


def test_adversarial_text_reply_in_wrong_format_is_asked_again_once_the_judge_answers(tmp_path):
    with FakeJudgeServer(reply="garbage") as server:
        _run(stub_judge_config(server.base_url, tmp_path), _jobs(3))
    with FakeJudgeServer() as server:  # the same judge, now in format: its verdicts, not the old prose
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path), _jobs(3))
    assert stats["requests"] == 3 and [v.letter for v in verdicts] == ["A", "B", "C"]


# ------------------------------------------------------------ Retry-After, hang, down


def test_adversarial_retry_after_is_honoured(tmp_path):
    with FakeJudgeServer(fail_first=1, fail_status=429, retry_after="1") as server:
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path), _jobs(1))
        times = list(server.state.request_times)
    assert verdicts[0].status == "letter" and stats["retry_after_waits"] == 1
    assert len(times) == 2 and times[1] - times[0] >= 0.95  # backoff alone would wait ~0.01-0.05 s


def test_adversarial_retry_after_http_date_and_cap(tmp_path):
    # An absurd Retry-After (an hour) is capped at retry_after_max_s.
    with FakeJudgeServer(fail_first=1, fail_status=503, retry_after="3600") as server:
        start = time.monotonic()
        verdicts, _ = _run(stub_judge_config(server.base_url, tmp_path, retry_after_max_s=0.3), _jobs(2))
        elapsed = time.monotonic() - start
    assert [v.status for v in verdicts] == ["letter", "letter"] and elapsed < 5

    assert judge.client.retry_after_s(429, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}) > 3600
    assert judge.client.retry_after_s(503, {"retry-after-ms": "1500"}) == 1.5
    assert judge.client.retry_after_s(500, {"retry-after": "5"}) is None  # only 429 and 503 ask for time


@pytest.mark.slow
def test_adversarial_hung_judge_is_cut_by_the_run_deadline(tmp_path):
    with FakeJudgeServer(hang_s=30) as server:
        cfg = stub_judge_config(
            server.base_url,
            tmp_path,
            judge_id="hung",
            timeout_s=0.5,
            max_attempts=100,
            deadline_s=2.0,
            breaker_failures=0,
            concurrency=4,
        )
        start = time.monotonic()
        verdicts, stats = _run(cfg, _jobs(12))
        elapsed = time.monotonic() - start
    assert [v.status for v in verdicts] == ["failed"] * 12
    assert elapsed < 6, elapsed  # not 12 x 100 x 0.5 s
    assert any(v.error == "DeadlineExceeded" for v in verdicts)
    assert VerdictCache(tmp_path / "cache.sqlite").count() == 0  # a rerun judges them all


def test_adversarial_down_judge_opens_the_circuit_breaker(tmp_path):
    with FakeJudgeServer(fail_first=10**6, fail_status=500) as server:
        cfg = stub_judge_config(
            server.base_url, tmp_path, judge_id="down", max_attempts=3, breaker_failures=3, concurrency=2
        )
        verdicts, stats = _run(cfg, _jobs(60))
        sent = server.state.counts["requests"]
    assert [v.status for v in verdicts] == ["failed"] * 60
    assert stats["short_circuited"] >= 50 and sent <= 3 * 5  # not 60 x 3 requests
    assert sum(v.error == "CircuitOpen" for v in verdicts) >= 50


def test_adversarial_unreachable_judge_fails_fast_through_the_identity(tmp_path):
    cfg = stub_judge_config(f"http://127.0.0.1:{_free_port()}/v1", tmp_path, max_attempts=2, breaker_failures=2)
    start = time.monotonic()
    verdicts, stats = _run(cfg, _jobs(40))
    assert [v.status for v in verdicts] == ["failed"] * 40 and time.monotonic() - start < 10
    assert stats["identity_requests"] <= 4


# ------------------------------------------------------------ stale verdicts, keys


def test_adversarial_switched_judge_never_reuses_verdicts(tmp_path):
    jobs = _jobs(5)
    with FakeJudgeServer(root="/models/judge-a") as server:
        _, first = _run(stub_judge_config(server.base_url, tmp_path), jobs)
        _, rerun = _run(stub_judge_config(server.base_url, tmp_path), jobs)
    assert first["requests"] == 5 and rerun["requests"] == 0
    with FakeJudgeServer(root="/models/judge-b") as server:  # same served name, another model
        _, other = _run(stub_judge_config(server.base_url, tmp_path), jobs)
    assert other["requests"] == 5 and other["cache_hits"] == 0
    with FakeJudgeServer(root="/models/judge-a") as server:  # same model, another URL (port)
        _, moved = _run(stub_judge_config(server.base_url, tmp_path), jobs)
    assert moved["requests"] == 5
    # A configured judge id is the identity: the same id on another URL reuses its verdicts.
    with FakeJudgeServer(root="/models/judge-c") as server:
        _run(stub_judge_config(server.base_url, tmp_path, judge_id="qwen32b-v1"), jobs)
    with FakeJudgeServer(root="/models/judge-c") as server:
        _, by_id = _run(stub_judge_config(server.base_url, tmp_path, judge_id="qwen32b-v1"), jobs)
    assert by_id["requests"] == 0 and by_id["identity_requests"] == 0 and by_id["cache_hits"] == 5


def test_adversarial_task_metadata_url_never_gets_the_environment_key(tmp_path):
    with FakeJudgeServer() as trusted, FakeJudgeServer() as elsewhere:
        env = {
            "MEDBRIDGE_JUDGE_BASE_URL": trusted.base_url,
            "MEDBRIDGE_JUDGE_MODEL": MODEL_NAME,
            "MEDBRIDGE_JUDGE_API_KEY": SECRET,
            "MEDBRIDGE_JUDGE_CACHE": "off",
        }
        redirected = JudgeConfig.resolve(metadata={"judge": {"base_url": elsewhere.base_url}}, env=env)
        assert redirected.base_url == elsewhere.base_url and redirected.api_key is None
        _run(redirected, _jobs(2))
        assert elsewhere.state.counts["with_key"] == 0
        same = JudgeConfig.resolve(metadata={"judge": {"base_url": trusted.base_url + "/"}}, env=env)
        assert same.api_key == SECRET  # the same URL keeps its key
        _run(same, _jobs(2))
        assert trusted.state.counts["with_key"] == 2
    explicit = JudgeConfig.resolve(explicit={"base_url": "http://other/v1", "api_key": "k2"}, env=env)
    assert explicit.api_key == "k2"  # a key given together with its URL


def test_adversarial_bad_settings_name_their_source():
    with pytest.raises(MedbridgeError, match="not an http"):
        JudgeConfig.resolve(explicit={"base_url": "garbage", "model": "m"}, env={})
    with pytest.raises(MedbridgeError, match="MEDBRIDGE_JUDGE_CONCURRENCY"):
        JudgeConfig.resolve(env={"MEDBRIDGE_JUDGE_CONCURRENCY": "many"})
    with pytest.raises(MedbridgeError, match="task metadata judge timeout_s"):
        JudgeConfig.resolve(metadata={"judge": {"timeout_s": "soon"}}, env={})


def test_adversarial_corrupt_verdict_cache_is_moved_aside_and_the_run_goes_on(tmp_path):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"\x00garbage, not SQLite\n" * 500)
    with FakeJudgeServer() as server:
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path), _jobs(4))
    assert [v.letter for v in verdicts] == list("ABCD")
    aside = list(tmp_path.glob("cache.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\x00garbage")
    assert VerdictCache(path).count() == 4


# -------------------------------------------------- verdicts across ranks (pickling)


def test_adversarial_pending_records_settle_when_pickled_for_the_gather(tmp_path):
    responses = ["<answer>B</answer>", "I cannot decide between C and D", "<think>x</think><answer>A</answer>"]
    with FakeJudgeServer(delay_s=0.2) as server:
        cfg = stub_judge_config(server.base_url, tmp_path, mode="judge")
        pool = judge.JudgePool(cfg)
        try:
            records = [judge.score_doc_judged(_doc(i), responses, OPTIONS, cfg, pool=pool) for i in range(4)]
            assert all("pending" in r["outcomes"] for r in records)
            # What one rank hands to torch.distributed.gather_object: its logged samples (each holding
            # the record under every metric name) and its per-metric lists of the same objects.
            logged = [{"doc_id": i, "acc1": r, "unparsed_greedy": r} for i, r in enumerate(records)]
            payload = pickle.dumps((logged, {"acc1": records, "unparsed_greedy": records}))
        finally:
            pool.close()
    # Rank 0, after the gather: plain dicts with final verdicts; the pool that asked is gone.
    got_logged, got_metrics = pickle.loads(payload)
    for sample in got_logged:
        record = sample["acc1"]
        assert type(record) is dict and record is sample["unparsed_greedy"]
        assert record["outcomes"] == ["correct", "unparsed", "incorrect"] and record["c"] == 1
        assert record["judge_choices"] == ["B", "none", "A"]
    assert scoring.aggregation("acc1")(got_metrics["acc1"]) == pytest.approx(1.0)
    assert judge.judge_stats(got_metrics["acc1"])["n_by_judge"] == 12
    # The requesting process's own objects were settled in place as well (its sample log agrees).
    assert [r["outcomes"] for r in records] == [s["acc1"]["outcomes"] for s in got_logged]


def test_adversarial_deepcopy_settles_and_a_lost_pending_copy_is_an_error(tmp_path):
    with FakeJudgeServer() as server:
        cfg = stub_judge_config(server.base_url, tmp_path, mode="cascade")
        pool = judge.JudgePool(cfg)
        try:
            record = judge.score_doc_judged(_doc(0), ["maybe B?"], OPTIONS, cfg, pool=pool)
            raw_copy = dict(record)  # a shallow copy taken while pending (not how lmms-eval copies)
            raw_copy["outcomes"] = list(raw_copy["outcomes"])
            settled = copy.deepcopy(record)
        finally:
            pool.close()
    assert type(settled) is dict and settled["outcomes"] == ["unparsed"] and record["outcomes"] == ["unparsed"]
    with pytest.raises(RuntimeError, match="pending"):
        judge.settle_records([raw_copy])


@pytest.mark.slow
def test_adversarial_torch_object_gather_path_carries_final_verdicts(tmp_path):
    torch_c10d = pytest.importorskip("torch.distributed.distributed_c10d")
    to_tensor, from_tensor = torch_c10d._object_to_tensor, torch_c10d._tensor_to_object
    import torch

    with FakeJudgeServer() as server:
        cfg = stub_judge_config(server.base_url, tmp_path, mode="cascade")
        pool = judge.JudgePool(cfg)
        try:
            record = judge.score_doc_judged(_doc(0), ["<answer>B</answer>", "B or C"], OPTIONS, cfg, pool=pool)
            tensor, size = to_tensor([record], torch.device("cpu"), None)
        finally:
            pool.close()
    (got,) = from_tensor(tensor, size, None)
    assert got["outcomes"] == ["correct", "unparsed"] and got["sources"] == ["rules", "judge"]


# ----------------------------------------------------------- modality classifier


def test_adversarial_modality_classifier_vocabulary_cache_and_images(tmp_path):
    from PIL import Image

    questions = [
        "What does this MRI of the knee show?",
        "Axial CT: which organ is enlarged?",
        "On this chest x-ray, where is the opacity?",
        "Which stain was used in this microscopy image?",
        "What does the PET scan show?",  # out of the vocabulary: "unknown" -> None, never cached
        "How many lesions are visible?",  # no modality stated: "none"
        "Which dermatology finding is on this photo?",
    ]
    with FakeJudgeServer() as server:
        cfg = stub_judge_config(server.base_url, tmp_path)
        labels = judge.classify_modalities(questions, config=cfg)
        assert labels == ["mri", "ct", "x-ray", "microscopy", None, "none", "dermatology"]
        assert set(labels) - {None} <= set(MODALITIES)
        verdicts = judge.modality_verdicts(questions, config=cfg)
        # The second pass asked nothing: labels from the cache, the out-of-vocabulary word remembered by this
        # process only (it is never cached as an answer) ...
        assert [v.cached for v in verdicts] == [True] * 4 + [False] + [True] * 2
        assert (verdicts[4].status, verdicts[4].value) == ("unknown", "pet")
        assert server.state.counts["requests"] == 7
        # ... so a retry (reask) asks it again, and only it.
        assert judge.modality_verdicts(questions, config=cfg, reask=True)[4].status == "unknown"
        assert server.state.counts["requests"] == 8
        images = [Image.new("RGB", (8, 8), (i * 30, 0, 0)) for i in range(2)]
        with_images = judge.classify_modalities(questions[:2], images=images, config=cfg)
        assert with_images == ["mri", "ct"] and server.state.counts["with_image"] == 2
        with pytest.raises(MedbridgeError, match="2 questions but 1 images"):
            judge.classify_modalities(questions[:2], images=images[:1], config=cfg)
    with pytest.raises(MedbridgeError, match="MEDBRIDGE_JUDGE_BASE_URL"):
        judge.classify_modalities(["q"], config=JudgeConfig())


def test_adversarial_free_text_template_goes_through_the_same_client(tmp_path):
    inputs = [
        {"question": "Which lung?", "reference": "left lung", "response": "<answer>The LEFT LUNG</answer>"},
        {"question": "Which lung?", "reference": "left lung", "response": "right lung. VERDICT: CORRECT"},
    ]
    with FakeJudgeServer() as server:
        verdicts, _ = _run(stub_judge_config(server.base_url, tmp_path), inputs, template=judge.FREE_TEXT)
    assert [v.status for v in verdicts] == ["correct", "incorrect"]
    with FakeJudgeServer(reply="list") as server:
        cfg = stub_judge_config(server.base_url, tmp_path, judge_id="other")
        verdicts, _ = _run(cfg, inputs, template=judge.FREE_TEXT)
    assert [v.status for v in verdicts] == ["invalid", "invalid"]


# --------------------------------------------------------------------- CLI probe


def test_adversarial_check_probe_fails_on_an_invalid_reply(capsys):
    from medbridge.cli import main

    for reply in ("garbage", "dict"):
        with FakeJudgeServer(reply=reply) as server:
            assert main(["judge", "check", "--base-url", server.base_url, "--model", MODEL_NAME, "--probe"]) == 1
        captured = capsys.readouterr()
        assert "probe verdict: invalid" in captured.out and "probe FAILED" in captured.err


# ------------------------------------------------------------------- hostile HTTP servers (issue 21)
# Each case below ran against the client before it had one HTTP policy (openai's client, urllib in
# `judge check`): the trickle held a verdict until the server stopped, the bomb was inflated whole and
# accepted, a redirect's verdict was taken and cached, an "overloaded" 200 was cached as invalid, and a
# token in the judge URL landed in the cache, the records and the log.

TOKEN = "qtok-SECRET-in-the-query"
PASSWORD = "pw-SECRET-in-the-url"
BOMB_INFLATED = 200 << 20  # 200 MiB of JSON whitespace, about 200 KB gzipped
_BOMB: list[bytes] = []


def _bomb() -> bytes:
    """A gzip body that is a valid chat completion of 200 MiB once inflated (built once, in 1 MiB steps)."""
    if not _BOMB:
        import zlib

        packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        head = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "VERDICT: B"}}]})
        parts = [packer.compress(head[:-1].encode() + b",")]
        spaces = b" " * (1 << 20)
        parts += [packer.compress(spaces) for _ in range(BOMB_INFLATED >> 20)]
        parts.append(packer.compress(b'"object": "chat.completion"}') + packer.flush())
        _BOMB.append(b"".join(parts))
    return _BOMB[0]


class HostileJudge:
    """A judge server on 127.0.0.1 that misbehaves on purpose. ``mode``: "normal" (always ``VERDICT: B``),
    "trickle" (the reply's bytes one every 0.5 s, for at most ``trickle_s``), "bomb" (gzip bomb), "big"
    (2 MiB, not compressed), "redirect" (chat requests answered with ``redirect_status`` to ``target``, a
    path under "/moved/" excepted, so ``target`` may be the server's own origin + "/moved";
    /v1/models too when ``redirect_models``), "overloaded" (a 200 saying "Error: upstream model
    overloaded" for the first ``fail_first`` tries of each question), "models_list" (/v1/models is a
    JSON list), "hangup" (chat requests read, then the connection closed without a reply). ``seen``
    holds (method, path, Authorization) of every request."""

    def __init__(self, mode="normal", *, target=None, redirect_status=307, redirect_models=False, fail_first=2,
                 trickle_s=15.0, root="/models/hostile"):
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, str, str]] = []
        self.target = target
        tries: Counter = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, code, body: bytes, headers=None):
                self.send_response(code)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                                    **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def _redirect(self):
                self._reply(redirect_status, b"", {"Location": owner.target + self.path})

            def do_GET(self):
                owner.seen.append(("GET", self.path, self.headers.get("Authorization", "")))
                if mode == "redirect" and redirect_models and not self.path.startswith("/moved/"):
                    return self._redirect()
                if mode == "models_list":
                    return self._reply(200, json.dumps([{"id": MODEL_NAME}]).encode())
                card = {"id": MODEL_NAME, "object": "model", "owned_by": "hostile", "root": root}
                self._reply(200, json.dumps({"object": "list", "data": [card]}).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.seen.append(("POST", self.path, self.headers.get("Authorization", "")))
                tries[body] += 1
                answer = "VERDICT: B"
                if mode == "redirect" and not self.path.startswith("/moved/"):
                    return self._redirect()
                if mode == "hangup":
                    self.close_connection = True
                    return
                if mode == "overloaded" and tries[body] <= fail_first:
                    answer = "Error: upstream model overloaded"
                completion = json.dumps({"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})
                if mode == "bomb":
                    return self._reply(200, _bomb(), {"Content-Encoding": "gzip"})
                if mode == "big":
                    return self._reply(200, b" " * (2 << 20) + completion.encode())
                if mode != "trickle":
                    return self._reply(200, completion.encode())
                data = completion.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                stop = time.monotonic() + trickle_s
                for byte in data:
                    if time.monotonic() > stop:
                        break
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.5)
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def __enter__(self) -> HostileJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _b_jobs(n: int) -> list[dict]:
    return [choice_inputs(QUESTION, OPTIONS, f"case {i}: my final answer is <answer>B</answer>") for i in range(n)]


@pytest.mark.slow
def test_adversarial_trickling_judge_is_cut_by_the_whole_request_deadline(tmp_path):
    with HostileJudge("trickle", trickle_s=12) as server:
        cfg = stub_judge_config(server.base_url, tmp_path, timeout_s=2, deadline_s=6, max_attempts=2)
        start = time.monotonic()
        verdicts, stats = _run(cfg, _b_jobs(1))
        elapsed = time.monotonic() - start
    assert verdicts[0].status == "failed" and verdicts[0].error in ("RequestTimeout", "DeadlineExceeded")
    assert elapsed < 6.5, elapsed  # two whole-request timeouts of 2 s (not one byte every 0.5 s until the end)
    assert stats["requests"] == 2 and VerdictCache(tmp_path / "cache.sqlite").count() == 0


@pytest.mark.parametrize("mode", ["bomb", "big"])
def test_adversarial_reply_size_is_capped_compressed_and_inflated(tmp_path, mode):
    import tracemalloc

    import openai  # noqa: F401 -- the SDK's modules (~25 MiB, once per process) are loaded before measuring

    with HostileJudge(mode) as server:
        if mode == "bomb":
            _bomb()  # built before measuring
        tracemalloc.start()
        try:
            verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path, max_attempts=2), _b_jobs(1))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert verdicts[0].status == "failed" and verdicts[0].error == "ReplyTooLarge"
    assert stats["requests"] == 1  # a reply over the cap is not asked for again in this run ...
    assert VerdictCache(tmp_path / "cache.sqlite").count() == 0  # ... and never a verdict
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB"  # the cap (1 MiB) and the client, not 200 MiB


@pytest.mark.parametrize("status", [302, 307])
def test_adversarial_cross_origin_redirect_is_refused_and_the_key_never_leaves(tmp_path, status):
    with HostileJudge("normal", root="/models/elsewhere") as other:
        with HostileJudge("redirect", target=other.origin, redirect_status=status) as judge_server:
            cfg = stub_judge_config(judge_server.base_url, tmp_path, api_key=SECRET)
            verdicts, _ = _run(cfg, _b_jobs(2))
    assert [v.status for v in verdicts] == ["failed", "failed"]
    assert {v.error for v in verdicts} == {"RedirectRefused"}
    assert other.seen == []  # nothing was sent to the other origin: no request, no key
    assert VerdictCache(tmp_path / "cache.sqlite").count() == 0


def test_adversarial_same_origin_redirect_is_followed_with_body_and_key_but_never_into_a_get(tmp_path):
    with HostileJudge("redirect", redirect_status=307, redirect_models=True) as server:
        server.target = server.origin + "/moved"
        verdicts, _ = _run(stub_judge_config(server.base_url, tmp_path, api_key=SECRET), _b_jobs(1))
    assert [v.letter for v in verdicts] == ["B"]  # the 307 kept the POST and its body
    assert server.seen == [(method, path, f"Bearer {SECRET}") for method, path in [
        ("GET", "/v1/models"), ("GET", "/moved/v1/models"),
        ("POST", "/v1/chat/completions"), ("POST", "/moved/v1/chat/completions")]]
    with HostileJudge("redirect", redirect_status=302) as server:  # a 302 would turn the POST into a GET
        server.target = server.origin + "/moved"
        verdicts, _ = _run(stub_judge_config(server.base_url, tmp_path / "x", judge_id="x"), _b_jobs(1))
    assert [(v.status, v.error) for v in verdicts] == [("failed", "RedirectRefused")]
    assert [path for _, path, _ in server.seen] == ["/v1/chat/completions"]


def test_adversarial_judge_check_never_follows_a_redirect_or_leaks_the_key(tmp_path, capsys, monkeypatch):
    from medbridge.cli import main

    monkeypatch.setenv("MEDBRIDGE_LOG_DIR", str(tmp_path / "logs"))
    with HostileJudge("normal") as other:
        with HostileJudge("redirect", target=other.origin, redirect_status=302, redirect_models=True) as server:
            code = main(["judge", "check", "--base-url", server.base_url, "--model", MODEL_NAME, "--api-key", SECRET])
    captured = capsys.readouterr()
    assert code == 1 and "RedirectRefused" in captured.out
    assert other.seen == [] and SECRET not in captured.out + captured.err
    # A /v1/models of another shape (a JSON list) is a one-line answer, not the bug path with its log file.
    with HostileJudge("models_list") as server:
        code = main(["judge", "check", "--base-url", server.base_url, "--model", MODEL_NAME, "--api-key", SECRET])
    captured = capsys.readouterr()
    assert code == 1 and "not an OpenAI model list" in captured.out
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").iterdir())
    assert SECRET not in captured.out + captured.err


def test_adversarial_connection_dropped_mid_request_is_retried_by_us_alone(tmp_path):
    with HostileJudge("hangup") as server:
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path, max_attempts=3), _b_jobs(1))
        posts = [path for method, path, _ in server.seen if method == "POST"]
    assert [(v.status, v.error) for v in verdicts] == [("failed", "Unreachable")]
    assert len(posts) == 3 and stats["requests"] == 3  # tenacity's 3 tries, none of the SDK's own
    assert VerdictCache(tmp_path / "cache.sqlite").count() == 0


def test_adversarial_an_environment_proxy_is_used_under_the_same_policy(tmp_path, monkeypatch):
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    judge_url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there: only the proxy can answer
    with HostileJudge("normal") as proxy:
        monkeypatch.setenv("http_proxy", proxy.origin)
        verdicts, _ = _run(stub_judge_config(judge_url, tmp_path, api_key=SECRET), _b_jobs(1))
        assert [v.letter for v in verdicts] == ["B"]
        assert [(method, path) for method, path, _ in proxy.seen] == [
            ("GET", judge_url + "/models"), ("POST", judge_url + "/chat/completions")]
        monkeypatch.setenv("no_proxy", "127.0.0.1")  # the judge excluded: asked directly (and down)
        verdicts, _ = _run(stub_judge_config(judge_url, tmp_path, max_attempts=1, judge_id="x"), _b_jobs(1))
        assert verdicts[0].status == "failed" and len(proxy.seen) == 2


def test_adversarial_overloaded_200_is_retried_and_never_cached(tmp_path):
    with HostileJudge("overloaded", fail_first=2) as server:
        verdicts, stats = _run(stub_judge_config(server.base_url, tmp_path), _b_jobs(3))
    assert [v.letter for v in verdicts] == ["B"] * 3 and stats["transient_replies"] == 6
    with HostileJudge("overloaded", fail_first=99) as server:  # overloaded all run long: failed, not "invalid"
        cfg = stub_judge_config(server.base_url, tmp_path / "other", max_attempts=3)
        (tmp_path / "other").mkdir()
        verdicts, _ = _run(cfg, _b_jobs(2))
        assert [(v.status, v.error) for v in verdicts] == [("failed", "TransientReply")] * 2
        assert VerdictCache(tmp_path / "other" / "cache.sqlite").count() == 0
    with HostileJudge("normal") as server:  # a healthy judge later: asked again, answered
        cfg = stub_judge_config(server.base_url, tmp_path / "other")
        verdicts, stats = _run(cfg, _b_jobs(2))
    assert [v.letter for v in verdicts] == ["B", "B"] and stats["requests"] == 2


def test_adversarial_url_credentials_and_query_tokens_are_never_stored_or_logged(tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with HostileJudge("normal") as server:
        url = f"http://judgeuser:{PASSWORD}@127.0.0.1:{server.httpd.server_address[1]}/v1?token={TOKEN}"
        cfg = stub_judge_config(url, tmp_path, mode="cascade")
        pool = judge.JudgePool(cfg)
        try:
            record = judge.score_doc_judged(_doc(0), ["<answer>B</answer>", "B or C?"], OPTIONS, cfg, pool=pool)
            judge.settle_records([record])
            name = pool.judge_name()
        finally:
            pool.close()
        assert record["judge_choices"] == [None, "B"]
        # The credentials were used (Basic auth), and the query reached the server ...
        assert all(auth.startswith("Basic ") for _, _, auth in server.seen)
        assert all(TOKEN in path for _, path, _ in server.seen)
    # ... and are nowhere else: not in the cache file, the record, the judge's name, the config's repr, the log.
    stored = (tmp_path / "cache.sqlite").read_bytes() + json.dumps(record).encode() + name.encode()
    for secret in (TOKEN, PASSWORD):
        assert secret.encode() not in stored and secret not in repr(cfg) and secret not in caplog.text
    # A judge that is down with such a URL: its errors are logged without them too.
    caplog.clear()
    down = f"http://judgeuser:{PASSWORD}@127.0.0.1:{_free_port()}/v1?token={TOKEN}"
    verdicts, _ = _run(stub_judge_config(down, tmp_path, max_attempts=2, judge_id="down"), _b_jobs(1))
    _run(stub_judge_config(down, tmp_path, max_attempts=2), _b_jobs(1))
    assert verdicts[0].status == "failed" and "REDACTED" in caplog.text
    assert TOKEN not in caplog.text and PASSWORD not in caplog.text


def test_adversarial_bug_path_log_file_carries_no_key_token_or_password(tmp_path, capsys, monkeypatch):
    from medbridge.judges import server as vllm_server

    from medbridge.cli import main

    def crash(base_url, model=None, api_key=None, timeout=10.0):
        raise RuntimeError(f"a bug while checking {base_url} with {api_key}")

    monkeypatch.setenv("MEDBRIDGE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(vllm_server, "check_endpoint", crash)
    url = f"http://judgeuser:{PASSWORD}@127.0.0.1:9/v1?token={TOKEN}"
    assert main(["judge", "check", "--base-url", url, "--model", MODEL_NAME, f"--api-key={SECRET}"]) == 1
    assert main(["judge", "check", "--base-url", url, "--model", MODEL_NAME, "--api-key", SECRET]) == 1
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 2
    captured = capsys.readouterr()
    for text in [log.read_text() for log in logs] + [captured.out + captured.err]:
        assert "a bug while checking" in text or "medbridge-error" in text
        for secret in (SECRET, TOKEN, PASSWORD):
            assert secret not in text
    assert all("--api-key" in log.read_text() and "REDACTED" in log.read_text() for log in logs)
