"""The served engine: a model behind an OpenAI-compatible server (vLLM), K samples per item in one request.

``medbridge_vlm engine=openai,base_url=http://host:8000/v1,pretrained=<served name>`` sends one
chat-completions request per item and decoding setting with ``n=K``: the server prefills the prompt once
for its K children (lmms-eval's ``openai`` backend sends K requests of ``n=1``). Every request states every
decoding field (harness_ext/served.py ``request_fields``), so the server's defaults (a checkpoint's
generation_config.json when vLLM runs without ``--generation-config vllm``) and the served name cannot
change decoding; a server that refuses a field, or answers fewer than ``n`` choices, is refused by name.

A request that fails after ``max_retries`` tries comes back as ``[MEDBRIDGE_REQUEST_FAILED ...]`` samples
(the ``request_failed`` outcome: excluded from every metric, counted, warned about) and is never cached.

Prompts are the task's chat messages with images as base64 PNG data URLs (lmms-eval's encoder, as its
``openai`` backend sends them); the server applies the chat template. ``identity()`` says what the server
reports behind the served name (``/v1/models``: root, max_model_len, owner) and, when that root is a folder
on this machine, the sha256 of its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from medbridge.harness_ext import served
from medbridge.harness_ext.backend.engines import EngineStats, Job, Prompt, Sample, truncate_at
from medbridge.harness_ext.errors import MedbridgeError

log = logging.getLogger(__name__)

FAILED_MARKER = "[MEDBRIDGE_REQUEST_FAILED"


def openai_messages(hf_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's chat messages (Hugging Face form, as ``ChatMessages.to_hf_messages`` gives them) in the
    OpenAI form: text parts as they are, images as PNG data URLs."""
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_base64

    out = []
    for message in hf_messages:
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content or []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                data = encode_image_to_base64(part.get("image", part.get("url")), image_format="PNG")
                parts.append({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}})
            else:
                raise ValueError(f"medbridge_vlm engine=openai sends text and images only, got a {kind!r} part")
        out.append({"role": message["role"], "content": parts})
    return out


def _prompt_text(hf_messages: list[dict[str, Any]]) -> str:
    """The messages with each image as a placeholder (the images' pixels enter the cache key separately)."""
    def part(p: Any) -> Any:
        return {"type": "image"} if isinstance(p, dict) and p.get("type") == "image" else p

    return json.dumps([{**m, "content": m["content"] if isinstance(m.get("content"), str)
                        else [part(p) for p in m.get("content") or []]} for m in hf_messages], sort_keys=True)


class OpenAIEngine:
    """A served model through the ``openai`` client (a dependency of lmms-eval)."""

    name = "openai"
    processor = None  # the server holds the processor and the chat template

    def __init__(self, model: str, *, base_url: str, api_key: str | None = None, num_concurrent: int = 8,
                 timeout_s: float = 600.0, max_retries: int = 3, retry_backoff_s: float = 2.0) -> None:
        from openai import OpenAI

        if not base_url:
            raise MedbridgeError("medbridge_vlm engine=openai needs base_url=http://HOST:PORT/v1 (the server's "
                                 "OpenAI-compatible endpoint) and pretrained=<the served model name>.")
        self.model = str(model)
        self.base_url = str(base_url).rstrip("/")
        self.num_concurrent = max(1, int(num_concurrent))
        self.max_retries = max(1, int(max_retries))
        self.retry_backoff_s = float(retry_backoff_s)
        # Retries are ours (a refused field must not be retried); the client's are off.
        self.client = OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=float(timeout_s),
                             max_retries=0)
        self.card = self._served_model()
        self.is_vllm = self.card.get("owned_by") == "vllm"
        self.stats = EngineStats()
        self.failed_requests = 0
        self.sent: dict[str, dict[str, Any]] = {}  # per decoding setting: the decoding fields of its last request
        self.token_counts = "exact" if self.is_vllm else "from usage"
        # Everything besides the settings that changes the answers, as far as the server shows it.
        self.signature = {"engine": self.name, "served_model": self.model, "root": self.card.get("root"),
                          "max_model_len": self.card.get("max_model_len")}

    def _served_model(self) -> dict[str, Any]:
        """The server's /v1/models entry for the served name (refused by name when it is not served)."""
        try:
            models = [m.to_dict() for m in self.client.models.list().data]
        except Exception as err:  # the server is down or not OpenAI-compatible
            raise MedbridgeError(f"{self.base_url}/models did not answer ({type(err).__name__}: {err}); start the "
                                 "server first (medbridge judge serve / vllm serve) and check base_url.") from None
        for card in models:
            if card.get("id") == self.model:
                return {k: card.get(k) for k in ("id", "root", "parent", "owned_by", "max_model_len")}
        raise MedbridgeError(f"{self.base_url} serves {[m.get('id') for m in models]}, not {self.model!r}: set "
                             "pretrained= to the served model name.")

    def identity(self) -> dict[str, Any]:
        """What identifies the served model: the server's card, and the files' sha256 when its root is a
        checkpoint folder on this machine (a server elsewhere: the weights are not observed)."""
        from medbridge.harness_ext.backend.cache import model_identity

        root = self.card.get("root")
        try:
            local = model_identity(root) if root else None
        except (MedbridgeError, FileNotFoundError, OSError):
            local = None
        if local is not None:
            return {**local, "name": self.model, "served": self.card}
        digest = hashlib.sha256(json.dumps({"served": self.card}, sort_keys=True).encode()).hexdigest()
        return {"name": self.model, "revision": None, "files": None, "served": self.card,
                "weights": "not observed (served elsewhere)", "fingerprint": digest}

    def render(self, hf_messages: list[dict[str, Any]]) -> Prompt:
        images = [p.get("image", p.get("url")) for m in hf_messages if not isinstance(m.get("content"), str)
                  for p in m.get("content") or [] if isinstance(p, dict) and p.get("type") == "image"]
        return Prompt(text=_prompt_text(hf_messages), images=images, hf_messages=hf_messages)

    def generate(self, jobs: Sequence[Job]) -> list[list[Sample]]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(self.num_concurrent, max(1, len(jobs))),
                                thread_name_prefix="medbridge_served") as pool:
            results = list(pool.map(self._answer, jobs))
        self.stats.generate_seconds += time.perf_counter() - t0
        return results

    def _answer(self, job: Job) -> list[Sample]:
        settings = job.settings
        n = 1 if settings.greedy else job.n
        fields = served.request_fields(settings.decoding(), n=n, seed=job.seed, stop=settings.until)
        top, extra = served.split_openai_fields(fields)
        if self.is_vllm:
            extra["return_token_ids"] = True  # exact token counts per sample (not a decoding field)
        self.sent[json.dumps(settings.as_dict(), sort_keys=True)] = fields
        t0 = time.perf_counter()
        messages = openai_messages(job.prompt.hf_messages)
        self.stats.encode_seconds += time.perf_counter() - t0
        error: BaseException | None = None
        for attempt in range(self.max_retries):
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages, **top,
                                                               extra_body=extra)
                return self._samples(job, response, n)
            except MedbridgeError:
                raise
            except Exception as err:
                refused = served.rejected_field(err, fields)
                if refused:
                    raise MedbridgeError(
                        f"{self.base_url} refuses the decoding field {refused!r} ({err}). medbridge sends every "
                        "decoding field so that no server default can change decoding; serve the model with vLLM, "
                        "which takes them all.") from None
                error = err
                if attempt + 1 < self.max_retries:
                    time.sleep(self.retry_backoff_s * (attempt + 1))
        self.failed_requests += 1
        text = f"{FAILED_MARKER} after {self.max_retries} tries] {type(error).__name__}: {str(error)[:300]}"
        log.warning("medbridge_vlm engine=openai: a request to %s failed %d times (%s); its %d samples are "
                    "request_failed (never scored, never cached)", self.base_url, self.max_retries, error, job.n)
        return [Sample(text=text, n_tokens=0, failed=True)] * job.n

    def _samples(self, job: Job, response: Any, n: int) -> list[Sample]:
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != n:
            raise MedbridgeError(f"{self.base_url} answered {len(choices)} choices to a request for n={n}: it "
                                 "ignores the 'n' field, so Pass@K from one request is impossible there.")
        usage = getattr(response, "usage", None)
        self.stats.prefill_calls += 1
        self.stats.prefill_prompts += 1
        self.stats.prompt_lengths.append(int(getattr(usage, "prompt_tokens", 0) or 0))
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        samples = []
        for choice in choices:
            ids = (getattr(choice, "model_extra", None) or {}).get("token_ids")
            n_tokens = len(ids) if isinstance(ids, list) else round(completion / n)
            text = truncate_at(choice.message.content or "", job.settings.until)
            samples.append(Sample(text=text, n_tokens=n_tokens))
        if job.settings.greedy and job.n > 1:
            samples = samples[:1] * job.n
        self.stats.decode_tokens += completion
        self.stats.generated_samples += len(samples)
        self.stats.jobs += 1
        return samples
