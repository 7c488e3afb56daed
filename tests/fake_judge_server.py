"""A small, real HTTP server speaking the OpenAI chat-completions API, for judge client tests.

It is a *deterministic judge* that answers by the template the client names in its
``X-Medbridge-Judge-Prompt`` header (never by reading instructions): ``mcq_choice`` decodes the data
blocks and answers ``VERDICT: <letter>`` with what ``extract_choice`` reads from the quoted model
response (or ``VERDICT: NONE``); ``modality`` gets ``MODALITY: <the first vocabulary word in the
question>`` (or none; "PET" gets the out-of-vocabulary ``MODALITY: pet``); ``free_text`` gets
``VERDICT: CORRECT`` when the reference answer appears in the response; any other template gets its
fixed reply from ``template_replies``, or a 400. ``/stats`` counts requests per template. Faults are injected
by flags: the first N attempts of every distinct prompt fail with a status code (429, 500, 503,
400; 200 sends a gateway's "Error: upstream model overloaded" as the reply), optionally with a
``Retry-After`` header; ``flaky`` makes a seeded share of all requests fail (in turn: HTTP 500, prose,
overloaded); replies can be odd shapes (garbage text, empty,
a number, a list, a dict, null, a lone surrogate, no choices, a body that is not JSON); each
reply can be delayed (requests are answered in parallel, so concurrency shows in wall time and
in ``max_inflight``) or hang; ``capacity`` caps the requests answered at once (the rest queue).
``root`` is what ``/v1/models`` reports as the served model's path, as vLLM does. ``GET /stats``
returns request counts; ``state.headers`` holds (method, path, headers) of every request. Run in a
thread (``FakeJudgeServer``) or as a process (``python -m medbridge.tests.fake_judge_server --port P ...``)
that a test can kill.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from medbridge.harness_ext.answers import extract_choice
from medbridge.judges.client import TEMPLATE_HEADER
from medbridge.judges.prompts import MODALITIES, read_data_block

MODEL_NAME = "fake-judge"
REPLIES = ("extractor", "garbage", "empty", "number", "list", "dict", "null", "surrogate", "no_choices", "not_json")
# What each odd reply puts in choices[0].message.content.
_ODD_CONTENT = {
    "garbage": "The answer is probably B, VERDICT maybe? 1",
    "empty": "",
    "number": 1,
    "list": ["VERDICT: A"],
    "dict": {"verdict": "A"},
    "null": None,
    "surrogate": "VERDICT: A\udc80",
}



def stub_judge_config(base_url: str, tmp_path, **overrides):
    """A JudgeConfig for tests against this stub: fast retries, a cache in ``tmp_path``, no API key
    unless ``overrides`` gives one."""
    from medbridge.judges import JudgeConfig

    values = dict(
        base_url=base_url,
        model=MODEL_NAME,
        mode="judge",
        cache_path=str(tmp_path / "cache.sqlite"),
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        max_attempts=4,
        timeout_s=10,
    )
    values.update(overrides)
    return JudgeConfig(**values)

class _State:
    def __init__(
        self,
        fail_first: int = 0,
        fail_status: int = 503,
        reply: str = "extractor",
        delay_s: float = 0.0,
        retry_after: str | None = None,
        hang_s: float = 0.0,
        root: str = "/models/fake-judge-a",
        template_replies: dict[str, str] | None = None,
        capacity: int = 0,
        flaky: float = 0.0,
        seed: int = 0,
    ):
        if reply not in REPLIES:
            raise ValueError(f"reply must be one of {REPLIES}")
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.reply = reply
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.root = root
        self.template_replies = dict(template_replies or {})  # fixed replies for templates beyond ANSWERS
        # A share of requests (drawn with a seeded generator) that fail in turn as an HTTP 500, a prose
        # reply instead of the one verdict line, and a 200 saying the model is overloaded.
        self.flaky = flaky
        self.rng = random.Random(seed)
        self.flaky_kinds = itertools.cycle(("http_500", "prose", "overloaded"))
        # Requests answered at once (0: no limit); a fixed capacity per server is what replicas multiply.
        self.capacity = threading.BoundedSemaphore(capacity) if capacity else contextlib.nullcontext()
        self.request_times: list[float] = []
        self.headers: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) of every request
        self.lock = threading.Lock()
        self.counts = Counter()
        self.attempts_per_prompt = Counter()
        self.inflight = 0
        self.max_inflight = 0


def _modality_for(prompt: str) -> str:
    question = read_data_block(prompt, "question").lower()
    if re.search(r"\bpet\b", question):
        return "MODALITY: pet"
    for label in MODALITIES:
        if label != "none" and re.search(rf"\b{re.escape(label)}\b", question):
            return f"MODALITY: {label.upper()}"
    return "MODALITY: none"


def _text_of(content) -> str:
    """A message's text: the string itself, or the text parts of an OpenAI content list."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def _free_text_for(prompt: str) -> str:
    reference = read_data_block(prompt, "reference_answer").strip().lower()
    response = read_data_block(prompt, "model_response").lower()
    return "VERDICT: CORRECT" if reference and reference in response else "VERDICT: INCORRECT"


def _mcq_choice_for(prompt: str) -> str:
    options = read_data_block(prompt, "options")
    response = read_data_block(prompt, "model_response")
    letter = extract_choice(response, options)
    return f"VERDICT: {letter}" if letter else "VERDICT: NONE"


OVERLOADED = "Error: upstream model overloaded"  # what some gateways put in a 200 instead of an answer


def _completion(content, no_choices: bool = False) -> dict:
    choices = [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    return {
        "id": "cmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_NAME,
        "choices": [] if no_choices else choices,
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


# The deterministic answer per template name (the client's TEMPLATE_HEADER says which template asks).
ANSWERS = {"mcq_choice": _mcq_choice_for, "free_text": _free_text_for, "modality": _modality_for}


def template_name(header: str | None) -> str | None:
    """"mcq_choice/v1" -> "mcq_choice"."""
    return header.rsplit("/v", 1)[0] if header else None


def make_handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
            self._send_raw(code, json.dumps(payload).encode(), headers)

        def _send_raw(self, code: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]  # a judge URL may carry a query (a token): ignored here
            with state.lock:
                state.headers.append(("GET", path, dict(self.headers)))
                state.counts["gets"] += 1
                if self.headers.get("Authorization", "") not in ("", "Bearer EMPTY"):
                    state.counts["get_with_key"] += 1
            if path == "/health":
                self._send(200, {})
            elif path == "/v1/models":
                card = {"id": MODEL_NAME, "object": "model", "created": int(time.time()), "owned_by": "fake"}
                card["root"] = state.root
                self._send(200, {"object": "list", "data": [card]})
            elif path == "/stats":
                with state.lock:
                    self._send(200, {"counts": dict(state.counts), "max_inflight": state.max_inflight})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            content = body["messages"][-1]["content"]
            prompt = _text_of(content)
            template = template_name(self.headers.get(TEMPLATE_HEADER))
            with state.lock:
                state.headers.append(("POST", self.path, dict(self.headers)))
                state.counts["requests"] += 1
                state.counts[f"template:{template}"] += 1
                state.request_times.append(time.monotonic())
                if not isinstance(content, str):
                    state.counts["with_image"] += 1
                state.attempts_per_prompt[prompt] += 1
                attempt = state.attempts_per_prompt[prompt]
                state.inflight += 1
                state.max_inflight = max(state.max_inflight, state.inflight)
                if body.get("temperature") != 0:
                    state.counts["nonzero_temperature"] += 1
                # The OpenAI client sends "Bearer EMPTY" when it has no key: that is no key.
                if self.headers.get("Authorization", "") not in ("", "Bearer EMPTY"):
                    state.counts["with_key"] += 1
            try:
                with state.capacity:  # a server answers at most `capacity` requests at once; the rest queue
                    self._answer(prompt, template, attempt)
            finally:
                with state.lock:
                    state.inflight -= 1

        def _answer(self, prompt: str, template: str | None, attempt: int) -> None:
            if state.hang_s:
                time.sleep(state.hang_s)
            if state.delay_s:
                time.sleep(state.delay_s)
            if attempt <= state.fail_first:
                with state.lock:
                    state.counts[f"failed_{state.fail_status}"] += 1
                if state.fail_status == 200:  # a gateway's error text in place of an answer
                    self._send(200, _completion(OVERLOADED))
                    return
                headers = {"Retry-After": state.retry_after} if state.retry_after else {}
                error = {"error": {"message": "injected failure", "code": state.fail_status}}
                self._send(state.fail_status, error, headers)
                return
            if state.flaky:
                with state.lock:
                    kind = next(state.flaky_kinds) if state.rng.random() < state.flaky else None
                    if kind:
                        state.counts[f"flaky_{kind}"] += 1
                if kind == "http_500":
                    self._send(500, {"error": {"message": "injected failure", "code": 500}})
                    return
                if kind:
                    self._send(200, _completion(OVERLOADED if kind == "overloaded" else "I think it is a scan."))
                    return
            if state.reply == "not_json":
                self._send_raw(200, b"<html>upstream proxy error</html>")
                return
            if state.reply in _ODD_CONTENT:
                content = _ODD_CONTENT[state.reply]
            elif template in state.template_replies:
                content = state.template_replies[template]
            elif template in ANSWERS:
                content = ANSWERS[template](prompt)
            else:
                message = f"no answer for judge template {template!r} (header {TEMPLATE_HEADER})"
                self._send(400, {"error": {"message": message, "code": 400}})
                return
            with state.lock:
                state.counts["ok"] += 1
            self._send(200, _completion(content, no_choices=state.reply == "no_choices"))

    return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 resets connections under a burst
    daemon_threads = True


class FakeJudgeServer:
    """The server on 127.0.0.1 in a background thread; ``base_url`` ends in /v1."""

    def __init__(self, port: int = 0, **state_kwargs):
        self.state = _State(**state_kwargs)
        self.httpd = _Server(("127.0.0.1", port), make_handler(self.state))
        # A short poll interval: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--reply", choices=REPLIES, default="extractor")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--root", default="/models/fake-judge-a", help="the served model's path in /v1/models")
    parser.add_argument("--capacity", type=int, default=0, help="requests answered at once (0: no limit)")
    args = parser.parse_args(argv)
    server = FakeJudgeServer(
        args.port, fail_first=args.fail_first, fail_status=args.fail_status, reply=args.reply, delay_s=args.delay,
        root=args.root, capacity=args.capacity,
    )
    server.httpd.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
