"""GRPO-CARE (consistency-aware GRPO, Chen et al. 2025) as a subclass of TRL's GRPOTrainer.

What it adds to GRPO, in this file:

* An EMA reference model owned by the trainer: a copy of the policy taken before the parent wraps it,
  blended ``ref <- d * ref + (1 - d) * policy`` every ``care_ema_interval`` optimizer steps. TRL loads no
  reference model when beta = 0 and refuses its own sync callback then, so the subclass keeps its own.
* Consistency ``c`` of a completion: the reference model reads image + question + the policy's
  completion and ``c = exp(mean log-prob of the tokens of the final answer span)``, clamped above at
  ``care_consistency_clamp`` (no lower clamp). No answer tag -> no ``c`` -> no bonus.
* The bonus, per group of ``num_generations`` completions of one prompt: a completion is accurate when
  its accuracy > ``care_accuracy_threshold`` and >= the group's mean accuracy; with ``mu`` = mean ``c``
  of the group's accurate completions, an accurate completion with ``c >= mu - care_margin`` earns
  ``care_bonus_coef * accuracy``. The bonus is one more reward column, so the total is
  accuracy + format + bonus and TRL normalises advantages per group as usual.

TRL may split a group across processes, so the bonus is computed in ``_calculate_rewards`` after the
rewards (and our consistencies) are gathered from every process: the same numbers on 8 GPUs as on 1.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from accelerate.utils import gather, is_peft_model
from medbridge.harness_ext import answers
from medbridge.training.configs import GRPOCareConfig
from medbridge.training.rewards import completion_text
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.data_utils import apply_chat_template
from trl.models import prepare_deepspeed
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import (
    create_model_from_path,
    disable_dropout_in_model,
    selective_log_softmax,
)

__all__ = [
    "BONUS_REWARD_NAME",
    "EMAReferenceCallback",
    "GRPOCareTrainer",
    "answer_char_span",
    "answer_token_mask",
    "care_bonus",
    "consistency_from_logps",
    "ema_update",
]

BONUS_REWARD_NAME = "care_bonus"


# ---------------------------------------------------------------------------------------------
# The algorithm's pieces, as plain functions (unit-tested on hand-made numbers)
# ---------------------------------------------------------------------------------------------


def answer_char_span(response: str) -> tuple[int, int] | None:
    """Character span [start, end) of the answer the evaluation extractor reads, whitespace trimmed.

    The span choice (last answer tag outside the reasoning, else the last one; an unclosed final tag
    runs to the end) is the extractor's own, so "the final answer span" means the same thing here as
    in scoring. None when there is no answer tag or its content is blank.
    """
    if not isinstance(response, str):
        return None
    # The extractor's span finder (private helpers of harness_ext.answers; reused, not re-implemented).
    regions, spans = answers._structure(response)
    span, _ = answers._pick_span(spans, regions)
    if span is None:
        return None
    start, end = span[1], span[2]
    while start < end and response[start].isspace():
        start += 1
    while end > start and response[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def answer_token_mask(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """Which tokens (given their character offsets) overlap the answer span."""
    start, end = span
    return [tok_end > start and tok_start < end and tok_end > tok_start for tok_start, tok_end in offsets]


def consistency_from_logps(token_logps: torch.Tensor, mask: torch.Tensor | Sequence[bool], clamp: float = 0.95) -> float | None:
    """exp(mean log-prob of the masked tokens), clamped above at ``clamp``; None when nothing is masked."""
    mask = torch.as_tensor(mask, dtype=torch.bool, device=token_logps.device)
    if not bool(mask.any()):
        return None
    value = math.exp(token_logps[mask].double().mean().item())
    return min(value, clamp)


def care_bonus(accuracy: torch.Tensor, consistency: torch.Tensor, num_generations: int, *, coef: float = 0.5, margin: float = 0.0, threshold: float = 0.1) -> torch.Tensor:
    """The CARE bonus of each completion; inputs are flat over consecutive groups of ``num_generations``.

    ``consistency`` holds NaN where a completion has no answer span (it never earns a bonus and does not
    enter the group's mean). NaN accuracies (a reward returned None) count as 0.
    """
    if accuracy.shape != consistency.shape or accuracy.dim() != 1:
        raise ValueError(f"accuracy {tuple(accuracy.shape)} and consistency {tuple(consistency.shape)} must be equal 1-D shapes")
    if accuracy.numel() % num_generations:
        raise ValueError(f"{accuracy.numel()} completions do not split into groups of {num_generations}")
    acc = torch.nan_to_num(accuracy.float(), nan=0.0).view(-1, num_generations)
    c = consistency.float().view(-1, num_generations)
    has_c = ~torch.isnan(c)
    accurate = (acc > threshold) & (acc >= acc.mean(dim=1, keepdim=True))
    counted = accurate & has_c
    n = counted.sum(dim=1, keepdim=True)
    mu = torch.where(counted, c, torch.zeros_like(c)).sum(dim=1, keepdim=True) / n.clamp(min=1)
    consistent = counted & (c >= mu - margin)
    return torch.where(consistent, coef * acc, torch.zeros_like(acc)).view(-1)


def _zero3_enabled() -> bool:
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator yet (plain use, unit tests)
        return False
    plugin = AcceleratorState().deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def ema_update(reference: torch.nn.Module, policy: torch.nn.Module, decay: float) -> None:
    """ref <- decay * ref + (1 - decay) * policy, parameter by parameter (TRL's blend; ZeRO-3 gathers first)."""
    if _zero3_enabled():
        SyncRefModelCallback.sync_target_model(policy, reference, 1.0 - decay)
    else:
        SyncRefModelCallback._sync_target_model(policy, reference, 1.0 - decay)


def care_bonus_placeholder(completions: list, **kwargs: Any) -> list[float]:
    """Column of the CARE bonus in TRL's reward table; the trainer fills it after gathering."""
    return [0.0] * len(completions)


care_bonus_placeholder.__name__ = BONUS_REWARD_NAME


class EMAReferenceCallback(TrainerCallback):
    """Blends the policy into the trainer's EMA reference every ``interval`` optimizer steps."""

    def __init__(self, trainer: GRPOCareTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.care_ema_interval == 0:
            policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
            ema_update(self.trainer.care_ref_model, policy, args.care_ema_decay)
            self.trainer.care_ema_updates += 1


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class GRPOCareTrainer(GRPOTrainer):
    """GRPOTrainer + EMA reference + consistency bonus (see the module docstring)."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "grpo-care", "medbridge"]

    def __init__(self, model: Any, reward_funcs: Callable | list[Callable], args: GRPOCareConfig, **kwargs: Any):
        if not isinstance(args, GRPOCareConfig):
            raise TypeError(f"GRPOCareTrainer needs a GRPOCareConfig, got {type(args).__name__}")
        if kwargs.get("peft_config") is not None or (not isinstance(model, str) and is_peft_model(model)):
            raise NotImplementedError("GRPO-CARE's EMA reference blends full weights; PEFT adapters are not supported")
        if isinstance(model, str):
            # Load here (as GRPOTrainer would) so the reference can be copied before the parent wraps the policy.
            init_kwargs = dict(args.model_init_kwargs or {})
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                init_kwargs["device_map"] = None
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            model = create_model_from_path(model, **init_kwargs)
            args.model_init_kwargs = None  # already applied; the parent would warn otherwise
        reference = copy.deepcopy(model)
        reference.requires_grad_(False)
        reference.eval()

        reward_funcs = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else [reward_funcs]
        if args.reward_weights is not None:
            if len(args.reward_weights) != len(reward_funcs):
                raise ValueError(f"reward_weights has {len(args.reward_weights)} entries for {len(reward_funcs)} reward functions")
            args.reward_weights = list(args.reward_weights) + [1.0]
        names = [getattr(f, "__name__", "") for f in reward_funcs]
        wanted = args.care_accuracy_reward
        matches = [i for i, n in enumerate(names) if n in (wanted, f"{wanted}_reward")]
        if len(matches) != 1:
            raise ValueError(f"care_accuracy_reward {wanted!r} must name exactly one reward function; got {names}")
        self._care_accuracy_index = matches[0]

        super().__init__(model=model, reward_funcs=reward_funcs + [care_bonus_placeholder], args=args, **kwargs)
        self._care_bonus_index = len(self.reward_funcs) - 1

        if args.disable_dropout:
            disable_dropout_in_model(reference)
        if self.is_fsdp_enabled:
            raise NotImplementedError("GRPO-CARE's EMA reference is not implemented for FSDP; use DDP or DeepSpeed ZeRO-2/3")
        if self.is_deepspeed_enabled:
            reference = prepare_deepspeed(reference, self.accelerator)
        else:
            reference = self.accelerator.prepare_model(reference, evaluation_mode=True)
        self.care_ref_model = reference
        self.care_ema_updates = 0
        self.add_callback(EMAReferenceCallback(self))

    # -- consistency -------------------------------------------------------------------------

    @torch.no_grad()
    def _care_consistency(self, prompts: list, completions: list) -> torch.Tensor:
        """Local consistencies (NaN where a completion has no answer span), one reference forward each."""
        device = self.accelerator.device
        out = torch.full((len(prompts),), float("nan"), device=device)
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            text = completion_text(completion)
            span = answer_char_span(text)
            if span is None:
                continue
            enc = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            mask = answer_token_mask(enc["offset_mapping"], span)
            if not any(mask):
                continue
            out[i] = self._reference_answer_likelihood(prompt, enc["input_ids"], mask)
        return out

    def _reference_answer_likelihood(self, prompt: Any, completion_ids: list[int], mask: list[bool]) -> float:
        if isinstance(prompt, list):  # conversational (images already placed in the user turn by TRL)
            prompt_text = apply_chat_template({"prompt": prompt}, self.processing_class, **self.chat_template_kwargs)["prompt"]
            images = [part["image"] for msg in prompt if isinstance(msg.get("content"), list)
                      for part in msg["content"] if part.get("type") == "image" and part.get("image") is not None]
        else:
            prompt_text, images = prompt, []
        if self._is_vlm:
            enc = self.processing_class(text=[prompt_text], images=images or None, return_tensors="pt")
        else:
            enc = self.processing_class(text=[prompt_text], return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.accelerator.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        comp = torch.tensor([completion_ids], device=self.accelerator.device)
        input_ids = torch.cat([enc.pop("input_ids"), comp], dim=1)
        enc["attention_mask"] = torch.ones_like(input_ids)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in enc:  # per-token modality ids cover the prompt; completion tokens are text (0)
                enc[key] = torch.cat([enc[key], enc[key].new_zeros(comp.shape)], dim=1)
        # Logits at position t predict token t+1: keep the last len+1 and drop the final one.
        logits = self.care_ref_model(input_ids=input_ids, logits_to_keep=comp.size(1) + 1, use_cache=False, **enc).logits
        logps = selective_log_softmax(logits[:, :-1].float(), comp)[0]
        value = consistency_from_logps(logps, mask, self.args.care_consistency_clamp)
        return float("nan") if value is None else value

    # -- rewards -----------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        consistency = gather(self._care_consistency(prompts, completions))  # same order as the rewards
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        bonus = care_bonus(
            rewards_per_func[:, self._care_accuracy_index], consistency, group,
            coef=self.args.care_bonus_coef, margin=self.args.care_margin, threshold=self.args.care_accuracy_threshold,
        )
        rewards_per_func[:, self._care_bonus_index] = bonus.to(rewards_per_func.dtype)
        has_c = ~torch.isnan(consistency)
        self._metrics[mode]["care/consistency_mean"].append(consistency[has_c].mean().item() if has_c.any() else float("nan"))
        self._metrics[mode]["care/answer_span_frac"].append(has_c.float().mean().item())
        self._metrics[mode]["care/bonus_frac"].append((bonus > 0).float().mean().item())
        self._metrics[mode]["care/ema_updates"].append(float(self.care_ema_updates))
        return rewards_per_func
