"""TRL's GRPO and SFT trainers with the two fixes every medbridge run needs.

* Exact resume: the policy weights come back from the checkpoint (transformers' own loader matches none of
  the saved Qwen2.5-VL keys, see :func:`medbridge.training.model_utils.load_weights_from_checkpoint`);
  optimizer, scheduler, RNG and step come back through the Trainer as usual.
* One image geometry: a colocated vLLM engine gets the trainer's ``min_pixels`` / ``max_pixels``.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from accelerate.utils import is_peft_model
from medbridge.training.model_utils import load_weights_from_checkpoint, vllm_image_geometry
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import GRPOTrainer, SFTTrainer

__all__ = ["ExactResumeMixin", "MedGRPOTrainer", "MedSFTTrainer"]


class ExactResumeMixin:
    """Resume the policy weights with a strict, key-converting load (upstream transformers#43701)."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        target = self.model if model is None else model
        has_weights = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        )
        # FSDP, PEFT adapters and DeepSpeed (which resumes from its own files) keep the Trainer's path.
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or is_peft_model(target) or not has_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights_from_checkpoint(self.accelerator.unwrap_model(target), resume_from_checkpoint)
        return None


class MedGRPOTrainer(ExactResumeMixin, GRPOTrainer):
    """GRPOTrainer with exact resume and the recipe's image budget passed to a colocated vLLM engine."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "medbridge"]

    def __init__(self, *args: Any, **kwargs: Any):
        training_args = kwargs["args"]
        with vllm_image_geometry(training_args.max_pixels, training_args.min_pixels):
            super().__init__(*args, **kwargs)


class MedSFTTrainer(ExactResumeMixin, SFTTrainer):
    """SFTTrainer with exact resume."""
