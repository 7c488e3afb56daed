"""The vLLM engine: offline ``vllm.LLM`` with ``SamplingParams(n=K)``.

vLLM shares a prompt's prefill between the K children of one request. Prompts are rendered the
same way as the transformers engine (``engines.render_prompt``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from medbridge.harness_ext.backend.engines import EngineStats, Job, Prompt, Sample, render_prompt


class VLLMEngine:
    """Offline vLLM (``vllm.LLM``) with ``SamplingParams(n=K)``. GPU only; imported lazily.

    NOTE: not exercised by the test suite (no GPU, vllm not installed there).
    """

    name = "vllm"

    def __init__(self, pretrained: str, *, dtype: str = "bfloat16", min_pixels: int | None = None, max_pixels: int | None = None,
                 seed: int = 0, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 max_images: int = 4) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("engine=vllm needs the vllm package (pip install vllm) and a GPU") from err
        from transformers import AutoProcessor

        pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        llm_kwargs: dict[str, Any] = {"model": pretrained, "dtype": dtype, "seed": seed, "gpu_memory_utilization": gpu_memory_utilization,
                                      "tensor_parallel_size": tensor_parallel_size, "limit_mm_per_prompt": {"image": max_images},
                                      "enable_prefix_caching": True}
        if pixel_kwargs:
            llm_kwargs["mm_processor_kwargs"] = pixel_kwargs
        if max_model_len:
            llm_kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**llm_kwargs)
        self.processor = AutoProcessor.from_pretrained(pretrained, **pixel_kwargs)
        self.stats = EngineStats()
        self.signature = {"engine": self.name, "dtype": str(dtype), "min_pixels": min_pixels, "max_pixels": max_pixels,
                          "tensor_parallel_size": tensor_parallel_size}

    def render(self, hf_messages: list[dict[str, Any]]) -> Prompt:
        return render_prompt(self.processor, hf_messages)

    @staticmethod
    def sampling_params(job: Job):
        from vllm import SamplingParams

        s = job.settings
        kwargs: dict[str, Any] = {"n": 1 if s.greedy else job.n, "max_tokens": s.max_new_tokens, "temperature": 0.0 if s.greedy else s.temperature}
        if not s.greedy:
            kwargs["seed"] = job.seed  # per-request seed: samples do not depend on batch composition
            if s.top_p is not None:
                kwargs["top_p"] = s.top_p
            if s.top_k is not None:
                kwargs["top_k"] = s.top_k
        if s.until:
            kwargs["stop"] = list(s.until)
        return SamplingParams(**kwargs)

    def _counters(self) -> dict[str, float] | None:
        """vLLM's own prompt-token and prefix-cache-hit counters (vLLM >= 0.10 V1), if it exposes them."""
        try:
            metrics = self.llm.get_metrics()
        except (AttributeError, AssertionError, RuntimeError, ValueError):  # older vLLM or metrics disabled
            return None
        totals: dict[str, float] = {}
        for m in metrics:
            if m.name in ("vllm:prompt_tokens", "vllm:prefix_cache_hits") and hasattr(m, "value"):
                totals[m.name] = totals.get(m.name, 0.0) + float(m.value)
        return totals if "vllm:prompt_tokens" in totals else None

    def generate(self, jobs: Sequence[Job]) -> list[list[Sample]]:
        t0 = time.perf_counter()
        before = self._counters()
        prompts = [{"prompt": j.prompt.text, **({"multi_modal_data": {"image": j.prompt.images}} if j.prompt.images else {})} for j in jobs]
        outputs = self.llm.generate(prompts, sampling_params=[self.sampling_params(j) for j in jobs], use_tqdm=False)
        result = []
        after = self._counters()
        if before is not None and after is not None:
            # Prompt tokens vLLM scheduled for all requests (n=K children included) minus those served
            # from its prefix cache: what it really prefilled. Whether the K children share one prefill
            # is vLLM's doing; this number says whether they did.
            self.stats.prefill_tokens += int(after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"]
                                             - after.get("vllm:prefix_cache_hits", 0) + before.get("vllm:prefix_cache_hits", 0))
        for job, out in zip(jobs, outputs):
            n_prompt = len(out.prompt_token_ids or [])
            self.stats.prefill_calls += 1
            if before is None or after is None:
                # Fallback: the parent request's own count (prefix-cache hits excluded).
                self.stats.prefill_tokens += n_prompt - int(getattr(out, "num_cached_tokens", 0) or 0)
            self.stats.prompt_lengths.append(n_prompt)
            samples = [Sample(text=c.text, n_tokens=len(c.token_ids)) for c in out.outputs]
            if job.settings.greedy and job.n > 1:
                samples = samples[:1] * job.n
            self.stats.decode_tokens += sum(s.n_tokens for s in samples)
            self.stats.generated_samples += len(samples)
            self.stats.jobs += 1
            result.append(samples)
        self.stats.generate_seconds += time.perf_counter() - t0
        return result
