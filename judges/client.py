"""One async client for any OpenAI-compatible judge endpoint (vLLM by default), over one or more replicas.

``JudgeClient.judge(template, inputs)`` asks one question of a ``PromptTemplate`` (prompts.py):
MCQ choice, free-text grading and modality classification all go through it. Per question: the
verdict cache first, then in-flight de-duplication (identical questions share one request), then
a request to the least busy replica (replicas.py) with tenacity retries. The chat request goes
through the official openai SDK (``AsyncOpenAI.post`` with the plain dict body, its own retries off);
``/v1/models`` through ``JudgeHTTP.request``. Every byte of both passes http.py's one policy transport
(no redirect to another origin, a whole-request deadline, a reply-size cap, transient errors raised,
secrets set there and scrubbed everywhere else).

What a question can end as (``Verdict.status``): one of the template's settled statuses (the only
ones cached), or ``invalid`` (the judge answered, but not in the template's exact format: prose, a
number, a list, null, empty, a lone surrogate, no choices, a body that is not JSON; counted, asked
again next run), ``unknown`` (a well-formed label outside the template's list; counted, asked again
next run), or ``failed`` (no usable answer: retries exhausted,
a 4xx, a refused redirect, a reply over the size cap, the run's deadline passed, the circuit
breaker open, replicas serving different models; never cached, so the next run asks again).
Nothing raises out of ``judge`` for a bad reply.

Faults: 408/429/5xx, timeouts, connection errors and a 200 that carries a server error ("Error:
upstream model overloaded") are retried with jittered exponential backoff, on another replica when
one is up; a ``Retry-After`` (or ``retry-after-ms``) header on 429/503 is honoured, capped at
``retry_after_max_s``; every request and wait is cut to the run's ``deadline_s``; after
``breaker_failures`` verdicts in a row fail (or that many verdicts' worth of attempts, see
``_record_failure``), the breaker opens and the rest fail at once. A judge that is expected to
restart mid-run needs ``breaker_failures=0`` and a retry budget that outlasts the restart.

Judge identity (the verdict cache key): ``judge_id`` when configured, else the served model
name + the public base URL(s) + the server's own description of that model from ``/v1/models``
(its root path, owner, parent, max length), fetched once per client. With several replicas every
one must describe the same model (checked before its first verdict counts); otherwise the judge
is refused, naming each replica and what it serves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.judges.cache import VerdictCache, default_cache_path, storable_text, verdict_key
from medbridge.judges.config import JudgeConfig
from medbridge.judges.http import (
    HTTPStatusError,
    JudgeHTTP,
    JudgeHTTPError,
    NotJSON,
    TransientReply,
    looks_like_server_error,
    retry_after_s,
)
from medbridge.judges.prompts import MCQ_CHOICE, PromptTemplate, reply_text
from medbridge.judges.replicas import Replica, ReplicaSet

__all__ = [
    "TEMPLATE_HEADER",
    "JudgeClient",
    "JudgePool",
    "JudgeRefused",
    "Verdict",
    "get_pool",
    "retry_after_s",
]

TEMPLATE_HEADER = "X-Medbridge-Judge-Prompt"  # "<template name>/v<version>" on every chat request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One judge answer. status: a template status ("letter", "none", "label", ...), "invalid", "unknown"
    (a well-formed label outside the template's list; value holds it) or "failed"."""

    status: str
    value: str | None = None
    raw: str | None = None
    cached: bool = False
    error: str | None = None  # why a verdict failed (a short reason); never the request, the URL's secrets or the key

    @property
    def letter(self) -> str | None:
        return self.value if self.status == "letter" else None

    @property
    def outcome_label(self) -> str:
        """What a record stores as the judge's choice: a letter, "none", "invalid" or "failed"."""
        return self.value if self.status == "letter" else self.status


class _Stop(Exception):
    """A verdict given up without a request: deadline passed or breaker open."""


class JudgeRefused(MedbridgeError):
    """The judge cannot be used as configured (its replicas serve different models)."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, JudgeHTTPError) and exc.retryable


def _reply_content(reply: Any) -> Any:
    """The first choice's message content, whatever its shape; None when the reply has no such thing."""
    try:
        return reply["choices"][0]["message"]["content"]
    except (IndexError, KeyError, TypeError):
        return None


class JudgeClient:
    """Async judge client. Must be used from one event loop.

    ``stats`` counts chat requests (``requests``; ``identity_requests`` for /v1/models),
    ``cache_hits``, ``deduplicated``, ``settled``, ``invalid``, ``unknown``, ``failed``, ``short_circuited``
    (failed without a request), ``retry_after_waits``, ``transient_replies`` (errors in a 200),
    ``replica_failures`` and the peak number of requests in flight (``peak_inflight``).
    ``replicas.summary()`` gives each replica's sent / answered / failed requests.
    """

    def __init__(self, config: JudgeConfig, cache: VerdictCache | None | bool = True):
        if not config.configured:
            raise ValueError("no judge endpoint configured (set MEDBRIDGE_JUDGE_BASE_URL and MEDBRIDGE_JUDGE_MODEL)")
        self.config = config
        self.replicas = ReplicaSet(
            [
                JudgeHTTP(
                    url,
                    config.api_key,
                    timeout_s=config.timeout_s,
                    max_reply_bytes=config.max_reply_bytes,
                    max_connections=config.concurrency,
                )
                for url in config.base_urls
            ],
            per_replica=config.concurrency,
        )
        for replica in self.replicas.replicas:
            replica.http.openai_client()  # the SDK now: a missing `judge` extra is an error here, not a failed verdict
        if cache is True:
            cache = VerdictCache(config.cache_path or default_cache_path()) if config.cache_enabled else None
        self.cache: VerdictCache | None = cache or None
        self._inflight: dict[str, asyncio.Future] = {}
        # Replies not cached on disk (invalid, unknown) are remembered for this client's life, so one run
        # asks an identical question once and scores it one way; the next run asks again.
        self._session: dict[str, Verdict] = {}
        self._active = 0
        self._failed_in_a_row = 0
        self._failed_attempts = 0
        self.breaker_open = False
        self.refused: str | None = None  # why the judge cannot be used (replicas serving different models)
        self._deadline = time.monotonic() + config.deadline_s if config.deadline_s else None
        self._identity: str | None = None
        self._card: dict[str, Any] | None = None
        self._identity_lock = asyncio.Lock()
        self.stats = Counter()

    async def aclose(self) -> None:
        await self.replicas.aclose()

    @property
    def public_urls(self) -> list[str]:
        return [r.url for r in self.replicas.replicas]

    # ------------------------------------------------------------------ identity

    async def identity(self) -> str:
        """What the verdict cache keys this judge by (fetched once; raises when it cannot be known)."""
        if self._identity is not None:
            return self._identity
        async with self._identity_lock:
            if self._identity is None:
                if self.refused:
                    raise JudgeRefused(self.refused)
                if self.config.judge_id and len(self.replicas) == 1:
                    self._identity = f"id:{self.config.judge_id}"
                    return self._identity
                tried: list[Replica] = []
                self._card = await self._with_retries(lambda: self._attempt(self._fetch_card, tried))
                self._record_reply()
                # The other replicas are asked once now; one that does not answer is checked before its
                # first request (_attempt), never used unchecked.
                others = [r for r in self.replicas.replicas if r.card is None]
                await asyncio.gather(*(self._check_replica(r, quiet=True) for r in others))
                if self.config.judge_id:
                    self._identity = f"id:{self.config.judge_id}"
                else:
                    urls = self.public_urls
                    self._identity = json.dumps(
                        {"served": self.config.model, "base_url": urls[0] if len(urls) == 1 else sorted(urls),
                         "card": self._card},
                        sort_keys=True,
                    )
        return self._identity

    async def _fetch_card(self, replica: Replica) -> dict[str, Any]:
        """What ``replica``'s /v1/models says about the judge model (LookupError when it does not serve it)."""
        self.stats["identity_requests"] += 1
        page = await replica.http.request_json("GET", "/models", timeout_s=self._request_timeout())
        models = page.get("data") if isinstance(page, dict) else None
        if not isinstance(models, list):
            raise TransientReply(f"{replica.http.where('/models')}: not a model list ({type(page).__name__})")
        for model in models:
            if isinstance(model, dict) and model.get("id") == self.config.model:
                # "created" is the time of the request on vLLM, permissions are per request.
                card = {k: model.get(k) for k in ("id", "root", "parent", "owned_by", "max_model_len")}
                self._accept_card(replica, card)
                return card
        served = [m.get("id") for m in models if isinstance(m, dict)]
        raise LookupError(f"{replica.url} serves {served}, not {self.config.model!r}")

    def _accept_card(self, replica: Replica, card: dict[str, Any]) -> None:
        """One judge identity: a replica describing another model than the first refuses the judge."""
        first = self._card or next((r.card for r in self.replicas.replicas if r.card is not None), None)
        if first is not None and card != first:
            holders = [r for r in self.replicas.replicas if r.card == first]
            self.refused = (
                f"judge replicas serve different models under the name {self.config.model!r}: "
                + "; ".join(f"{r.url} serves {_card_text(first)}" for r in holders)
                + f"; {replica.url} serves {_card_text(card)}. Point every replica at one model (or drop one)"
            )
            log.error("%s", self.refused)
            raise JudgeRefused(self.refused)
        replica.card = card

    async def _check_replica(self, replica: Replica, quiet: bool = False) -> None:
        try:
            await self._fetch_card(replica)
        except JudgeHTTPError as exc:
            self.replicas.failed(replica, exc.reason)
            if not quiet:
                raise

    # ------------------------------------------------------------------ limits

    def _remaining_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _request_timeout(self) -> float:
        remaining = self._remaining_s()
        return self.config.timeout_s if remaining is None else max(0.01, min(self.config.timeout_s, remaining))

    def _check_limits(self) -> None:
        if self.refused:
            raise _Stop("JudgeRefused")
        if self.breaker_open:
            raise _Stop("CircuitOpen")
        remaining = self._remaining_s()
        if remaining is not None and remaining <= 0:
            raise _Stop("DeadlineExceeded")

    def _record_failure(self, attempt_only: bool = False) -> None:
        """Count a failed verdict (or one failed attempt) since the last reply; maybe open the breaker.

        It opens after ``breaker_failures`` failed verdicts in a row, or after as many verdicts'
        worth of failed attempts in a row (``breaker_failures * max_attempts``): with many
        questions in flight, every one of them fails its first attempts long before any single
        one has used up its retries.
        """
        if attempt_only:
            self._failed_attempts += 1
        else:
            self._failed_in_a_row += 1
        threshold = self.config.breaker_failures
        if not threshold or self.breaker_open:
            return
        if self._failed_in_a_row >= threshold or self._failed_attempts >= threshold * self.config.max_attempts:
            self.breaker_open = True
            log.error(
                "judge at %s: %d verdicts and %d attempts failed in a row: circuit breaker open, the rest of this "
                "run is judge_failed (rerun to judge them; nothing failed is cached)",
                ",".join(self.public_urls),
                self._failed_in_a_row,
                self._failed_attempts,
            )

    def _record_reply(self) -> None:
        self._failed_in_a_row = 0
        self._failed_attempts = 0

    # ------------------------------------------------------------------ asking

    async def judge(self, template: PromptTemplate, inputs: Mapping[str, Any], reask: bool = False) -> Verdict:
        """Ask one question of ``template``; never raises for a bad reply or a down judge. ``reask``: ask
        again even when this client already got an invalid or unknown reply to it (a caller's retry)."""
        try:
            self._check_limits()
            key = verdict_key(await self.identity(), template.key, inputs)
        except Exception as exc:  # noqa: BLE001 -- identity unknown (judge down or wrong model): failed, never cached
            return self._failed(exc, "judge identity could not be fetched")
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                status, value, raw = hit
                return Verdict(status, value, raw, cached=True)
        remembered = None if reask else self._session.get(key)
        if remembered is not None:
            self.stats["deduplicated"] += 1
            return remembered
        shared = self._inflight.get(key)
        if shared is not None:  # the same question is already being asked: wait for that verdict
            self.stats["deduplicated"] += 1
            return await asyncio.shield(shared)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verdict = await self._judge_uncached(key, template, inputs)
            future.set_result(verdict)
            return verdict
        except BaseException as exc:  # cancellation: waiters re-raise it themselves
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._inflight[key]

    async def _judge_uncached(self, key: str, template: PromptTemplate, inputs: Mapping[str, Any]) -> Verdict:
        messages = template.build(inputs)
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max(template.max_tokens, self.config.max_tokens),
        }

        async def chat(replica: Replica) -> Any:
            self.stats["requests"] += 1
            # The template header says which prompt asks (a test judge answers by it; a proxy can route by it).
            reply = await replica.http.post_openai(
                "/chat/completions", body, headers={TEMPLATE_HEADER: template.key}, timeout_s=self._request_timeout()
            )
            content = _reply_content(reply)
            # A server's error message in place of an answer is transient: retried, never a verdict.
            if isinstance(content, str) and looks_like_server_error(content):
                if template.parse(content, inputs)[0] not in template.statuses:
                    self.stats["transient_replies"] += 1
                    where = replica.http.where("/chat/completions")
                    raise TransientReply(f"{where}: HTTP 200 carrying an error: {replica.http.scrub(content[:120])!r}")
            return content

        tried: list[Replica] = []
        try:
            content = await self._with_retries(lambda: self._attempt(chat, tried))
        except NotJSON:
            content = None  # a 200 whose body is not JSON: invalid, and asked again next run (not cached)
        except Exception as exc:  # noqa: BLE001 -- after the retries: judge_failed, never cached
            return self._failed(exc, "judge request failed after retries")
        self._record_reply()
        try:
            status, value = template.parse(content, inputs)
        except Exception:  # noqa: BLE001 -- a parser must not lose the run over an odd reply
            status, value = "invalid", None
        if status not in template.statuses and status != "unknown":
            status, value = "invalid", None
        raw = storable_text(content) if content is not None else None
        self.stats["settled"] += 1
        if status in ("invalid", "unknown"):
            self.stats[status] += 1
        # Only a verdict in the template's own format is cached (an allow-list). An invalid reply (prose, a
        # number, empty, a proxy's page, a cut-off line) or an unknown label is counted now and asked again
        # on the next run: a passing fault must never become a stored answer.
        verdict = Verdict(status, value, raw)
        if self.cache is not None and status in template.statuses and reply_text(content):
            self.cache.put(key, await self.identity(), template.key, status, value, raw)
        elif status not in template.statuses:
            self._session[key] = verdict
        return verdict

    def _failed(self, exc: Exception, what: str) -> Verdict:
        """The ``failed`` verdict (never cached) for a question that got no reply: the breaker or the call
        budget stopped it, a replica set was refused, or the judge was down or wrong after the retries."""
        self.stats["failed"] += 1
        if isinstance(exc, _Stop):
            self.stats["short_circuited"] += 1
            return Verdict("failed", error=str(exc))
        if isinstance(exc, JudgeRefused):
            return Verdict("failed", error="JudgeRefused")
        self._record_failure()
        log.warning("%s: %s", what, self._describe(exc))
        return Verdict("failed", error=_reason(exc))

    async def _attempt(self, call, tried: list[Replica] | None = None) -> Any:
        """One try of ``call(replica)`` on the least busy replica that is up (another than the last one in
        ``tried`` when it can); its outcome marks the replica."""
        replica = await self.replicas.acquire(avoid=tried[-1] if tried else None)
        if tried is not None:
            tried.append(replica)
        self._active += 1
        self.stats["peak_inflight"] = max(self.stats["peak_inflight"], self._active)
        try:
            self._check_limits()  # raises _Stop (not retryable) once the run is over
            if replica.card is None and self._card is not None:
                await self._check_replica(replica)  # never a verdict from a replica whose model is unchecked
            result = await call(replica)
        except NotJSON:
            self.replicas.answered(replica)
            raise
        except JudgeHTTPError as exc:
            asked = getattr(exc, "retry_after", None)
            if asked is not None:
                self.replicas.rest(replica, min(asked, self.config.retry_after_max_s))
            elif exc.retryable and getattr(exc, "status", None) != 429:
                self.stats["replica_failures"] += 1
                self.replicas.failed(replica, exc.reason)
            raise
        finally:
            self._active -= 1
            await self.replicas.release(replica)
        self.replicas.answered(replica)
        return result

    async def _with_retries(self, call) -> Any:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        backoff = wait_random_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s)

        def wait(state) -> float:
            exc = state.outcome.exception()
            asked = getattr(exc, "retry_after", None) if isinstance(exc, HTTPStatusError) else None
            if len(self.replicas) > 1 and self.replicas.another_is_up():
                seconds = 0.0  # another replica can take the retry now
            elif asked is not None:
                self.stats["retry_after_waits"] += 1
                seconds = min(asked, self.config.retry_after_max_s)
            else:
                seconds = backoff(state)
            remaining = self._remaining_s()
            return seconds if remaining is None else max(0.0, min(seconds, remaining))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait,
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    return await call()
                except Exception as exc:
                    if _retryable(exc):
                        self._record_failure(attempt_only=True)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _describe(self, exc: BaseException) -> str:
        """An error as it may be logged: its reason and message, with every secret of the judge's URLs removed."""
        return self.replicas.scrub(f"{_reason(exc)}: {exc}")

    async def judge_many(
        self, template: PromptTemplate, inputs: Sequence[Mapping[str, Any]], reask: bool = False
    ) -> list[Verdict]:
        """Ask many questions concurrently; results in input order."""
        return list(await asyncio.gather(*(self.judge(template, i, reask) for i in inputs)))

    async def judge_choice(self, question: str, options: Mapping[str, str], response: str) -> Verdict:
        """Which option ``response`` finally chose, per the judge (template MCQ_CHOICE)."""
        return await self.judge(MCQ_CHOICE, choice_inputs(question, options, response))


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, JudgeHTTPError) else type(exc).__name__


def _card_text(card: dict[str, Any]) -> str:
    length = card.get("max_model_len")
    return f"{card.get('root') or card.get('id')}" + (f" (max_model_len {length})" if length is not None else "")


def choice_inputs(question: str, options: Mapping[str, str], response: str) -> dict[str, Any]:
    return {"question": str(question), "options": {str(k): str(v) for k, v in options.items()}, "response": response}


class JudgePool:
    """A JudgeClient on an event loop in a daemon thread, callable from any thread."""

    def __init__(self, config: JudgeConfig, cache: VerdictCache | None | bool = True):
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="medbridge-judge", daemon=True)
        self._thread.start()
        self.client: JudgeClient = self._call(self._make_client(cache))

    async def _make_client(self, cache) -> JudgeClient:
        return JudgeClient(self.config, cache=cache)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, template: PromptTemplate, inputs: Mapping[str, Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self.client.judge(template, inputs), self._loop)

    def submit_choice(self, question: str, options: Mapping[str, str], response: str) -> concurrent.futures.Future:
        return self.submit(MCQ_CHOICE, choice_inputs(question, options, response))

    def judge_many(
        self, template: PromptTemplate, inputs: Sequence[Mapping[str, Any]], reask: bool = False
    ) -> list[Verdict]:
        return self._call(self.client.judge_many(template, inputs, reask))

    @property
    def stats(self) -> Counter:
        return self.client.stats

    def judge_name(self) -> str:
        """A readable judge identity for records and leaderboard pins: the configured judge id, else the
        model the server reports behind its served name (the card's root, once fetched), else name@URL
        (public URLs: no credentials, no query values)."""
        if self.config.judge_id:
            return self.config.judge_id
        card = self.client._card  # set by the first verdict; never fetched here
        root = card.get("root") if card else None
        if root:
            return self.client.replicas.scrub(str(root))
        return f"{self.config.model}@{','.join(self.client.public_urls)}"

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self.client.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


_POOLS: dict[JudgeConfig, JudgePool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(config: JudgeConfig) -> JudgePool:
    """The process-wide pool for this configuration (created on first use; its deadline starts then)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(config)
        if pool is None:
            pool = _POOLS[config] = JudgePool(config)
        return pool
