"""The transformers engine: every sample an item needs from one prefill, items batched.

``generate(jobs)`` works in three steps:

1. Jobs whose rendered prompts are identical (same text, same image pixels) form one *unit*: an
   item's greedy request and its K sampled requests (``--tasks medmnist_mcq`` runs each dataset's
   greedy task and its ``_passk`` twin) are encoded and prefilled once.
2. Up to ``batch_size`` units are prefilled in one forward (left padding, attention mask).
3. The prefilled KV cache is copied per row (a greedy job needs one row, a sampled job n rows) and
   all rows decode together. Each job draws from its own generator seeded with the job's seed, and
   each job's decoding uses exactly its own settings (``SamplingSettings``), never the checkpoint's
   ``generation_config`` (its top_k 1 or repetition_penalty would otherwise leak in), so a job's
   samples do not depend on which other jobs share its batch.

``model.generate(num_return_sequences=K)`` would instead expand the prompt to K rows before the
first forward, i.e. K prefills.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medbridge.harness_ext.backend.cache import image_digest
from medbridge.harness_ext.backend.engines import EngineStats, Job, Prompt, Sample, render_prompt, truncate_at
from medbridge.harness_ext.backend.grouping import SamplingSettings
from medbridge.harness_ext.decoding import special_token_ids

DTYPES = ("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")


def resolve_dtype(dtype: str | None):
    import torch

    if dtype in ("auto", None, ""):
        return "auto"
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    if dtype not in table:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return table[dtype]


def prompt_identity(prompt: Prompt) -> tuple:
    """Two prompts with the same identity give the same prefill (text and image pixels)."""
    return (prompt.text, tuple(image_digest(image) for image in prompt.images))


@dataclass
class _Rows:
    """Where one job's rows sit in the decode batch."""

    job: Job
    start: int
    stop: int
    unit_row: int  # the job's prompt's row in the prefill batch


class TransformersEngine:
    name = "transformers"

    def __init__(
        self,
        pretrained: str,
        *,
        device: str = "cpu",
        device_map: str | None = None,
        dtype: str = "bfloat16",
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 1,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "device_map": device_map or device}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs).eval()
        pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.processor = AutoProcessor.from_pretrained(pretrained, **pixel_kwargs)
        self.tokenizer = self.processor.tokenizer
        # All this engine takes from the checkpoint's generation_config.json: its special token ids (decoding
        # itself is pick_tokens under the task's settings; model.generate is never called).
        self.special_tokens = special_token_ids(self.model.generation_config)
        # Left padding: every prompt of a batch ends at the last column, where the next token is read.
        self.tokenizer.padding_side = "left"
        eos = {self.tokenizer.eos_token_id}
        gen_eos = self.special_tokens.get("eos_token_id")
        eos |= set(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
        self.eos_ids = sorted(int(e) for e in eos if e is not None)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        # transformers 5.24 renamed forward's past_key_values to cache; accept either.
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.stats = EngineStats()
        # Everything besides the checkpoint that changes the generated text (batch_size does not).
        self.signature = {
            "engine": self.name,
            "dtype": str(dtype),
            "min_pixels": min_pixels,
            "max_pixels": max_pixels,
            "attn": attn_implementation,
            "device_type": self.device.type,
        }

    def render(self, hf_messages: list[dict[str, Any]]) -> Prompt:
        return render_prompt(self.processor, hf_messages)

    def encode(self, prompts: Sequence[Prompt]):
        """Tokenise prompts (and process their images) into one left-padded batch."""
        t0 = time.perf_counter()
        images = [image for p in prompts for image in p.images]
        inputs = self.processor(
            text=[p.text for p in prompts], images=images or None, padding=True, return_tensors="pt"
        )
        self.stats.encode_seconds += time.perf_counter() - t0
        return inputs

    # ------------------------------------------------------------------ generation
    def generate(self, jobs: Sequence[Job]) -> list[list[Sample]]:
        """Samples for each job, in order; jobs with identical prompts share one prefill."""
        units: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            units.setdefault(prompt_identity(job.prompt), []).append(i)
        ordered = list(units.values())
        results: list[list[Sample] | None] = [None] * len(jobs)
        for b in range(0, len(ordered), self.batch_size):
            batch = ordered[b : b + self.batch_size]
            outputs = self._generate_batch([[jobs[i] for i in unit] for unit in batch])
            for unit, unit_out in zip(batch, outputs):
                for i, samples in zip(unit, unit_out):
                    results[i] = samples
        return results  # type: ignore[return-value]

    def _generate_batch(self, units: list[list[Job]]) -> list[list[list[Sample]]]:
        import torch

        inputs = self.encode([unit[0].prompt for unit in units])
        t0 = time.perf_counter()
        inputs = inputs.to(self.model.device)
        mask = inputs["attention_mask"]
        real_lengths = mask.sum(dim=1)
        plan: list[list[_Rows]] = []
        n_rows = 0
        for u, unit in enumerate(units):
            unit_plan = []
            for job in unit:
                rows = 1 if job.settings.greedy else job.n
                unit_plan.append(_Rows(job, n_rows, n_rows + rows, u))
                n_rows += rows
            plan.append(unit_plan)
        flat = [r for unit_plan in plan for r in unit_plan]
        with torch.inference_mode():
            out = self.model(**inputs, use_cache=True, logits_to_keep=1)
            self.stats.prefill_calls += 1
            self.stats.prefill_prompts += len(units)
            self.stats.prefill_tokens += int(inputs["input_ids"].numel())
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            device = out.logits.device
            # One row per sample: copy each unit's prefilled cache and last logits to its rows.
            row_unit = torch.tensor([r.unit_row for r in flat for _ in range(r.stop - r.start)], device=device)
            cache.batch_select_indices(row_unit)
            logits = out.logits[:, -1, :].float().index_select(0, row_unit)
            row_mask = mask.index_select(0, row_unit)
            next_pos = self._first_decode_positions(real_lengths, row_unit)
            # Tokens each row has seen (for repetition_penalty): its prompt's real tokens, then its output.
            history = [
                inputs["input_ids"][r.unit_row][mask[r.unit_row].bool()] for r in flat for _ in range(r.stop - r.start)
            ]
            generators = {
                id(r): torch.Generator(device=device).manual_seed(r.job.seed) for r in flat if not r.job.settings.greedy
            }
            row_max = torch.tensor(
                [r.job.settings.max_new_tokens for r in flat for _ in range(r.stop - r.start)], device=device
            )
            eos = torch.tensor(self.eos_ids, device=device)
            finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
            steps: list[torch.Tensor] = []
            step = 0
            while True:
                tokens = torch.empty(n_rows, dtype=torch.long, device=device)
                for r in flat:
                    if bool(finished[r.start : r.stop].all()):
                        tokens[r.start : r.stop] = self.pad_id
                        continue
                    seen = history[r.start : r.stop] if r.job.settings.repetition_penalty != 1.0 else None
                    tokens[r.start : r.stop] = pick_tokens(
                        logits[r.start : r.stop], r.job.settings, generators.get(id(r)), seen
                    )
                tokens = torch.where(finished, torch.full_like(tokens, self.pad_id), tokens)
                steps.append(tokens)
                finished |= torch.isin(tokens, eos) | (step + 1 >= row_max)
                if bool(finished.all()):
                    break
                if any(r.job.settings.repetition_penalty != 1.0 for r in flat):
                    history = [torch.cat([h, tokens[i : i + 1]]) for i, h in enumerate(history)]
                # Decode step: one new token per row on top of its copy of the prompt's cache.
                row_mask = torch.cat([row_mask, torch.ones_like(row_mask[:, :1])], dim=1)
                kwargs: dict[str, Any] = {"attention_mask": row_mask, self._cache_kw: cache}
                if next_pos is not None:
                    kwargs["position_ids"] = (next_pos + step).view(1, -1, 1).expand(3, -1, -1)
                out = self.model(input_ids=tokens[:, None], use_cache=True, **kwargs)
                self.stats.decode_tokens += n_rows
                logits = out.logits[:, -1, :].float()
                step += 1
        seqs = torch.stack(steps, dim=1).tolist()
        results = []
        for unit_plan in plan:
            unit_out = []
            for r in unit_plan:
                samples = [self._sample(row, r.job.settings) for row in seqs[r.start : r.stop]]
                if r.job.settings.greedy and r.job.n > 1:
                    samples = samples * r.job.n
                self.stats.generated_samples += len(samples)
                self.stats.jobs += 1
                unit_out.append(samples)
            results.append(unit_out)
        self.stats.prompt_lengths.extend(int(n) for n in real_lengths.tolist())
        self.stats.generate_seconds += time.perf_counter() - t0
        return results

    def _first_decode_positions(self, real_lengths, row_unit):
        """Per row, the rotary position of the first generated token: the prompt's real length plus
        the model's multimodal offset (Qwen2.5-VL's ``rope_deltas`` from the prefill). None lets a
        model without that offset derive positions itself (only right for unpadded batches)."""
        deltas = getattr(getattr(self.model, "model", None), "rope_deltas", None)
        if deltas is None:
            if len(real_lengths) > 1:
                raise NotImplementedError(
                    f"{type(self.model).__name__}: batch_size > 1 needs Qwen2-VL-style rope_deltas"
                )
            return None
        return (real_lengths.to(deltas.device) + deltas.view(-1)).index_select(0, row_unit.to(deltas.device))

    def _sample(self, row: list[int], settings: SamplingSettings) -> Sample:
        kept = []
        for tok in row:
            if tok in self.eos_ids:
                break
            kept.append(tok)
        text = self.tokenizer.decode(kept, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return Sample(text=truncate_at(text, settings.until), n_tokens=len(kept))


def pick_tokens(logits, settings: SamplingSettings, generator, seen=None):
    """The next token of each row under exactly ``settings``: repetition penalty over ``seen``
    (each row's tokens so far), then greedy argmax, or temperature / top-k / top-p sampling, in
    the order transformers applies its processors."""
    import torch

    if seen is not None:
        scores = logits.clone()
        for i, ids in enumerate(seen):
            picked = scores[i].gather(0, ids)
            picked = torch.where(picked < 0, picked * settings.repetition_penalty, picked / settings.repetition_penalty)
            scores[i].scatter_(0, ids, picked)
        logits = scores
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
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
