"""The LLM judge, split by job (as lmms-eval's ``lmms_eval/llm_judge/`` is):

- ``config.py``: ``JudgeConfig`` (explicit > task metadata > environment; the API key bound to its URL)
- ``prompts.py``: versioned templates (messages + strict parser) and the modality vocabulary
- ``client.py``: the async OpenAI client (cache, de-duplication, concurrency, retries with
  Retry-After, deadline, circuit breaker) and the thread-backed ``JudgePool``
- ``cache.py``: the SQLite verdict cache keyed by judge identity
- ``cascade.py``: rules first, the judge for the rest; per-item records that settle before a
  distributed gather; judge counts and rule-vs-judge agreement
- ``classify.py``: imaging-modality labels through the judge (PMC-VQA balancing)
- ``verifiers.py``: lmms-eval verifier adapters

A new judge prompt is one ``PromptTemplate`` in prompts.py, asked with ``pool.judge_many(template, inputs)``.
The dependency runs one way: medbridge.judges (serve/check commands) imports this package, never the reverse.
"""

from medbridge.harness_ext.judge.cache import VerdictCache, default_cache_path, verdict_key
from medbridge.harness_ext.judge.cascade import (
    JUDGE_METRICS,
    JudgedRecord,
    cohen_kappa,
    judge_stats,
    resolve_pending,
    score_doc_judged,
    settle_records,
    stats_aggregation,
)
from medbridge.harness_ext.judge.classify import classify_modalities, modality_verdicts
from medbridge.harness_ext.judge.client import JudgeClient, JudgePool, Verdict, choice_inputs, get_pool
from medbridge.harness_ext.judge.config import MODES, JudgeConfig, active_config
from medbridge.harness_ext.judge.prompts import FREE_TEXT, MCQ_CHOICE, MODALITIES, MODALITY, PromptTemplate
from medbridge.harness_ext.judge.verifiers import (
    JudgeChoiceVerifier,
    MedbridgeChoiceExtractor,
    RuleChoiceVerifier,
    register_verifiers,
)

__all__ = [
    "FREE_TEXT",
    "JUDGE_METRICS",
    "MCQ_CHOICE",
    "MODALITIES",
    "MODALITY",
    "MODES",
    "JudgeChoiceVerifier",
    "JudgeClient",
    "JudgeConfig",
    "JudgePool",
    "JudgedRecord",
    "MedbridgeChoiceExtractor",
    "PromptTemplate",
    "RuleChoiceVerifier",
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
    "register_verifiers",
    "resolve_pending",
    "score_doc_judged",
    "settle_records",
    "stats_aggregation",
    "verdict_key",
]
