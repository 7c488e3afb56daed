"""A stub OpenAI-compatible chat server on 127.0.0.1 for the served engine's tests (a real HTTP server).

It lists one served model at ``/v1/models`` (as vLLM does: ``owned_by`` "vllm", ``root``, ``max_model_len``),
records every chat-completions body it receives, and answers ``n`` choices whose text depends on the
request (its messages, seed and choice index), with vLLM's ``token_ids`` per choice. Knobs:
``refuse`` (a body field it rejects with OpenAI's 400 "Unrecognized request argument"), ``one_choice``
(ignores ``n``), ``fail_first`` (answers the first N chat requests with HTTP 500).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeChatServer:
    def __init__(self, served_name: str = "tiny-served", *, root: str = "/models/tiny", refuse: str | None = None,
                 one_choice: bool = False, fail_first: int = 0, owned_by: str = "vllm") -> None:
        self.served_name = served_name
        self.root = root
        self.refuse = refuse
        self.one_choice = one_choice
        self.fail_first = fail_first
        self.owned_by = owned_by
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    card = {"id": stub.served_name, "object": "model", "created": 0, "owned_by": stub.owned_by,
                            "root": stub.root, "parent": None, "max_model_len": 4096}
                    self._send(200, {"object": "list", "data": [card]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with stub._lock:
                    stub.bodies.append(body)
                    failing = len(stub.bodies) <= stub.fail_first
                if failing:
                    self._send(500, {"error": {"message": "stub: internal error"}})
                    return
                if stub.refuse and stub.refuse in body:
                    self._send(400, {"error": {"message": f"Unrecognized request argument supplied: {stub.refuse}",
                                               "type": "invalid_request_error", "param": None, "code": None}})
                    return
                n = 1 if stub.one_choice else int(body.get("n") or 1)
                seed = body.get("seed") if body.get("temperature", 1.0) > 0 else None
                key = json.dumps([body.get("messages"), seed], sort_keys=True)
                choices = []
                for i in range(n):
                    word = hashlib.sha256(f"{key}|{i if seed is not None else 0}".encode()).hexdigest()[:8]
                    choices.append({"index": i, "finish_reason": "stop", "token_ids": [1, 2, 3],
                                    "message": {"role": "assistant", "content": f"answer {word}"}})
                self._send(200, {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
                                 "model": stub.served_name, "choices": choices,
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 3 * n,
                                           "total_tokens": 10 + 3 * n}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def chat_bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)
