"""Served models: lmms-eval's ``openai`` backend against a vLLM server, decoding exactly as the task says.

lmms-eval 0.7.3's ``openai`` chat backend puts ``temperature`` and ``max_tokens`` in every request, and
``top_p``, ``seed``, ``n``, ``presence_penalty``, ``frequency_penalty`` when the task's generation_kwargs
hold them; it never sends ``top_k`` or ``repetition_penalty``. A vLLM server fills every field a request
leaves out from the checkpoint's generation_config.json unless it runs with ``--generation-config vllm``
(Qwen2.5-VL would give top_k 1 and repetition_penalty 1.05: Pass@K collapses onto the greedy answer).
So the served path is exact only when

* the server runs with ``--generation-config vllm`` (``served_vlm_args``), and
* the task's decoding needs nothing the backend cannot send: top-k off and repetition penalty 1.0
  (the paper's settings); ``openai_decoding_problems`` names anything else.
"""

from __future__ import annotations

import json
from typing import Any

from .decoding import Decoding, effective_settings
from .errors import MedbridgeError

__all__ = ["served_vlm_args", "served_effective_settings", "openai_decoding_problems", "check_openai_decoding"]


def served_vlm_args(*, min_pixels: int, max_pixels: int, max_images: int = 8) -> list[str]:
    """vLLM server flags (beyond model, name, host, port) for serving a VLM to lmms-eval's ``openai`` backend.

    ``min_pixels``/``max_pixels``: those of the in-process run to compare with, so images become the same
    number of visual tokens (vLLM otherwise uses the checkpoint's processor defaults)."""
    return [
        "--generation-config", "vllm",  # never fill a request's missing field from generation_config.json
        "--mm-processor-kwargs", json.dumps({"min_pixels": int(min_pixels), "max_pixels": int(max_pixels)}),
        "--limit-mm-per-prompt", json.dumps({"image": int(max_images)}),
    ]  # fmt: skip


def openai_decoding_problems(decoding: Decoding) -> list[str]:
    """The task settings lmms-eval's ``openai`` backend cannot send, each with the fix (empty: none)."""
    problems = []
    if decoding.do_sample and decoding.top_k is not None:
        problems.append(f"top_k={decoding.top_k} (the openai backend never sends top_k; a server started with "
                        "--generation-config vllm samples with top-k off)")
    if decoding.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty={decoding.repetition_penalty} (the openai backend never sends it; a "
                        "server started with --generation-config vllm uses 1.0)")
    return problems


def check_openai_decoding(task: str, decoding: Decoding) -> None:
    """Refuse a task whose decoding the ``openai`` backend cannot reproduce."""
    problems = openai_decoding_problems(decoding)
    if problems:
        raise MedbridgeError(
            f"Task {task} asks for {'; '.join(problems)}. Run it with --model medbridge_vlm (transformers or vllm "
            "engine), which passes every setting, or use the task's settings without them.")


def served_effective_settings(decoding: Decoding) -> dict[str, Any]:
    """What a ``--generation-config vllm`` server decodes with for a task's request from the ``openai``
    backend: the task's temperature/top_p, vLLM's neutral defaults for the rest (recorded per task).
    Only valid for a task that ``check_openai_decoding`` accepts."""
    # Assumed, not observed: nothing in the OpenAI API tells how the server was started; a server that
    # fills top_k from the checkpoint shows up as collapsed sampling (distinct_per_item) instead.
    return {**effective_settings(decoding), "server_generation_config": "vllm (assumed: served_vlm_args)"}
