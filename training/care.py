"""GRPO-CARE (consistency-aware GRPO, Chen et al. 2025) as a subclass of TRL's GRPOTrainer.

What it adds to GRPO, in this file:

* An EMA reference model owned by the trainer, loaded from the policy's path (as the official code does;
  never a deepcopy under ZeRO-3), blended ``ref <- d * ref + (1 - d) * policy`` every ``care_ema_interval``
  optimizer steps with an fp32 running average (:class:`EMAReference`). TRL loads no reference model when
  beta = 0 and refuses its own sync callback then, so the subclass keeps its own. The average and its update
  counter are saved in every checkpoint (``care_ema.pt``; per rank under ZeRO-3) and come back on resume.
* Consistency ``c`` of a completion: the reference model reads image + question + the policy's sampled
  completion token ids and ``c = exp(mean log-prob of the tokens of the answer span the extractor reads)``,
  clamped above at ``care_consistency_clamp`` (no lower clamp). No such span -> no ``c`` -> no bonus.
  Every completion gets a reference forward, span or not, so all ranks run the same number of forwards.
* The bonus, per group of ``num_generations`` completions of one prompt: a completion is accurate when
  its accuracy > ``care_accuracy_threshold`` and >= the group's mean accuracy; with ``mu`` = mean ``c``
  of the group's accurate completions, an accurate completion with ``c >= mu - care_margin`` earns
  ``care_bonus_coef * accuracy``. The bonus is one more reward column, so the total is
  accuracy + format + bonus and TRL normalises advantages per group as usual.

TRL may split a group across processes, so the bonus is computed in ``_calculate_rewards`` after the
rewards (and our consistencies) are gathered from every process: the same numbers on 8 GPUs as on 1.
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate.utils import gather, is_peft_model
from medbridge.harness_ext import answers
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.training.configs import GRPOCareConfig
from medbridge.training.model_utils import fp32_master_policy
from medbridge.training.trainers import MedGRPOTrainer
from transformers import TrainerCallback
from trl.data_utils import apply_chat_template
from trl.models import prepare_deepspeed
from trl.trainer.utils import (
    create_model_from_path,
    disable_dropout_in_model,
    selective_log_softmax,
)

__all__ = [
    "BONUS_REWARD_NAME",
    "EMAReferenceCallback",
    "GRPOCareTrainer",
    "answer_token_mask",
    "care_bonus",
    "consistency_from_logps",
    "ema_update",
]

BONUS_REWARD_NAME = "care_bonus"


# ---------------------------------------------------------------------------------------------
# The algorithm's pieces, as plain functions (unit-tested on hand-made numbers)
# ---------------------------------------------------------------------------------------------


def answer_token_mask(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """Which tokens (given their character offsets) overlap the answer span."""
    start, end = span
    return [tok_end > start and tok_start < end and tok_end > tok_start for tok_start, tok_end in offsets]


def consistency_from_logps(
    token_logps: torch.Tensor, mask: torch.Tensor | Sequence[bool], clamp: float = 0.95
) -> float | None:
    """exp(mean log-prob of the masked tokens), clamped above at ``clamp``; None when nothing is masked."""
    mask = torch.as_tensor(mask, dtype=torch.bool, device=token_logps.device)
    if not bool(mask.any()):
        return None
    value = math.exp(token_logps[mask].double().mean().item())
    return min(value, clamp)


def care_bonus(
    accuracy: torch.Tensor,
    consistency: torch.Tensor,
    num_generations: int,
    *,
    coef: float = 0.5,
    margin: float = 0.0,
    threshold: float = 0.1,
) -> torch.Tensor:
    """The CARE bonus of each completion; inputs are flat over consecutive groups of ``num_generations``.

    ``consistency`` holds NaN where a completion has no answer span (it never earns a bonus and does not
    enter the group's mean). NaN accuracies (a reward returned None) count as 0.
    """
    if accuracy.shape != consistency.shape or accuracy.dim() != 1:
        raise ValueError(
            f"accuracy {tuple(accuracy.shape)} and consistency {tuple(consistency.shape)} must be equal 1-D shapes"
        )
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


def answer_token_mask_from_ids(
    decode: Callable[[list[int]], str], token_ids: Sequence[int], span: tuple[int, int]
) -> list[bool]:
    """Which of the sampled tokens overlap the character span of ``decode(token_ids)``.

    The span is located on the decoded text of the very ids the policy sampled (nothing is re-tokenised):
    token k covers the characters between the decoded lengths of ``ids[:k]`` and ``ids[:k+1]``. Those
    lengths grow with k, so the first and last covering tokens are found by bisection (O(log n) decodes).
    """
    ids = list(token_ids)
    lengths: dict[int, int] = {}

    def decoded_len(k: int) -> int:
        if k not in lengths:
            lengths[k] = len(decode(ids[:k]))
        return lengths[k]

    class _Prefix:  # a lazy sequence of decoded prefix lengths, for bisect
        def __len__(self) -> int:
            return len(ids) + 1

        def __getitem__(self, k: int) -> int:
            return decoded_len(k)

    start, end = span
    first = bisect.bisect_right(_Prefix(), start) - 1  # last prefix ending at or before start
    last = bisect.bisect_left(_Prefix(), end)  # first prefix reaching the end of the span
    first, last = max(first, 0), min(last, len(ids))
    return [first <= k < last and decoded_len(k + 1) > decoded_len(k) for k in range(len(ids))]


def _zero3_enabled() -> bool:
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator yet (plain use, unit tests)
        return False
    plugin = AcceleratorState().deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def _local(param: torch.nn.Parameter) -> torch.Tensor:
    """The tensor this process holds of a parameter: its ZeRO-3 shard, or the whole parameter."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


def _refresh_gathered_zero3_params(module: torch.nn.Module) -> None:
    """Under ZeRO-3, after this process's shards (``ds_tensor``) were written: the parameters that are held
    gathered (persistent ones: every parameter under ``stage3_param_persistence_threshold`` elements, e.g. the
    norms and biases of a 7B model, all of a tiny one) keep their full copy and would never see the new
    shards; release that copy and gather it again from the shards, as DeepSpeed does for the policy after
    each optimizer step. A collective: every process calls it (the EMA callback runs on every rank)."""
    from_zero3 = [p for p in module.parameters() if hasattr(p, "ds_tensor") and hasattr(p, "ds_status")]
    if not from_zero3:
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    held = [p for p in from_zero3 if p.ds_status == ZeroParamStatus.AVAILABLE]
    if held:
        held[0].partition(param_list=held, has_been_updated=False)  # frees the stale full copies
        held[0].all_gather(param_list=held)  # full copies again, from the updated shards


class EMAReference:
    """The CARE reference as an exact EMA of the policy: ``ref <- d * ref + (1 - d) * policy``.

    The running average lives in fp32 (a shadow; for an fp32 reference the parameters themselves), and the
    reference used for the forward passes is refreshed from it after every update. Blending in bf16 directly
    does not work: with d = 0.995, ``(1 - d) * (policy - ref)`` is below half a bf16 ulp of the weight for
    policy drifts up to several percent, so the bf16 reference never changes (the official code has that
    defect). Under ZeRO-3 both models are partitioned the same way, so each process averages its own shards
    (no gather). Memory: 4 bytes per reference parameter held by this process (a 7B model: 28 GB unsharded,
    28/N GB per GPU under ZeRO-3) in addition to the bf16 reference itself; ``care_ema_offload`` keeps it
    in CPU memory instead.
    """

    def __init__(self, reference: torch.nn.Module, offload: bool = False):
        self.reference = reference
        self.names = [name for name, _ in reference.named_parameters()]
        # offload: the fp32 average lives in CPU memory (no GPU memory; a host round trip per update).
        self.shadow = [
            _local(p)
            if _local(p).dtype == torch.float32 and not offload
            else _local(p).detach().to("cpu" if offload else _local(p).device, torch.float32, copy=True)
            for p in reference.parameters()
        ]
        self.updates = 0

    @torch.no_grad()
    def update(self, policy: torch.nn.Module, decay: float) -> None:
        policy_params = dict(policy.named_parameters())
        for name, shadow, ref_param in zip(self.names, self.shadow, self.reference.parameters(), strict=True):
            if name not in policy_params:
                raise RuntimeError(f"EMA reference parameter {name} has no counterpart in the policy")
            current = _local(policy_params[name])
            if current.shape != shadow.shape:
                raise RuntimeError(
                    f"EMA reference {name}: shape {tuple(shadow.shape)} != policy {tuple(current.shape)} "
                    "(the reference must be partitioned like the policy)"
                )
            shadow.mul_(decay).add_(current.to(shadow.device, torch.float32), alpha=1.0 - decay)
            target = _local(ref_param)
            if target is not shadow:
                target.copy_(shadow)
        _refresh_gathered_zero3_params(self.reference)
        self.updates += 1

    # -- checkpoints -------------------------------------------------------------------------------

    @staticmethod
    def file_name(process_index: int, sharded: bool) -> str:
        return f"care_ema_rank{process_index}.pt" if sharded else "care_ema.pt"

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "shadow": [t.detach().cpu() for t in self.shadow], "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any], source: str) -> None:
        if list(state["names"]) != self.names:
            raise MedbridgeError(
                f"{source}: the saved EMA reference has other parameters than this model; "
                "resume with the model the run was started with."
            )
        for name, shadow, saved, ref_param in zip(
            self.names, self.shadow, state["shadow"], self.reference.parameters(), strict=True
        ):
            if saved.shape != shadow.shape:
                raise MedbridgeError(
                    f"{source}: EMA reference {name} has shape {tuple(saved.shape)}, this run "
                    f"{tuple(shadow.shape)}; resume with the same number of processes and ZeRO stage."
                )
            shadow.copy_(saved)
            target = _local(ref_param)
            if target is not shadow:
                target.copy_(shadow)
        _refresh_gathered_zero3_params(self.reference)
        self.updates = int(state["updates"])


def ema_update(reference: torch.nn.Module, policy: torch.nn.Module, decay: float) -> None:
    """One EMA step of ``reference`` towards ``policy`` in fp32 (see :class:`EMAReference`)."""
    EMAReference(reference).update(policy, decay)


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
            self.trainer.care_ema.update(self.trainer.accelerator.unwrap_model(self.trainer.model), args.care_ema_decay)


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class GRPOCareTrainer(MedGRPOTrainer):
    """GRPOTrainer + EMA reference + consistency bonus (see the module docstring)."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "grpo-care", "medbridge"]

    def __init__(self, model: Any, reward_funcs: Callable | list[Callable], args: GRPOCareConfig, **kwargs: Any):
        if not isinstance(args, GRPOCareConfig):
            raise TypeError(f"GRPOCareTrainer needs a GRPOCareConfig, got {type(args).__name__}")
        if kwargs.get("peft_config") is not None or (not isinstance(model, str) and is_peft_model(model)):
            raise NotImplementedError("GRPO-CARE's EMA reference blends full weights; PEFT adapters are not supported")
        model = fp32_master_policy(model, args)  # before the reference is loaded with the same kwargs
        if isinstance(model, str):
            # The reference is loaded from the same path, as the official GRPO-CARE code does: under ZeRO-3 a
            # deepcopy of a partitioned model is not a model (TRL refuses it too). Loaded before the policy, so
            # both come up the same way (including ZeRO-3's partitioned init).
            init_kwargs = dict(args.model_init_kwargs or {})
            if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
                init_kwargs["device_map"] = None
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            reference = create_model_from_path(model, **init_kwargs)
            model = create_model_from_path(model, **init_kwargs)
            args.model_init_kwargs = None  # already applied; the parent would warn otherwise
        elif _zero3_enabled():
            raise ValueError("under ZeRO-3 pass the model as a path: the EMA reference is loaded from it, not copied")
        else:
            reference = copy.deepcopy(model)
        reference.requires_grad_(False)
        reference.eval()

        reward_funcs = list(reward_funcs) if isinstance(reward_funcs, list | tuple) else [reward_funcs]
        if args.reward_weights is not None:
            if len(args.reward_weights) != len(reward_funcs):
                raise ValueError(
                    f"reward_weights has {len(args.reward_weights)} entries for {len(reward_funcs)} reward functions"
                )
            args.reward_weights = list(args.reward_weights) + [1.0]
        names = [getattr(f, "__name__", "") for f in reward_funcs]
        wanted = args.care_accuracy_reward.rpartition(":")[2]  # a name in REWARDS or package.module:function
        matches = [i for i, n in enumerate(names) if n in (wanted, f"{wanted}_reward")]
        if len(matches) != 1:
            raise ValueError(f"care_accuracy_reward {wanted!r} must name exactly one reward function; got {names}")
        self._care_accuracy_index = matches[0]

        super().__init__(model=model, reward_funcs=reward_funcs + [care_bonus_placeholder], args=args, **kwargs)
        self._care_bonus_index = len(self.reward_funcs) - 1

        if args.disable_dropout:
            disable_dropout_in_model(reference)
        if self.is_fsdp_enabled:
            raise NotImplementedError(
                "GRPO-CARE's EMA reference is not implemented for FSDP; use DDP or DeepSpeed ZeRO-2/3"
            )
        if self.is_deepspeed_enabled:
            reference = prepare_deepspeed(reference, self.accelerator)
        else:
            reference = self.accelerator.prepare_model(reference, evaluation_mode=True)
        self.care_ref_model = reference
        self.care_ema = EMAReference(self.accelerator.unwrap_model(reference), offload=args.care_ema_offload)
        # Reference forwards this process ran: one per local completion, whatever the completions hold,
        # so every rank enters the same number of (ZeRO-3: collective) forwards.
        self.care_reference_forwards = 0
        self.add_callback(EMAReferenceCallback(self))

    @property
    def care_ema_updates(self) -> int:
        return self.care_ema.updates

    # -- checkpoints: the EMA reference and its counter are part of the training state ----------

    def _care_ema_file(self, folder: str | Path) -> Path:
        return Path(folder) / EMAReference.file_name(self.accelerator.process_index, sharded=_zero3_enabled())

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if _zero3_enabled() or self.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.care_ema.state_dict(), self._care_ema_file(folder))

    def _resume_required_files(self) -> list[str]:
        # The EMA reference is training state: a checkpoint without it would restart the reference from the
        # base model. Under ZeRO-3 every rank's shard file must be there (written after trainer_state.json).
        if _zero3_enabled():
            return [EMAReference.file_name(k, sharded=True) for k in range(self.accelerator.num_processes)]
        return [EMAReference.file_name(0, sharded=False)]

    def _train_resolved(self, resume_from_checkpoint: str | None, **kwargs: Any):
        if resume_from_checkpoint:
            path = self._care_ema_file(resume_from_checkpoint)
            self.care_ema.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), str(path))
        return super()._train_resolved(resume_from_checkpoint, **kwargs)

    # -- consistency -------------------------------------------------------------------------

    @torch.no_grad()
    def _care_consistency(
        self, prompts: list, completion_ids: list[list[int]], options: list | None = None
    ) -> torch.Tensor:
        """Local consistencies (NaN where a completion has no answer span).

        Scored on the sampled token ids. One reference forward per completion, span or not, so that
        every process runs the same number of forwards (each is a collective under ZeRO-3).
        """
        device = self.accelerator.device
        out = torch.full((len(prompts),), float("nan"), device=device)
        options = options if options is not None else [None] * len(prompts)

        def decode(ids: list[int]) -> str:
            return self._tokenizer.decode(ids, skip_special_tokens=True)

        for i, (prompt, ids, opts) in enumerate(zip(prompts, completion_ids, options, strict=True)):
            ids = [int(t) for t in ids]
            span = answers.final_answer_span(decode(ids), _options_mapping(opts))
            mask = answer_token_mask_from_ids(decode, ids, span) if span is not None else [False] * len(ids)
            value = self._reference_answer_likelihood(prompt, ids, mask)
            if span is not None and any(mask):
                out[i] = value
        return out

    def _reference_answer_likelihood(self, prompt: Any, completion_ids: list[int], mask: list[bool]) -> float:
        if isinstance(prompt, list):  # conversational (images already placed in the user turn by TRL)
            prompt_text = apply_chat_template({"prompt": prompt}, self.processing_class, **self.chat_template_kwargs)[
                "prompt"
            ]
            images = [
                part["image"]
                for msg in prompt
                if isinstance(msg.get("content"), list)
                for part in msg["content"]
                if part.get("type") == "image" and part.get("image") is not None
            ]
        else:
            prompt_text, images = prompt, []
        if self._is_vlm:
            enc = self.processing_class(text=[prompt_text], images=images or None, return_tensors="pt")
        else:
            enc = self.processing_class(text=[prompt_text], return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(self.accelerator.device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        comp = torch.tensor([completion_ids], dtype=torch.long, device=self.accelerator.device)
        input_ids = torch.cat([enc.pop("input_ids"), comp], dim=1)
        enc["attention_mask"] = torch.ones_like(input_ids)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in enc:  # per-token modality ids cover the prompt; completion tokens are text (0)
                enc[key] = torch.cat([enc[key], enc[key].new_zeros(comp.shape)], dim=1)
        # Logits at position t predict token t+1: keep the last len+1 and drop the final one.
        logits = self.care_ref_model(
            input_ids=input_ids, logits_to_keep=comp.size(1) + 1, use_cache=False, **enc
        ).logits
        self.care_reference_forwards += 1
        logps = selective_log_softmax(logits[:, :-1].float(), comp)[0]
        value = consistency_from_logps(logps, mask, self.args.care_consistency_clamp)
        return float("nan") if value is None else value

    # -- rewards -----------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        options = [x.get("options") if isinstance(x, Mapping) else None for x in inputs]
        consistency = gather(self._care_consistency(prompts, completion_ids_list, options))  # same order as the rewards
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        bonus = care_bonus(
            rewards_per_func[:, self._care_accuracy_index],
            consistency,
            group,
            coef=self.args.care_bonus_coef,
            margin=self.args.care_margin,
            threshold=self.args.care_accuracy_threshold,
        )
        rewards_per_func[:, self._care_bonus_index] = bonus.to(rewards_per_func.dtype)
        has_c = ~torch.isnan(consistency)
        self._metrics[mode]["care/consistency_mean"].append(
            consistency[has_c].mean().item() if has_c.any() else float("nan")
        )
        self._metrics[mode]["care/answer_span_frac"].append(has_c.float().mean().item())
        self._metrics[mode]["care/bonus_frac"].append((bonus > 0).float().mean().item())
        self._metrics[mode]["care/ema_updates"].append(float(self.care_ema_updates))
        return rewards_per_func


def _options_mapping(options: Any) -> dict[str, str] | None:
    """A row's options column (JSON string or mapping) as a mapping; None when absent or unreadable."""
    from medbridge.training.rewards import parse_options

    if options is None:
        return None
    try:
        return parse_options(options)
    except ValueError:
        return None
