"""What every generation engine shares: prompts, jobs, samples, counters, prompt rendering.

The engines: ``TransformersEngine`` (transformers_engine.py, CPU or GPU: an item's greedy and K
sampled continuations from one prefill, items batched), ``VLLMEngine`` (GPU: ``SamplingParams(n=K)``;
vLLM shares the prompt's prefill between the K children) and ``OpenAIEngine`` (served_engine.py: a
served model, one ``n=K`` request per item).

Both render prompts the way lmms-eval's ``qwen2_5_vl`` chat backend does: the processor's chat
template over the task's messages and ``qwen_vl_utils.process_vision_info`` for the images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medbridge.harness_ext.backend.grouping import SamplingSettings


@dataclass
class Prompt:
    """One rendered prompt: the chat-templated text and its images (PIL), before tokenisation."""

    text: str
    images: list[Any]
    hf_messages: list[dict[str, Any]]


@dataclass
class Job:
    """Generate ``n`` samples for one prompt."""

    prompt: Prompt
    n: int
    settings: SamplingSettings
    seed: int


@dataclass
class Sample:
    text: str
    n_tokens: int
    failed: bool = False  # a request that got no answer (served engine): request_failed, never cached


@dataclass
class EngineStats:
    """What the engine itself processed (counted from the tensors it ran, not estimated)."""

    prefill_calls: int = 0  # forward passes over prompts with an empty KV cache (one per batch)
    prefill_prompts: int = 0  # prompts those passes prefilled (items sharing a prompt count once)
    prefill_tokens: int = 0  # prompt tokens those passes processed
    prompt_lengths: list[int] = field(default_factory=list)  # one per job
    decode_tokens: int = 0  # tokens fed through decode steps (rows x steps)
    generated_samples: int = 0
    jobs: int = 0
    encode_seconds: float = 0.0  # chat template + image processing + tokenisation
    generate_seconds: float = 0.0  # prefill + sampling + decode

    @property
    def engine_seconds(self) -> float:
        return self.encode_seconds + self.generate_seconds

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "prompt_lengths"}
        d["prompt_tokens"] = sum(self.prompt_lengths)
        d["engine_seconds"] = self.engine_seconds
        return d


def render_prompt(processor: Any, hf_messages: list[dict[str, Any]]) -> Prompt:
    """The chat-templated prompt text and images, exactly as lmms-eval's qwen2_5_vl chat backend builds them."""
    from qwen_vl_utils import process_vision_info

    for message in hf_messages:
        for part in message.get("content", []):
            if isinstance(part, dict) and part.get("type") in ("video", "audio"):
                raise ValueError(f"medbridge_vlm handles text and images only, got a {part['type']} part")
    text = processor.apply_chat_template([hf_messages], tokenize=False, add_generation_prompt=True)
    text = text[0] if isinstance(text, list) else text
    images, _videos = process_vision_info([hf_messages])
    return Prompt(text=text, images=list(images or []), hf_messages=hf_messages)


def truncate_at(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
