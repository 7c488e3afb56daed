"""The LLM judge, in one folder (split by job, as lmms-eval's ``lmms_eval/llm_judge/`` is):

- ``prompts.yaml``: the prompt texts, their versions and the project's one modality vocabulary;
  ``prompts.py`` fills them in (messages + strict parser per template)
- ``config.py``: ``JudgeConfig`` (explicit > task metadata > environment; the API key bound to its URL)
- ``client.py``: the async judge client (cache, de-duplication, concurrency, retries with
  Retry-After, deadline, circuit breaker) and the thread-backed ``JudgePool``; ``replicas.py``
  spreads its requests over several servers of one judge
- ``http.py``: the one HTTP policy of every judge request, as an httpx transport under the openai SDK
  (verdicts) and ``JudgeHTTP`` (``/v1/models``, check, health); ``redaction.py``: secrets kept out of
  everything shown, logged or stored
- ``cache.py``: the SQLite verdict cache keyed by judge identity
- ``cascade.py``: rules first, the judge for the rest; per-item records that settle before a
  distributed gather; ``judge_stats`` settles them, then counts who settled each sample and how often
  rules and judge agree (the counting is harness_ext/metrics.py's, which the metric registry reports)
- ``classify.py``: imaging-modality labels through the judge (PMC-VQA balancing)
- ``verifiers.py``: lmms-eval verifier adapters (import ``medbridge.judges.verifiers``; it needs lmms_eval)
- ``server.py`` / ``cli.py`` / ``install_vllm_cpu.sh``: serving and checking a judge
  (``medbridge judge serve`` / ``medbridge judge check``) and the CPU vLLM venv

A new judge prompt is one entry in prompts.yaml, asked with ``pool.judge_many(template, inputs)``.

The dependency runs one way: ``medbridge.harness_ext``'s scoring and report call the judge; the judge
uses only harness_ext's leaf modules (settings, errors, sqlite_store, the answer extractor, the outcome
names and judge counts in metrics, the metric registry's names), never scoring, report or the plugin.
"""

from medbridge.judges.cache import VerdictCache, default_cache_path, verdict_key
from medbridge.judges.cascade import (
    JUDGE_METRICS,
    JudgedRecord,
    cohen_kappa,
    judge_stats,
    resolve_pending,
    score_doc_judged,
    settle_records,
)
from medbridge.judges.classify import classify_modalities, modality_verdicts
from medbridge.judges.client import JudgeClient, JudgePool, Verdict, choice_inputs, get_pool
from medbridge.judges.config import MODES, JudgeConfig, active_config
from medbridge.judges.prompts import FREE_TEXT, MCQ_CHOICE, MODALITIES, MODALITY, PromptTemplate

__all__ = [
    "FREE_TEXT",
    "JUDGE_METRICS",
    "MCQ_CHOICE",
    "MODALITIES",
    "MODALITY",
    "MODES",
    "JudgeClient",
    "JudgeConfig",
    "JudgePool",
    "JudgedRecord",
    "PromptTemplate",
    "Verdict",
    "VerdictCache",
    "active_config",
    "choice_inputs",
    "classify_modalities",
    "cohen_kappa",
    "default_cache_path",
    "get_pool",
    "judge_stats",
    "modality_verdicts",
    "resolve_pending",
    "score_doc_judged",
    "settle_records",
    "verdict_key",
]
