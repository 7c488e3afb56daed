"""The LLM judge: one async client for any OpenAI-compatible endpoint (vLLM by default), the
rules -> judge cascade used by our tasks, and lmms-eval ``verifiers`` adapters.

Configuration (``JudgeConfig.resolve``), highest precedence first:

1. explicit arguments (CLI flags, Python callers),
2. a task YAML's ``metadata: {judge: {...}}`` block (base_url, model, mode, concurrency, ...),
3. environment: ``MEDBRIDGE_JUDGE_BASE_URL``, ``MEDBRIDGE_JUDGE_MODEL``, ``MEDBRIDGE_JUDGE_API_KEY``,
   ``MEDBRIDGE_JUDGE_MODE``, ``MEDBRIDGE_JUDGE_CONCURRENCY``, ``MEDBRIDGE_JUDGE_TIMEOUT``,
   ``MEDBRIDGE_JUDGE_MAX_ATTEMPTS``, ``MEDBRIDGE_JUDGE_CACHE``.

The API key is only ever read from explicit arguments or the environment (never from a task
file), is excluded from ``repr`` and is never logged, cached or written to a record.

Modes: ``rules`` (our extractor only), ``judge`` (every sample judged; rules still recorded to
measure agreement), ``cascade`` (rules settle what they can read, the judge the rest). The
default is ``cascade`` when a judge endpoint is configured and ``rules`` otherwise.

How the cascade fits lmms-eval: ``process_results`` runs per document, so judging there would
send one request per document in sequence. Instead ``score_doc_judged`` submits the samples that
need the judge to a process-wide pool (an event loop in a background thread, bounded
concurrency) and leaves pending markers in the record; the task's first aggregation calls
``resolve_pending`` on the task's records, which waits for the pool and fills the records in
place. lmms-eval's sample log holds the very same dict objects and is written after aggregation,
so the logged samples carry the final verdicts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medbridge.harness_ext import metrics
from medbridge.harness_ext.answers import extract_choice
from medbridge.harness_ext.judge_cache import (
    VerdictCache,
    default_cache_path,
    verdict_key,
)
from medbridge.judges import prompts

__all__ = [
    "JUDGE_METRICS",
    "MODES",
    "JudgeChoiceVerifier",
    "JudgeClient",
    "JudgeConfig",
    "JudgePool",
    "MedbridgeChoiceExtractor",
    "RuleChoiceVerifier",
    "Verdict",
    "active_config",
    "cohen_kappa",
    "get_pool",
    "judge_stats",
    "register_verifiers",
    "resolve_pending",
    "score_doc_judged",
    "stats_aggregation",
]

log = logging.getLogger(__name__)

MODES = ("rules", "judge", "cascade")
# Extra per-task metrics. None is a substring of another or of the score metrics (acc1,
# unparsed_greedy, pass_at_XX, maj_at_16, all_at_16, unparsed_sampled): lmms-eval's group
# aggregation matches metric names by substring.
JUDGE_METRICS = (
    "n_by_rules",
    "n_by_judge",
    "n_unparseable",
    "n_judge_invalid",
    "n_judge_down",
    "rule_judge_agree",
    "rule_judge_kappa",
)

_ENV = {
    "base_url": "MEDBRIDGE_JUDGE_BASE_URL",
    "model": "MEDBRIDGE_JUDGE_MODEL",
    "api_key": "MEDBRIDGE_JUDGE_API_KEY",
    "mode": "MEDBRIDGE_JUDGE_MODE",
    "concurrency": "MEDBRIDGE_JUDGE_CONCURRENCY",
    "timeout_s": "MEDBRIDGE_JUDGE_TIMEOUT",
    "max_attempts": "MEDBRIDGE_JUDGE_MAX_ATTEMPTS",
    "cache_path": "MEDBRIDGE_JUDGE_CACHE",
}


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    mode: str = "rules"
    concurrency: int = 16
    timeout_s: float = 120.0
    max_attempts: int = 8
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_tokens: int = 16
    cache_path: str | None = None  # None: default_cache_path(); "" disables the cache

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"judge mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "rules" and not (self.base_url and self.model):
            raise ValueError(f"judge mode {self.mode!r} needs a judge base_url and model (set {_ENV['base_url']} and {_ENV['model']})")
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("judge concurrency and max_attempts must be >= 1")

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)

    @classmethod
    def resolve(
        cls,
        explicit: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> JudgeConfig:
        """Merge explicit args > task metadata (``metadata["judge"]`` or the mapping itself) > environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, var in _ENV.items():
            if env.get(var):
                values[name] = env[var]
        meta = dict((metadata or {}).get("judge", metadata or {}))
        if "api_key" in meta:
            raise ValueError("a task file must not carry a judge api_key; set MEDBRIDGE_JUDGE_API_KEY instead")
        known = set(cls.__dataclass_fields__)
        for source in (meta, dict(explicit or {})):
            for name, value in source.items():
                if name not in known:
                    raise ValueError(f"unknown judge setting {name!r} (known: {sorted(known)})")
                if value is not None:
                    values[name] = value
        if "mode" not in values:
            values["mode"] = "cascade" if values.get("base_url") and values.get("model") else "rules"
        for name in ("concurrency", "max_attempts", "max_tokens"):
            if name in values:
                values[name] = int(values[name])
        for name in ("timeout_s", "backoff_initial_s", "backoff_max_s"):
            if name in values:
                values[name] = float(values[name])
        return cls(**values)


@dataclass(frozen=True)
class Verdict:
    """One judge verdict. status: "letter" | "none" | "invalid" | "failed"."""

    status: str
    letter: str | None = None
    raw: str | None = None
    cached: bool = False
    error: str | None = None  # exception class of a failed verdict; never the request or the key

    @property
    def outcome_label(self) -> str:
        """What the record stores as the judge's choice: a letter, "none", "invalid" or "failed"."""
        return self.letter if self.status == "letter" else self.status


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.RateLimitError)):  # APITimeoutError is a connection error
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class JudgeClient:
    """Async judge client: cache first, in-flight de-duplication, bounded concurrency, retries.

    Must be used from one event loop. ``stats`` counts HTTP attempts, cache hits, settled and
    failed verdicts and the peak number of requests in flight.
    """

    def __init__(self, config: JudgeConfig, cache: VerdictCache | None | bool = True):
        if not config.configured:
            raise ValueError(f"no judge endpoint configured (set {_ENV['base_url']} and {_ENV['model']})")
        import openai

        self.config = config
        # Retries are ours (tenacity, with jitter); the SDK's own would multiply them.
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key or "EMPTY",
            timeout=config.timeout_s,
            max_retries=0,
        )
        if cache is True:
            cache = VerdictCache(config.cache_path or default_cache_path()) if config.cache_path != "" else None
        self.cache: VerdictCache | None = cache or None
        self._sem = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Future] = {}
        self._active = 0
        self.stats = Counter()

    async def aclose(self) -> None:
        await self._client.close()

    async def judge_choice(self, question: str, options: Mapping[str, str], response: str) -> Verdict:
        """Which option ``response`` finally chose, per the judge (MCQ_CHOICE template)."""
        options = {str(k): str(v) for k, v in options.items()}
        inputs = {"question": question, "options": options, "response": response}
        key = verdict_key(self.config.model, prompts.MCQ_CHOICE.key, inputs)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                status, value, raw = hit
                return Verdict(status, value, raw, cached=True)
        shared = self._inflight.get(key)
        if shared is not None:  # the same answer is already being judged: wait for that verdict
            self.stats["deduplicated"] += 1
            return await asyncio.shield(shared)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            verdict = await self._judge_uncached(key, question, options, response)
            future.set_result(verdict)
            return verdict
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    async def _judge_uncached(self, key: str, question: str, options: dict[str, str], response: str) -> Verdict:
        messages = prompts.mcq_choice_messages(question, options, response)
        try:
            reply = await self._complete(messages)
        except Exception as exc:  # noqa: BLE001 -- after the retries: reported as judge_failed, never cached
            self.stats["failed"] += 1
            log.warning("judge request failed after retries: %s", type(exc).__name__)
            return Verdict("failed", error=type(exc).__name__)
        status, letter = prompts.parse_mcq_verdict(reply, options)
        self.stats["settled"] += 1
        if status == "invalid":
            self.stats["invalid"] += 1
        if self.cache is not None:
            self.cache.put(key, self.config.model, prompts.MCQ_CHOICE.key, status, letter, reply)
        return Verdict(status, letter, reply)

    async def _complete(self, messages: list[dict[str, str]]) -> str | None:
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_random_exponential,
        )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=wait_random_exponential(multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                # The semaphore is held only while a request is on the wire, not during backoff.
                async with self._sem:
                    self._active += 1
                    self.stats["peak_inflight"] = max(self.stats["peak_inflight"], self._active)
                    self.stats["requests"] += 1
                    try:
                        completion = await self._client.chat.completions.create(
                            model=self.config.model,
                            messages=messages,
                            temperature=0,
                            max_tokens=self.config.max_tokens,
                        )
                    finally:
                        self._active -= 1
        if not completion.choices:
            return None
        return completion.choices[0].message.content

    async def judge_many(self, jobs: Sequence[tuple[str, Mapping[str, str], str]]) -> list[Verdict]:
        """Judge (question, options, response) jobs concurrently; results in input order."""
        return list(await asyncio.gather(*(self.judge_choice(q, o, r) for q, o, r in jobs)))


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

    def submit(self, question: str, options: Mapping[str, str], response: str) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self.client.judge_choice(question, options, response), self._loop)

    def judge_many(self, jobs: Sequence[tuple[str, Mapping[str, str], str]]) -> list[Verdict]:
        return self._call(self.client.judge_many(jobs))

    @property
    def stats(self) -> Counter:
        return self.client.stats

    def close(self) -> None:
        if self._loop.is_running():
            self._call(self.client.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


_POOLS: dict[JudgeConfig, JudgePool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(config: JudgeConfig) -> JudgePool:
    """The process-wide pool for this configuration (created on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(config)
        if pool is None:
            pool = _POOLS[config] = JudgePool(config)
        return pool


def active_config() -> JudgeConfig:
    """The configuration our tasks use: the environment (explicit/metadata go through resolve())."""
    return JudgeConfig.resolve()


# ------------------------------------------------------------------------------- cascade

# job id -> [(sample index, future)]; the job id is what a record carries while it is pending.
_PENDING: dict[str, list[tuple[int, concurrent.futures.Future]]] = {}
_PENDING_LOCK = threading.Lock()


def score_doc_judged(
    doc: Mapping[str, Any],
    responses: Sequence[str | None],
    options: Mapping[str, str],
    config: JudgeConfig,
    pool: JudgePool | None = None,
) -> dict[str, Any]:
    """Per-item record under the cascade: rules now, judge verdicts later (see resolve_pending).

    Extra record fields: ``sources`` ("rules" / "judge" per sample), ``rule_choices``,
    ``judge_choices`` (letter / "none" / "invalid" / "failed" / None when not judged) and, while
    verdicts are outstanding, ``judge_job`` with "pending" entries in ``outcomes``.
    """
    rule_choices = [extract_choice(r, dict(options)) if isinstance(r, str) else None for r in responses]
    record = metrics.make_record(doc["item_id"], doc.get("dataset", ""), doc["answer_letter"], rule_choices, options=options)
    record["rule_choices"] = list(rule_choices)
    record["sources"] = ["rules"] * len(rule_choices)
    record["judge_choices"] = [None] * len(rule_choices)
    if config.mode == "rules":
        return record
    question = str(doc.get("question") or doc.get("prompt") or "")
    pool = pool or get_pool(config)
    jobs = []
    for i, (response, rule) in enumerate(zip(responses, rule_choices)):
        if config.mode == "cascade" and rule is not None:
            continue
        if not isinstance(response, str):
            continue  # nothing was generated: nothing to judge
        jobs.append((i, pool.submit(question, options, response)))
        record["outcomes"][i] = "pending"
        record["sources"][i] = "judge"
    if jobs:
        job_id = uuid.uuid4().hex
        with _PENDING_LOCK:
            _PENDING[job_id] = jobs
        record["judge_job"] = job_id
    return record


_JUDGE_OUTCOME = {"none": "unparsed", "invalid": "invalid", "failed": "judge_failed"}


def resolve_pending(records: Sequence[Mapping[str, Any]]) -> int:
    """Wait for the outstanding verdicts of these records and fill them in place; returns how many.

    Idempotent and cheap once resolved, so every aggregation of a task may call it.
    """
    filled = 0
    for record in records:
        if not isinstance(record, dict) or "judge_job" not in record:
            continue
        with _PENDING_LOCK:
            jobs = _PENDING.pop(record["judge_job"], None)
        if jobs is None:
            raise RuntimeError(
                f"item {record.get('item_id')}: judge job {record['judge_job']} is not known to this process "
                "(records with pending verdicts cannot be aggregated elsewhere)"
            )
        for i, future in jobs:
            verdict: Verdict = future.result()
            record["judge_choices"][i] = verdict.outcome_label
            if verdict.status == "letter":
                record["choices"][i] = verdict.letter
                record["outcomes"][i] = metrics.outcome_of(verdict.letter, record["answer"])
            else:
                record["choices"][i] = None
                record["outcomes"][i] = _JUDGE_OUTCOME[verdict.status]
            filled += 1
        record["c"] = sum(o == "correct" for o in record["outcomes"])
        del record["judge_job"]
    return filled


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items (nan when undefined)."""
    if len(a) != len(b):
        raise ValueError("kappa needs two label lists of equal length")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e == 1.0:
        return 1.0 if p_o == 1.0 else math.nan
    return (p_o - p_e) / (1.0 - p_e)


def judge_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Counts of how each sample was settled plus rule-vs-judge agreement, over a task's records.

    Records without a ``sources`` field (rules-only scoring) count every readable sample as
    settled by rules.
    """
    resolve_pending(records)
    out = dict.fromkeys(("n_by_rules", "n_by_judge", "n_unparseable", "n_judge_invalid", "n_judge_down"), 0)
    both_rule, both_judge = [], []
    for r in records:
        sources = r.get("sources") or ["rules"] * r["n"]
        judged = r.get("judge_choices") or [None] * r["n"]
        rules = r.get("rule_choices") or r["choices"]
        for src, outcome, jc, rc in zip(sources, r["outcomes"], judged, rules):
            if outcome == "unparsed":
                out["n_unparseable"] += 1
            if src == "rules" and outcome != "unparsed":
                out["n_by_rules"] += 1
            elif src == "judge":
                if outcome == "invalid":
                    out["n_judge_invalid"] += 1
                elif outcome == "judge_failed":
                    out["n_judge_down"] += 1
                else:
                    out["n_by_judge"] += 1
            if rc is not None and jc is not None and len(jc) == 1:
                both_rule.append(rc)
                both_judge.append(jc)
    agree = sum(x == y for x, y in zip(both_rule, both_judge))
    out["rule_judge_agree"] = agree / len(both_rule) if both_rule else math.nan
    out["rule_judge_kappa"] = cohen_kappa(both_rule, both_judge)
    out["n_both"] = len(both_rule)
    return out


def stats_aggregation(name: str):
    """lmms-eval aggregation for one of JUDGE_METRICS."""
    if name not in JUDGE_METRICS:
        raise KeyError(f"unknown judge metric {name!r}")

    def agg(records: list[dict[str, Any]]) -> float:
        return float(judge_stats(records)[name])

    agg.__name__ = f"agg_{name}"
    return agg


# ------------------------------------------------------------------ lmms-eval verifiers


def _verifier_base():
    from lmms_eval.verifiers import Extractor, Verifier, VerifyResult

    return Extractor, Verifier, VerifyResult


Extractor, Verifier, VerifyResult = _verifier_base()


class MedbridgeChoiceExtractor(Extractor):
    """lmms-eval Extractor around ``extract_choice``: the chosen letter, or "" when unreadable.

    Needs ``options`` ({letter: text}) as a keyword argument, as our verifiers do.
    """

    def extract(self, text: str, **kwargs: Any) -> str:
        options = kwargs.get("options")
        if not options:
            raise ValueError("MedbridgeChoiceExtractor needs options={letter: text}")
        return extract_choice(text, dict(options)) or ""


class RuleChoiceVerifier(Verifier):
    """Rules only. Confident exactly when the extractor read a letter (so a CompositeVerifier
    falls through to the judge only for unreadable answers)."""

    def verify(self, question: str, prediction: str, ground_truth: str, **kwargs: Any):
        options = kwargs.get("options") or {}
        letter = extract_choice(prediction, dict(options)) if options else None
        correct = letter is not None and letter == ground_truth.strip()
        return VerifyResult(
            score=float(correct),
            is_correct=correct,
            raw_output=f"rules: {letter or 'none'}",
            metadata={"confident": letter is not None, "choice": letter, "source": "rules"},
        )


class JudgeChoiceVerifier(Verifier):
    """The LLM judge as an lmms-eval Verifier (synchronous, one sample per call, cached).

    Strict: "invalid" and "judge_failed" verdicts are never correct, and ``metadata`` says which
    (``judge_failed`` is set as lmms-eval's own OpenAIVerifier does). For whole tasks use the
    cascade (score_doc_judged), which judges concurrently.
    """

    def __init__(self, pool: JudgePool | None = None, **config: Any):
        self.pool = pool or get_pool(JudgeConfig.resolve(explicit={"mode": "judge", **config}))

    def verify(self, question: str, prediction: str, ground_truth: str, **kwargs: Any):
        options = kwargs.get("options")
        if not options:
            raise ValueError("JudgeChoiceVerifier needs options={letter: text}")
        verdict: Verdict = self.pool.submit(question, options, prediction).result()
        correct = verdict.status == "letter" and verdict.letter == ground_truth.strip()
        return VerifyResult(
            score=float(correct),
            is_correct=correct,
            raw_output=verdict.raw or "",
            metadata={
                "confident": verdict.status in ("letter", "none"),
                "choice": verdict.letter,
                "verdict": verdict.status,
                "judge_failed": verdict.status == "failed",
                "cached": verdict.cached,
                "source": "judge",
            },
        )


def register_verifiers() -> None:
    """Make ours buildable by name through ``lmms_eval.verifiers.build_verification_pipeline``."""
    from lmms_eval.verifiers import EXTRACTOR_REGISTRY, VERIFIER_REGISTRY

    EXTRACTOR_REGISTRY.setdefault("medbridge_choice", MedbridgeChoiceExtractor)
    VERIFIER_REGISTRY.setdefault("medbridge_rules", RuleChoiceVerifier)
    VERIFIER_REGISTRY.setdefault("medbridge_judge", JudgeChoiceVerifier)
