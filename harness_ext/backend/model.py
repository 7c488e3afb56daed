"""``medbridge_vlm``: an lmms-eval chat backend that answers ``repeats: K`` with one prefill per item.

Usage::

    lmms-eval --model medbridge_vlm \\
      --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,engine=vllm,seed=0,cache_dir=runs/cache \\
      --tasks medmnist_mcq ...

Model args: ``pretrained``; ``engine`` (``transformers`` | ``vllm`` | ``openai``); ``device``, ``device_map``,
``dtype`` (default bfloat16, as lmms-eval's qwen2_5_vl), ``attn_implementation`` (transformers);
``min_pixels`` / ``max_pixels`` (image resizing, as qwen2_5_vl); ``seed`` (sampling seed, default 0);
``cache_dir`` (a folder for the resumable sample cache; off when unset); ``batch_size`` (lmms-eval's
``--batch_size`` flag, which it passes to the model itself: documents per engine call; vLLM batches
them, the transformers engine prefills that many prompts in one padded forward);
``gpu_memory_utilization``, ``tensor_parallel_size``, ``max_model_len`` (vLLM); ``stats_path`` (write
counters as JSON after each generate_until call; under data parallel each rank writes
``<stem>.rank<N><suffix>``). ``engine=openai`` (a served model; ``pretrained`` is the served name):
``base_url``, ``api_key`` (default ``EMPTY``), ``num_concurrent`` (requests in flight), ``timeout``
(seconds per request), ``max_retries``.

Sampling seeds are per item (``item_seed``): the run's ``seed``, the prompt, the document and the
settings, never the model's files, so an edit of generation_config.json (which cannot reach decoding)
cannot change the samples either. The sample cache is keyed by the model's fingerprint
(``cache.model_identity``: the sha256 of its config, tokenizer and weight files).

Data parallel: launched by ``accelerate launch`` or ``torchrun`` (WORLD_SIZE > 1), each process
loads the model on its own device (transformers: ``cuda:<LOCAL_RANK>`` on GPUs, the CPU otherwise;
vllm: its own group of ``tensor_parallel_size`` GPUs, distributed.py ``vllm_device_plan``), lmms-eval
gives each rank its shard of the documents, and per-item seeds make every sample the one a
single process would draw. All ranks may share one ``cache_dir`` (SQLite in WAL mode).
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from medbridge.harness_ext.backend.cache import (
    ItemKey,
    SampleCache,
    model_identity,
    prompt_fingerprint,
)
from medbridge.harness_ext.backend.distributed import DataParallel
from medbridge.harness_ext.backend.engines import Job, Sample
from medbridge.harness_ext.backend.grouping import (
    RequestGroup,
    bundle_groups,
    fan_out,
    group_requests,
    stable_hash,
)
from medbridge.harness_ext.backend.identity import record_model
from medbridge.harness_ext.decoding import effective_settings, record_effective
from tqdm import tqdm

CACHE_FILENAME = "medbridge_samples.sqlite"
# 2: item seeds no longer include the model fingerprint (cached samples drawn under scheme 1 are not reused).
SEED_SCHEME = 2


def _opt(value: Any) -> Any:
    """lmms-eval passes ``key=`` as an empty string: treat it as unset."""
    return None if value in ("", "None", "none") else value


def item_seed(seed: int, key: ItemKey, indices: list[int]) -> int:
    """A per-item seed: the same item gets the same samples whatever else runs (and in a resumed run). The
    model's files are not part of it: bytes that cannot reach decoding cannot move the samples."""
    digest = hashlib.sha256(f"{seed}|{key.prompt_fp}|{key.doc_id}|{key.gen_fp}|{indices}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class MedbridgeVLM(DataParallel, lmms):
    is_simple = False

    def __init__(
        self,
        pretrained: str,
        engine: str = "transformers",
        device: str | None = "cpu",
        device_map: str | None = None,
        dtype: str = "bfloat16",
        attn_implementation: str | None = None,
        min_pixels: int | None = 256 * 28 * 28,
        max_pixels: int | None = 1605632,
        seed: int = 0,
        cache_dir: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        stats_path: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        num_concurrent: int = 8,
        timeout: float = 600.0,
        max_retries: int = 3,
        **unexpected: Any,
    ) -> None:
        super().__init__()
        if unexpected:
            raise ValueError(f"medbridge_vlm: unknown model_args {sorted(unexpected)}")
        min_pixels, max_pixels = _opt(min_pixels), _opt(max_pixels)
        min_pixels = None if min_pixels is None else int(min_pixels)
        max_pixels = None if max_pixels is None else int(max_pixels)
        self.seed = int(_opt(seed) or 0)
        self.batch_size_per_call = max(1, int(_opt(batch_size) or 1))
        device = self.setup_data_parallel(_opt(device) or "cpu")
        self.stats_path = self.rank_path(_opt(stats_path))
        if engine == "transformers":
            from medbridge.harness_ext.backend.transformers_engine import TransformersEngine

            self.engine = TransformersEngine(
                str(pretrained),
                device=device,
                device_map=_opt(device_map),
                dtype=str(dtype),
                attn_implementation=_opt(attn_implementation),
                min_pixels=min_pixels,
                max_pixels=max_pixels,
                batch_size=self.batch_size_per_call,
            )
        elif engine == "vllm":
            from medbridge.harness_ext.backend.distributed import local_topology, visible_gpus, vllm_device_plan
            from medbridge.harness_ext.backend.vllm_engine import VLLMEngine

            local_rank, local_world_size = local_topology()
            plan = vllm_device_plan(visible_gpus(), local_rank=local_rank, local_world_size=local_world_size,
                                    tensor_parallel_size=int(tensor_parallel_size),
                                    gpu_memory_utilization=float(gpu_memory_utilization))
            self.engine = VLLMEngine(
                str(pretrained),
                dtype=str(dtype),
                min_pixels=min_pixels,
                max_pixels=max_pixels,
                seed=self.seed,
                gpu_memory_utilization=float(gpu_memory_utilization),
                tensor_parallel_size=int(tensor_parallel_size),
                max_model_len=None if _opt(max_model_len) is None else int(max_model_len),
                plan=plan,
            )
        elif engine == "openai":
            from medbridge.harness_ext.backend.served_engine import OpenAIEngine

            self.engine = OpenAIEngine(
                str(pretrained),
                base_url=_opt(base_url),
                api_key=_opt(api_key),
                num_concurrent=int(_opt(num_concurrent) or 8),
                timeout_s=float(_opt(timeout) or 600.0),
                max_retries=int(_opt(max_retries) or 3),
            )
        else:
            raise ValueError(f"medbridge_vlm: engine must be 'transformers', 'vllm' or 'openai', got {engine!r}")
        self.model_identity = self.engine.identity() if engine == "openai" else model_identity(pretrained)
        self.model_fp = self.model_identity["fingerprint"]
        record_model(self.model_identity)  # scoring copies it into every sample record (provenance)
        self.cache = SampleCache(Path(cache_dir) / CACHE_FILENAME) if _opt(cache_dir) else None
        self.items_generated = 0  # items that needed the engine (any missing sample)
        self.items_from_cache = 0  # items answered entirely from the cache
        self.wall_seconds = 0.0  # time inside generate_until
        # Harness time outside the engine, by phase (the benchmark reports it).
        # doc/render/key_and_lookup run on the prepare thread (hidden behind the engine); store and
        # waited_for_prepare are on the generating thread's path.
        self.phase_seconds = {"doc": 0.0, "render": 0.0, "key_and_lookup": 0.0, "store": 0.0, "waited_for_prepare": 0.0}

    # lmms-eval reads these
    @property
    def batch_size(self) -> int:
        return self.batch_size_per_call

    @property
    def tokenizer(self):
        processor = self.engine.processor
        return None if processor is None else processor.tokenizer

    def loglikelihood(self, requests):
        raise NotImplementedError("medbridge_vlm only generates")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("medbridge_vlm does not do multi-round generation")

    # ------------------------------------------------------------------ generation
    def _item_key(self, group: RequestGroup, prompt_text: str, images: list[Any]) -> ItemKey:
        gen = {"settings": group.settings.as_dict(), "engine": self.engine.signature, "seeds": SEED_SCHEME}
        return ItemKey(
            model_fp=self.model_fp,
            prompt_fp=prompt_fingerprint(group.task, prompt_text, images),
            task=group.task,
            doc_id=json.dumps(group.doc_id, default=str),
            seed=-1 if group.settings.greedy else self.seed,
            gen_fp=stable_hash(gen),
        )

    def _messages(self, group: RequestGroup) -> list[dict[str, Any]]:
        doc = self.task_dict[group.task][group.split][group.doc_id]
        return ChatMessages(messages=group.doc_to_messages(doc)).to_hf_messages()

    def generate_until(self, requests) -> list[GenerationResult]:
        t0 = time.perf_counter()
        groups = group_requests(requests)
        self._record_decoding(groups)
        # A chunk holds batch_size documents with all their groups (greedy and sampled twins together).
        chunks = bundle_groups(groups, self.batch_size_per_call)
        per_group: list[list[Sample]] = []
        pbar = tqdm(total=len(groups), desc="medbridge_vlm items", disable=self.rank != 0)
        # Prepare chunk i+1 (document, prompt, cache lookup) on a worker thread while the engine
        # generates chunk i: the engine releases the GIL in its kernels, so this work is hidden.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medbridge_prepare") as pool:
            upcoming = pool.submit(self._prepare_chunk, chunks[0]) if chunks else None
            for ci, chunk in enumerate(chunks):
                tw = time.perf_counter()
                prepared = upcoming.result()
                self.phase_seconds["waited_for_prepare"] += time.perf_counter() - tw
                upcoming = pool.submit(self._prepare_chunk, chunks[ci + 1]) if ci + 1 < len(chunks) else None
                per_group.extend(self._answer_chunk(chunk, prepared))
                pbar.update(len(chunk))
        pbar.close()
        samples = fan_out([g for chunk in chunks for g in chunk], per_group, len(requests))
        self.wall_seconds += time.perf_counter() - t0
        self._write_stats()
        return [GenerationResult(text=s.text, token_counts=TokenCounts(output_tokens=s.n_tokens)) for s in samples]

    def _record_decoding(self, groups: list[RequestGroup]) -> None:
        """Record per task the settings this run decodes with (harness_ext/decoding.py): exactly the task's,
        every field stated (the engines build their sampling from these alone, never from the checkpoint)."""
        for group in {g.task: g for g in groups}.values():
            record_effective(group.task, effective_settings(group.settings.decoding()))

    def _prepare_chunk(self, chunk: list[RequestGroup]) -> list[tuple[Any, ItemKey, dict[int, Sample]]]:
        """Per group: the rendered prompt, its cache key and the samples the cache already holds."""
        prepared = []
        for group in chunk:
            t0 = time.perf_counter()
            messages = self._messages(group)
            t1 = time.perf_counter()
            prompt = self.engine.render(messages)
            t2 = time.perf_counter()
            key = self._item_key(group, prompt.text, prompt.images)
            cached: dict[int, Sample] = {}
            if self.cache is not None:
                cached = {
                    idx: Sample(text=text, n_tokens=n_tok or 0)
                    for idx, (text, n_tok) in self.cache.get(key, group.n_samples).items()
                }
            self.phase_seconds["doc"] += t1 - t0
            self.phase_seconds["render"] += t2 - t1
            self.phase_seconds["key_and_lookup"] += time.perf_counter() - t2
            prepared.append((prompt, key, cached))
        return prepared

    def _answer_chunk(
        self, chunk: list[RequestGroup], prepared: list[tuple[Any, ItemKey, dict[int, Sample]]]
    ) -> list[list[Sample]]:
        answers: list[dict[int, Sample]] = []
        jobs, owners = [], []
        for i, (group, (prompt, key, cached)) in enumerate(zip(chunk, prepared)):
            answers.append(dict(cached))
            missing = [idx for idx in range(group.n_samples) if idx not in cached]
            if not missing:
                self.items_from_cache += 1
                continue
            jobs.append(
                Job(prompt=prompt, n=len(missing), settings=group.settings, seed=item_seed(self.seed, key, missing))
            )
            owners.append((i, key, missing))
        if jobs:
            for (i, key, missing), new in zip(owners, self.engine.generate(jobs)):
                fresh = dict(zip(missing, new))
                answers[i].update(fresh)
                # A failed request (served engine) is answered as request_failed now and asked again next run.
                fresh = {idx: s for idx, s in fresh.items() if not s.failed}
                if self.cache is not None and fresh:
                    t0 = time.perf_counter()
                    self.cache.put(
                        key, {idx: (s.text, s.n_tokens) for idx, s in fresh.items()}, meta={"doc_id": chunk[i].doc_id}
                    )
                    self.phase_seconds["store"] += time.perf_counter() - t0
                self.items_generated += 1
                self._item_stored()
        return [[a[idx] for idx in range(g.n_samples)] for a, g in zip(answers, chunk)]

    def _item_stored(self) -> None:
        """Called after each generated item is stored (a hook for tests that kill a run half-way)."""

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.engine.stats.as_dict(),
            "cache": self.cache.counters() if self.cache is not None else None,
            "items_generated": self.items_generated,
            "items_from_cache": self.items_from_cache,
            "wall_seconds": self.wall_seconds,
            "harness_phase_seconds": dict(self.phase_seconds),
            "model_fingerprint": self.model_fp,
            "model": self.model_identity,
            "decoding_sent": dict(getattr(self.engine, "sent", {}) or {}) or None,
            "failed_requests": getattr(self.engine, "failed_requests", 0),
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "devices": getattr(self.engine, "device_record", None) or {"device": str(self.device)},
        }

    def _write_stats(self) -> None:
        if self.stats_path:
            Path(self.stats_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.stats_path).write_text(json.dumps(self.stats(), indent=2, default=str) + "\n")
