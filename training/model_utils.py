"""Model, processor and image-geometry helpers shared by the GRPO, GRPO-CARE and SFT entry points.

One image geometry: the processor of the trainer, the vLLM engine that generates (colocated or served)
and the lmms-eval run that evaluates a checkpoint all get the same ``min_pixels`` / ``max_pixels``, so a
prompt has the same number of image tokens everywhere (training/image_budget.py's ``image_geometry``).
``python -m medbridge.training.model_utils vllm-serve ...`` runs the vLLM server node (training/vllm_server.py,
which builds the server command).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from medbridge.training.image_budget import image_geometry

logger = logging.getLogger(__name__)

__all__ = [
    "load_processor",
    "load_weights_from_checkpoint",
    "model_init_kwargs",
    "policy_init_kwargs",
    "fp32_master_kwargs",
    "fp32_master_policy",
    "uses_deepspeed",
    "vllm_image_geometry",
]


def load_processor(
    model_name_or_path: str,
    *,
    max_pixels: int,
    min_pixels: int,
    trust_remote_code: bool = False,
    revision: str | None = None,
):
    """The model's processor with the recipe's image budget and left padding (as GRPO wants).

    The budget is the image processor's ``size`` (``longest_edge`` = max_pixels, ``shortest_edge`` =
    min_pixels), the same numbers vLLM applies from its ``mm_processor_kwargs``, so both sides resize an
    image to the same grid. (Given as ``max_pixels`` / ``min_pixels`` to ``from_pretrained``, transformers 5
    would also pass them to every processor call, which it deprecates with a FutureWarning per image.)
    """
    from transformers import AutoProcessor

    geometry = image_geometry(max_pixels, min_pixels)
    return AutoProcessor.from_pretrained(
        model_name_or_path,
        revision=revision,
        trust_remote_code=trust_remote_code,
        padding_side="left",
        truncation_side="left",
        size={"longest_edge": geometry["max_pixels"], "shortest_edge": geometry["min_pixels"]},
    )


def recipe_processor(model_args: Any, training_args: Any):
    """``load_processor`` with a recipe's model, revision and image budget (GRPO, CARE and SFT alike)."""
    return load_processor(
        model_args.model_name_or_path,
        max_pixels=training_args.max_pixels,
        min_pixels=training_args.min_pixels,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
        revision=model_args.model_revision,
    )


def model_init_kwargs(model_args: Any) -> dict[str, Any]:
    """TRL ModelConfig -> from_pretrained kwargs (dtype, attention implementation, revision)."""
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if getattr(model_args, "dtype", None) not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    return kwargs


def uses_deepspeed(training_args: Any) -> bool:
    """Whether this run trains under DeepSpeed (a ``deepspeed`` config, or an accelerate DeepSpeed launch)."""
    if getattr(training_args, "deepspeed", None):
        return True
    return str(getattr(training_args.distributed_state, "distributed_type", "")).endswith("DEEPSPEED")


def _mixed_precision(training_args: Any) -> str:
    """'bf16', 'fp16' or 'no': the flags, else what accelerate launch set (TrainingArguments reads both)."""
    if getattr(training_args, "bf16", False):
        return "bf16"
    if getattr(training_args, "fp16", False):
        return "fp16"
    return str(getattr(training_args, "mixed_precision", None) or "no")


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _keeps_16bit_master(training_args: Any) -> bool:
    """DeepSpeed with bf16/fp16 mixed precision: its ZeRO optimizer keeps fp32 master weights and moments."""
    return uses_deepspeed(training_args) and _mixed_precision(training_args) in ("bf16", "fp16")


def fp32_master_kwargs(init_kwargs: dict[str, Any] | None, training_args: Any, *, peft: bool = False) -> dict[str, Any]:
    """``init_kwargs`` (from_pretrained kwargs of the policy) with fp32 master weights whatever the flags.

    The optimizer updates the parameters in their own dtype: AdamW on bf16 parameters at lr 5e-7 loses
    most updates to rounding (about 1 % of the weights changed in 100 steps), and its moments are bf16 too.
    So a 16-bit (or ``auto``, i.e. the checkpoint's) dtype is kept in two cases only: DeepSpeed with bf16/fp16
    mixed precision, whose ZeRO optimizer keeps fp32 master weights itself, and PEFT, whose trainable
    adapters PEFT creates in fp32 over the frozen 16-bit base. Everywhere else (one GPU, DDP, CPU, DeepSpeed
    without mixed precision, ``dtype: bfloat16`` with ``bf16: false``) the policy is loaded in fp32, and with
    ``bf16: true`` the Trainer autocasts the forward passes to bf16. Cost: 16 bytes per parameter with AdamW
    (weights 4 + gradients 4 + moments 8); a 7B model needs ZeRO to fit.
    """
    kwargs = dict(init_kwargs or {})
    requested = _dtype_name(kwargs.get("dtype"))
    if requested == "float32" or peft or _keeps_16bit_master(training_args):
        return kwargs
    if requested is not None:  # unset is TRL's own default, float32
        logger.warning(
            "loading the policy in float32, not %s: fp32 master weights and optimizer state%s",
            "the checkpoint's dtype" if requested == "auto" else requested,
            "; bf16/fp16 autocast for the forward passes" if _mixed_precision(training_args) != "no" else "",
        )
    kwargs["dtype"] = "float32"
    return kwargs


def policy_init_kwargs(
    model_args: Any, training_args: Any, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """from_pretrained kwargs of the policy: the recipe's, then ``overrides`` (the recipe's
    ``model_init_kwargs``), under the fp32-master rule of :func:`fp32_master_kwargs`."""
    kwargs = {**model_init_kwargs(model_args), **(overrides or {})}
    return fp32_master_kwargs(kwargs, training_args, peft=bool(getattr(model_args, "use_peft", False)))


def fp32_master_policy(model: Any, training_args: Any, *, peft: bool = False) -> Any:
    """What a trainer is given as its policy, under the fp32-master rule: a path gets the rule applied to
    ``training_args.model_init_kwargs`` (in place); a loaded model with 16-bit trainable parameters is cast
    to fp32 (with a warning) unless DeepSpeed mixed precision or PEFT keeps fp32 master copies itself."""
    if isinstance(model, str):
        training_args.model_init_kwargs = fp32_master_kwargs(training_args.model_init_kwargs, training_args, peft=peft)
        return model
    if peft or _keeps_16bit_master(training_args) or not isinstance(model, torch.nn.Module):
        return model
    low = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)}
    if low:
        logger.warning("casting the policy's %s parameters to float32: fp32 master weights and optimizer state", low)
        model = model.float()
    return model


@contextlib.contextmanager
def vllm_image_geometry(max_pixels: int, min_pixels: int) -> Iterator[None]:
    """While TRL builds its colocated vLLM engine, give the engine the trainer's image budget.

    TRL 1.16 constructs ``vllm.LLM(...)`` without ``mm_processor_kwargs`` (trl/generation/vllm_generation.py),
    so vLLM would resize images with the checkpoint's own defaults and a prompt could get another number of
    image tokens than the trainer's processor gives it. The engine class is wrapped only inside this block.
    """
    from trl.generation import vllm_generation

    original = getattr(vllm_generation, "LLM", None)
    if original is None:  # vLLM not installed: TRL raises its own error if use_vllm is set
        yield
        return
    vllm_generation.LLM = with_mm_processor_kwargs(original, image_geometry(max_pixels, min_pixels))
    try:
        yield
    finally:
        vllm_generation.LLM = original


def with_mm_processor_kwargs(engine_cls: Callable[..., Any], mm_kwargs: dict[str, Any]) -> Callable[..., Any]:
    """``engine_cls`` whose constructor always receives ``mm_processor_kwargs`` (merged over any given)."""

    @functools.wraps(engine_cls, updated=())
    def build(*args: Any, **kwargs: Any) -> Any:
        kwargs["mm_processor_kwargs"] = {**(kwargs.get("mm_processor_kwargs") or {}), **mm_kwargs}
        return engine_cls(*args, **kwargs)

    return build


def load_weights_from_checkpoint(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load a saved checkpoint's weights into ``model`` in place, every key matched (strict).

    Workaround for transformers 5.x (upstream issue huggingface/transformers#43701): ``Trainer``
    resumes with a plain non-strict ``load_state_dict`` of ``model.safetensors``, but the file is written
    with the checkpoint key names (``model.layers.*``) while the Qwen2.5-VL module has been renamed
    (``model.language_model.layers.*``), so none of the keys match (57 missing, 56 unexpected on our tiny
    model) and training silently goes on from the base weights. ``from_pretrained`` applies the key
    conversion, so the weights are read through it and copied over; remove this once the upstream fix lands.
    """
    reference = next(model.parameters())
    loaded = type(model).from_pretrained(str(checkpoint), dtype=reference.dtype, device_map="cpu")
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head <-> embeddings) may be absent from one side; anything else is a real mismatch.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{checkpoint}: weights do not match the model (missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}); was this checkpoint saved from another architecture?"
        )
    del loaded, state


if __name__ == "__main__":  # `python -m medbridge.training.model_utils vllm-serve ...`: the command of training/slurm/
    import sys

    from medbridge.training.vllm_server import serve_main

    sys.exit(serve_main(sys.argv[1:]))
