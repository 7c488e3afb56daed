"""One async client for any OpenAI-compatible judge endpoint (vLLM by default).

``JudgeClient.judge(template, inputs)`` asks one question of a ``PromptTemplate`` (prompts.py):
MCQ choice, free-text grading and modality classification all go through it. Per question: the
verdict cache first, then in-flight de-duplication (identical questions share one request), then
a request under bounded concurrency with tenacity retries.

What a question can end as (``Verdict.status``): one of the template's settled statuses, or
``invalid`` (the judge answered, but not in the template's exact format; counted; cached when the
reply was text, asked again next run when it was any other shape: a number, a list, null, empty,
a lone surrogate, no choices), or ``failed`` (no usable answer:
retries exhausted, a 4xx, the run's deadline passed, the circuit breaker open; never cached,
so the next run asks again). Nothing raises out of ``judge`` for a bad reply.

Faults: 429/5xx, timeouts and connection errors are retried with jittered exponential backoff;
a ``Retry-After`` (or ``retry-after-ms``) header on 429/503 is honoured, capped at
``retry_after_max_s``; every request and wait is cut to the run's ``deadline_s``; after
``breaker_failures`` verdicts in a row fail (or that many verdicts' worth of attempts, see
``_record_failure``), the breaker opens and the rest fail at once. A judge that is expected to
restart mid-run needs ``breaker_failures=0`` and a retry budget that outlasts the restart.

Judge identity (the verdict cache key): ``judge_id`` when configured, else the served model
name + base URL + the server's own description of that model from ``/v1/models`` (its root
path, owner, parent, max length), fetched once per client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medbridge.judges.cache import VerdictCache, default_cache_path, storable_text, verdict_key
from medbridge.judges.config import JudgeConfig
from medbridge.judges.prompts import MCQ_CHOICE, PromptTemplate, reply_text

__all__ = ["TEMPLATE_HEADER", "JudgeClient", "JudgePool", "Verdict", "get_pool", "retry_after_s"]

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
    error: str | None = None  # why a verdict failed (exception class or reason); never the request or the key

    @property
    def letter(self) -> str | None:
        return self.value if self.status == "letter" else None

    @property
    def outcome_label(self) -> str:
        """What a record stores as the judge's choice: a letter, "none", "invalid" or "failed"."""
        return self.value if self.status == "letter" else self.status


class _Stop(Exception):
    """A verdict given up without a request: deadline passed or breaker open."""


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError)):  # APITimeoutError is a connection error
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code >= 500 or exc.status_code == 408)


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds a 429/503 reply asked us to wait (``retry-after-ms`` or ``Retry-After``: seconds or an HTTP date)."""
    response = getattr(exc, "response", None)
    if getattr(exc, "status_code", None) not in (429, 503) or response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _reply_content(completion: Any) -> Any:
    """The first choice's content, whatever its shape; None when the reply has no such thing."""
    try:
        return completion.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


class JudgeClient:
    """Async judge client. Must be used from one event loop.

    ``stats`` counts chat requests (``requests``; ``identity_requests`` for /v1/models),
    ``cache_hits``, ``deduplicated``, ``settled``, ``invalid``, ``failed``, ``short_circuited``
    (failed without a request), ``retry_after_waits`` and the peak number of requests in flight
    (``peak_inflight``).
    """

    def __init__(self, config: JudgeConfig, cache: VerdictCache | None | bool = True):
        if not config.configured:
            raise ValueError("no judge endpoint configured (set MEDBRIDGE_JUDGE_BASE_URL and MEDBRIDGE_JUDGE_MODEL)")
        import openai

        self.config = config
        # Retries are ours (tenacity, with jitter and Retry-After); the SDK's own would multiply them.
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "EMPTY",
            timeout=config.timeout_s,
            max_retries=0,
        )
        if cache is True:
            cache = VerdictCache(config.cache_path or default_cache_path()) if config.cache_enabled else None
        self.cache: VerdictCache | None = cache or None
        self._sem = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Future] = {}
        self._active = 0
        self._failed_in_a_row = 0
        self._failed_attempts = 0
        self.breaker_open = False
        self._deadline = time.monotonic() + config.deadline_s if config.deadline_s else None
        self._identity: str | None = None
        self._identity_lock = asyncio.Lock()
        self.stats = Counter()

    async def aclose(self) -> None:
        await self._client.close()

    # ------------------------------------------------------------------ identity

    async def identity(self) -> str:
        """What the verdict cache keys this judge by (fetched once; raises when it cannot be known)."""
        if self._identity is not None:
            return self._identity
        async with self._identity_lock:
            if self._identity is None:
                if self.config.judge_id:
                    self._identity = f"id:{self.config.judge_id}"
                else:
                    card = await self._with_retries(self._model_card)
                    self._record_reply()
                    self._identity = json.dumps(
                        {"served": self.config.model, "base_url": self.config.base_url.rstrip("/"), "card": card},
                        sort_keys=True,
                    )
        return self._identity

    async def _model_card(self) -> dict[str, Any]:
        self.stats["identity_requests"] += 1
        page = await self._client.models.list(timeout=self._request_timeout())
        for model in page.data:
            if model.id == self.config.model:
                card = model.model_dump() if hasattr(model, "model_dump") else dict(model)
                # "created" is the time of the request on vLLM, permissions are per request.
                return {k: card.get(k) for k in ("id", "root", "parent", "owned_by", "max_model_len")}
        served = [m.id for m in page.data]
        raise LookupError(f"{self.config.base_url} serves {served}, not {self.config.model!r}")

    # ------------------------------------------------------------------ limits

    def _remaining_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _request_timeout(self) -> float:
        remaining = self._remaining_s()
        return self.config.timeout_s if remaining is None else max(0.01, min(self.config.timeout_s, remaining))

    def _check_limits(self) -> None:
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
                self.config.base_url,
                self._failed_in_a_row,
                self._failed_attempts,
            )

    def _record_reply(self) -> None:
        self._failed_in_a_row = 0
        self._failed_attempts = 0

    # ------------------------------------------------------------------ asking

    async def judge(self, template: PromptTemplate, inputs: Mapping[str, Any]) -> Verdict:
        """Ask one question of ``template``; never raises for a bad reply or a down judge."""
        try:
            self._check_limits()
            key = verdict_key(await self.identity(), template.key, inputs)
        except _Stop as stop:
            self.stats["short_circuited"] += 1
            self.stats["failed"] += 1
            return Verdict("failed", error=str(stop))
        except Exception as exc:  # noqa: BLE001 -- identity unknown (judge down or wrong model): failed, never cached
            self._record_failure()
            self.stats["failed"] += 1
            log.warning("judge identity could not be fetched: %s: %s", type(exc).__name__, exc)
            return Verdict("failed", error=type(exc).__name__)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                status, value, raw = hit
                return Verdict(status, value, raw, cached=True)
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
        import openai

        messages = template.build(inputs)
        try:
            completion = await self._with_retries(lambda: self._create(messages, template))
        except (ValueError, openai.APIResponseValidationError):
            completion = None  # a 200 whose body is not a chat completion (not JSON, wrong schema): invalid
        except _Stop as stop:
            self.stats["short_circuited"] += 1
            self.stats["failed"] += 1
            return Verdict("failed", error=str(stop))
        except Exception as exc:  # noqa: BLE001 -- after the retries: judge_failed, never cached
            self._record_failure()
            self.stats["failed"] += 1
            log.warning("judge request failed after retries: %s", type(exc).__name__)
            return Verdict("failed", error=type(exc).__name__)
        self._record_reply()
        content = _reply_content(completion)
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
        # A text reply is the judge's answer (at temperature 0 it would say the same again): cached,
        # even when invalid. Any other shape (a number, a list, null, empty, unencodable text, no
        # choices) is a serving fault: counted invalid now and asked again on the next run. A label
        # outside the template's list ("unknown") is never cached as an answer: asked again next run.
        if self.cache is not None and status != "unknown" and reply_text(content):
            self.cache.put(key, await self.identity(), template.key, status, value, raw)
        return Verdict(status, value, raw)

    async def _create(self, messages: list[dict[str, Any]], template: PromptTemplate) -> Any:
        from openai.types.chat import ChatCompletion

        # The semaphore is held only while a request is on the wire, not during backoff.
        async with self._sem:
            self._check_limits()
            self._active += 1
            self.stats["peak_inflight"] = max(self.stats["peak_inflight"], self._active)
            self.stats["requests"] += 1
            try:
                # The SDK's low-level post: our messages are plain JSON already, and the typed
                # create() re-walks them through its TypedDict transform (about a quarter of the
                # client's CPU per request, measured with benchmarks/judge_throughput.py).
                return await self._client.post(
                    "/chat/completions",
                    body={
                        "model": self.config.model,
                        "messages": messages,
                        "temperature": 0,
                        "max_tokens": max(template.max_tokens, self.config.max_tokens),
                    },
                    cast_to=ChatCompletion,
                    # Which template asks (a test judge answers by it, a proxy can route or log by it).
                    options={"timeout": self._request_timeout(), "headers": {TEMPLATE_HEADER: template.key}},
                )
            finally:
                self._active -= 1

    async def _with_retries(self, call) -> Any:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        backoff = wait_random_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s)

        def wait(state) -> float:
            asked = retry_after_s(state.outcome.exception())
            if asked is not None:
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
                self._check_limits()  # raises _Stop (not retryable) once the run is over
                try:
                    return await call()
                except Exception as exc:
                    if _retryable(exc):
                        self._record_failure(attempt_only=True)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def judge_many(self, template: PromptTemplate, inputs: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        """Ask many questions concurrently; results in input order."""
        return list(await asyncio.gather(*(self.judge(template, i) for i in inputs)))

    async def judge_choice(self, question: str, options: Mapping[str, str], response: str) -> Verdict:
        """Which option ``response`` finally chose, per the judge (template MCQ_CHOICE)."""
        return await self.judge(MCQ_CHOICE, choice_inputs(question, options, response))


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

    def judge_many(self, template: PromptTemplate, inputs: Sequence[Mapping[str, Any]]) -> list[Verdict]:
        return self._call(self.client.judge_many(template, inputs))

    @property
    def stats(self) -> Counter:
        return self.client.stats

    def judge_name(self) -> str:
        """A readable judge identity for records and leaderboard pins: the configured judge id, else the
        model the server reports behind its served name (the card's root, once fetched), else name@URL."""
        if self.config.judge_id:
            return self.config.judge_id
        identity = self.client._identity  # set by the first verdict; never fetched here
        root = json.loads(identity).get("card", {}).get("root") if identity else None
        return str(root) if root else f"{self.config.model}@{self.config.base_url}"

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
