"""TRL's GRPO and SFT trainers with the fixes every medbridge run needs.

* Exact resume: the policy weights come back from the checkpoint (transformers' own loader matches none of
  the saved Qwen2.5-VL keys, see :func:`medbridge.training.model_utils.load_weights_from_checkpoint`);
  optimizer, scheduler, RNG and step come back through the Trainer as usual.
* ``resume_from_checkpoint`` as the README states it: ``true`` / ``last`` (the newest *complete* checkpoint
  of ``output_dir``), a checkpoint folder, or ``false``; checked before training starts
  (:func:`resolve_resume_checkpoint`).
* fp32 master weights whatever the flags (:func:`medbridge.training.model_utils.fp32_master_policy`).
* One image geometry: a colocated vLLM engine gets the trainer's ``min_pixels`` / ``max_pixels``.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, ClassVar

from accelerate.utils import broadcast_object_list, is_peft_model
from medbridge.training.model_utils import fp32_master_policy, load_weights_from_checkpoint, vllm_image_geometry
from medbridge.training.resume import ResumeError, resolve_resume_checkpoint
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import GRPOTrainer, SFTTrainer

# TRL 1.16 toggles checkpointing around generation through the model methods transformers >= 5.2x renamed
# (`is_gradient_checkpointing`, `gradient_checkpointing_enable/disable` -> `*activation_checkpointing*`):
# a FutureWarning per step addressed to TRL, not to the user. Only these three messages are silenced.
warnings.filterwarnings(
    "ignore",
    message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated",
    category=FutureWarning,
)

__all__ = ["ExactResumeMixin", "MedGRPOTrainer", "MedSFTTrainer", "ResumeError", "resolve_resume_checkpoint"]


class ExactResumeMixin:
    """``resume_from_checkpoint`` resolved up front (true / last / a folder), and the policy weights resumed
    with a strict, key-converting load (upstream transformers#43701)."""

    def _resume_required_files(self) -> list[str]:
        """Files a checkpoint must hold, besides the Trainer's own, for this trainer to resume from it."""
        return []

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        # Resolved on the main process and broadcast, so every rank resumes from the same folder.
        answer: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                answer[0] = resolve_resume_checkpoint(
                    resume_from_checkpoint, self.args.output_dir, self._resume_required_files()
                )
            except ResumeError as err:
                answer[0] = err
        if self.accelerator.num_processes > 1:
            broadcast_object_list(answer, from_process=0)
        if isinstance(answer[0], ResumeError):
            raise answer[0]
        self._medbridge_resumed_from = answer[0]
        return self._train_resolved(answer[0], **kwargs)

    def _train_resolved(self, resume_from_checkpoint: str | None, **kwargs: Any):
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

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

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        training_args = kwargs["args"]
        model = fp32_master_policy(model, training_args, peft=kwargs.get("peft_config") is not None)
        with vllm_image_geometry(training_args.max_pixels, training_args.min_pixels):
            super().__init__(model, *args, **kwargs)


class MedSFTTrainer(ExactResumeMixin, SFTTrainer):
    """SFTTrainer with exact resume (its ``num_tokens`` count included) and fp32 master weights."""

    TOKENS_FILE = "medbridge_sft_tokens.json"

    def __init__(self, model: Any, *args: Any, **kwargs: Any):
        model = fp32_master_policy(model, kwargs["args"], peft=kwargs.get("peft_config") is not None)
        super().__init__(model, *args, **kwargs)

    # TRL's SFTTrainer counts the logged ``num_tokens`` in an attribute no checkpoint holds, so a resumed run
    # would log the tokens since the resume as the total: the count is saved next to trainer_state.json.
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.accelerator.is_main_process:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, self.TOKENS_FILE), "w", encoding="utf-8") as fh:
                json.dump({"num_tokens": self._total_train_tokens}, fh)

    def _train_resolved(self, resume_from_checkpoint: str | None, **kwargs: Any):
        if resume_from_checkpoint:
            self._total_train_tokens = self._saved_token_count(resume_from_checkpoint)
        return super()._train_resolved(resume_from_checkpoint, **kwargs)

    def _saved_token_count(self, checkpoint: str) -> int:
        path = os.path.join(checkpoint, self.TOKENS_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                return int(json.load(fh)["num_tokens"])
        # Older checkpoints: the last logged count (short by the tokens of any steps after that log).
        with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as fh:
            logged = [h["num_tokens"] for h in json.load(fh)["log_history"] if "num_tokens" in h]
        warnings.warn(
            f"{checkpoint} has no {self.TOKENS_FILE}: the logged num_tokens continues from the last logged "
            f"value ({logged[-1] if logged else 0}), which misses the tokens of steps after that log",
            stacklevel=2,
        )
        return int(logged[-1]) if logged else 0
