"""Generation engines: K samples of one prompt from one prefill.

``TransformersEngine`` (CPU or GPU) runs the prompt through the model once (batch 1: one image
encode, one prefill), samples the first token of each of the K continuations from that one set
of logits, copies the KV cache K times along the batch axis and decodes the K rows together.
``model.generate(num_return_sequences=K)`` would instead expand the prompt to K rows *before*
the first forward, i.e. K prefills.

``VLLMEngine`` (GPU) submits every prompt of a chunk to ``vllm.LLM.generate`` with
``SamplingParams(n=K, seed=...)``; vLLM shares the prompt's prefill between the K children.

Both render prompts the way lmms-eval's ``qwen2_5_vl`` chat backend does: the processor's chat
template over the task's messages and ``qwen_vl_utils.process_vision_info`` for the images.
"""

from __future__ import annotations

import inspect
import time
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


@dataclass
class EngineStats:
    """What the engine itself processed (counted from the tensors it ran, not estimated)."""

    prefill_calls: int = 0  # forward passes over a prompt with an empty KV cache
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


def _resolve_dtype(dtype: str):
    import torch

    if dtype in ("auto", None, ""):
        return "auto"
    try:
        return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of auto, bfloat16, float16, float32; got {dtype!r}") from None


class TransformersEngine:
    name = "transformers"

    def __init__(self, pretrained: str, *, device: str = "cpu", device_map: str | None = None, dtype: str = "bfloat16",
                 attn_implementation: str | None = None, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device(device)
        kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype), "device_map": device_map or device}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs).eval()
        pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.processor = AutoProcessor.from_pretrained(pretrained, **pixel_kwargs)
        self.tokenizer = self.processor.tokenizer
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(int(e) for e in eos if e is not None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        # transformers 5.24 renamed forward's past_key_values to cache; accept either.
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.stats = EngineStats()
        # Everything besides the checkpoint that changes the generated text.
        self.signature = {"engine": self.name, "dtype": str(dtype), "min_pixels": min_pixels, "max_pixels": max_pixels,
                          "attn": attn_implementation, "device_type": self.device.type}

    def render(self, hf_messages: list[dict[str, Any]]) -> Prompt:
        return render_prompt(self.processor, hf_messages)

    def encode(self, prompt: Prompt):
        t0 = time.perf_counter()
        inputs = self.processor(text=[prompt.text], images=prompt.images or None, padding=False, return_tensors="pt")
        self.stats.encode_seconds += time.perf_counter() - t0
        return inputs

    def generate(self, jobs: Sequence[Job]) -> list[list[Sample]]:
        # One item at a time: each item's K rows already form the decode batch, and per-item
        # generators keep the samples independent of which other items run (resume == uninterrupted).
        return [self.generate_one(job) for job in jobs]

    def generate_one(self, job: Job, inputs: Any = None) -> list[Sample]:
        import torch

        if inputs is None:
            inputs = self.encode(job.prompt)
        t0 = time.perf_counter()
        inputs = inputs.to(self.model.device)
        n = 1 if job.settings.greedy else job.n
        prompt_len = int(inputs["input_ids"].shape[1])
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
            self.stats.prefill_calls += 1
            self.stats.prefill_tokens += int(inputs["input_ids"].numel())
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            logits = out.logits[:, -1, :].float()
            device = logits.device
            gen = torch.Generator(device=device).manual_seed(job.seed)
            if n > 1:
                cache.batch_repeat_interleave(n)
                logits = logits.expand(n, -1)
            eos = torch.tensor(self.eos_ids, device=device)
            finished = torch.zeros(n, dtype=torch.bool, device=device)
            steps: list[torch.Tensor] = []
            for step in range(job.settings.max_new_tokens):
                tokens = self._pick(logits, job.settings, gen)
                tokens = torch.where(finished, torch.full_like(tokens, self.pad_id), tokens)
                steps.append(tokens)
                finished |= torch.isin(tokens, eos)
                if bool(finished.all()) or step + 1 == job.settings.max_new_tokens:
                    break
                # Decode step: one new token per row on top of the shared (expanded) prompt cache.
                out = self.model(input_ids=tokens[:, None], use_cache=True, **{self._cache_kw: cache})
                self.stats.decode_tokens += n
                logits = out.logits[:, -1, :].float()
        seqs = torch.stack(steps, dim=1).tolist()
        samples = []
        for row in seqs:
            kept = []
            for tok in row:
                if tok in self.eos_ids:
                    break
                kept.append(tok)
            text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            samples.append(Sample(text=truncate_at(text, job.settings.until), n_tokens=len(kept)))
        if job.settings.greedy and job.n > 1:
            samples = samples * job.n
        self.stats.generate_seconds += time.perf_counter() - t0
        self.stats.prompt_lengths.append(prompt_len)
        self.stats.generated_samples += len(samples)
        self.stats.jobs += 1
        return samples

    @staticmethod
    def _pick(logits, settings: SamplingSettings, gen):
        """Greedy argmax, or temperature / top-k / top-p sampling (in the order transformers applies them)."""
        import torch

        if settings.greedy:
            return logits.argmax(dim=-1)
        scores = logits / settings.temperature
        if settings.top_k is not None and settings.top_k < scores.shape[-1]:
            kth = torch.topk(scores, settings.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if settings.top_p is not None:
            sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
            cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= (1 - settings.top_p)
            drop[:, -1] = False  # always keep the most likely token
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=gen).squeeze(1)


def truncate_at(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text

