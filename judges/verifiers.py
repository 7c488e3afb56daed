"""Our rule extractor and the LLM judge as lmms-eval ``verifiers`` (extractor + verifier registries).

``register_verifiers()`` makes ``medbridge_choice`` (extractor), ``medbridge_rules`` and
``medbridge_judge`` (verifiers) buildable by name through
``lmms_eval.verifiers.build_verification_pipeline``. The judge verifier is synchronous, one sample
per call (cached); whole tasks use the cascade, which judges concurrently.
"""

from __future__ import annotations

from typing import Any

from lmms_eval.verifiers import Extractor, Verifier, VerifyResult
from medbridge.harness_ext.answers import extract_choice
from medbridge.judges.client import JudgePool, Verdict, get_pool
from medbridge.judges.config import JudgeConfig

__all__ = ["JudgeChoiceVerifier", "MedbridgeChoiceExtractor", "RuleChoiceVerifier", "register_verifiers"]


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

    def verify(self, question: str, prediction: str, ground_truth: str, **kwargs: Any) -> VerifyResult:
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
    (``judge_failed`` is set as lmms-eval's own OpenAIVerifier does).
    """

    def __init__(self, pool: JudgePool | None = None, **config: Any):
        self.pool = pool or get_pool(JudgeConfig.resolve(explicit={"mode": "judge", **config}))

    def verify(self, question: str, prediction: str, ground_truth: str, **kwargs: Any) -> VerifyResult:
        options = kwargs.get("options")
        if not options:
            raise ValueError("JudgeChoiceVerifier needs options={letter: text}")
        verdict: Verdict = self.pool.submit_choice(question, options, prediction).result()
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
