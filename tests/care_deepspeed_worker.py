"""Worker of tests/test_training_deepspeed.py: GRPO-CARE under DeepSpeed ZeRO-2 / ZeRO-3 on the CPU.

    accelerate launch --multi_gpu --num_processes 2 tests/care_deepspeed_worker.py MODEL_DIR OUT.json STAGE
        STAGE: 2, 3 (DeepSpeed's persistence threshold: every tiny parameter stays gathered) or 3-nopersist
    python tests/care_deepspeed_worker.py MODEL_DIR OUT.json none        (one process, no DeepSpeed: the reference)

1. The reward step on fixed completions (one group of 8 split across the processes, as in care_gather_worker.py):
   the gathered reward table (accuracy, format, a dense reward, CARE bonus) and every rank's reference-forward
   count, which must be equal (each forward is a collective under ZeRO-3).
2. Two optimizer steps on the dense reward (it moves the weights), the EMA reference updated after each
   (decay 0.9), a checkpoint after each: the full policy after every step and the full reference before
   and after are gathered, so the test can recompute the exact EMA; under ZeRO-3 each process saves its own
   shard of the fp32 average (care_ema_rank<k>.pt), which the test reassembles.

What DeepSpeed's batch-size assertion needs (``train_batch_size ... != micro_batch * grad_acc * world_size``):
DeepSpeed's own communication layer must be up before a DeepSpeed config is built. With ``use_cpu`` the
Trainer's process group is plain torch gloo, so ZeRO-3's ``zero.Init`` (model loading) reads a world of 1 and
compares it with the Trainer's batch size for 2 processes; ``deepspeed.init_distributed`` on the existing gloo
group first fixes it (on GPUs, accelerate's DeepSpeed launch initialises DeepSpeed's layer itself).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from medbridge.tests.care_gather_worker import ANSWERS, RECIPE  # the same group of 8 completions and recipe

DENSE = "medbridge.tests.training_rewards:low_token_share"


def _deepspeed_config(stage: int, persist: bool) -> str:
    zero: dict = {"stage": stage}
    if stage == 3:  # as training/accelerate/zero3.yaml: a 16-bit model at every save, for the evaluation
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if not persist:  # no parameter stays gathered: each is gathered from the shards for every forward
            zero["stage3_param_persistence_threshold"] = 0
    return json.dumps(
        {
            "zero_optimization": zero,
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    )


def _gathered(module) -> dict:
    """Every parameter of ``module`` in full (a collective under ZeRO-3: every rank calls it)."""
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {name: p.detach().clone().double() for name, p in module.named_parameters()}


def main(model_dir: str, out_path: str, stage_arg: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    stage = None if stage_arg == "none" else int(stage_arg.split("-")[0])
    if stage is not None:
        import deepspeed

        # See the module docstring: DeepSpeed's layer on top of the gloo group, before any model is built.
        deepspeed.init_distributed(dist_backend="gloo")
    from accelerate.utils import gather_object
    from medbridge.training.configs import parse_recipe
    from medbridge.training.grpo import build_trainer
    from transformers import TrainerCallback
    from trl.data_utils import prepare_multimodal_messages

    per_device = len(ANSWERS) // world
    argv = [
        "--config", str(RECIPE),
        "--model_name_or_path", model_dir,
        "--output_dir", str(Path(out_path).parent / f"run-{stage_arg}"),
        "--ckpt_eval", "false", "--use_cpu", "true", "--bf16", "false", "--report_to", "none",
        "--num_generations", str(len(ANSWERS)), "--per_device_train_batch_size", str(per_device),
        "--reward_names", "accuracy", "format", DENSE,
        "--max_steps", "2", "--save_steps", "1", "--max_completion_length", "8",
        "--learning_rate", "1e-2", "--care_ema_interval", "1", "--care_ema_decay", "0.9", "--seed", "3",
    ]  # fmt: skip
    if stage is not None:
        argv += ["--deepspeed", _deepspeed_config(stage, persist=not stage_arg.endswith("-nopersist"))]
    script, cfg, model = parse_recipe("care", argv)
    trainer = build_trainer("care", script, cfg, model)
    accelerator = trainer.accelerator
    rank = accelerator.process_index

    # 1. The reward step on fixed completions.
    trainer.model.train()
    row = trainer.train_dataset[0]
    right = row["answer_letter"]
    wrong = next(k for k in json.loads(row["options"]) if k != right)
    tok = trainer.processing_class.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    texts = [ANSWERS[i].format(right=right, wrong=wrong) for i in range(rank * per_device, (rank + 1) * per_device)]
    prompts = [prepare_multimodal_messages(row["prompt"], images=[row["image"]]) for _ in texts]
    inputs = [dict(row) for _ in texts]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [end] for t in texts]
    rewards = trainer._calculate_rewards(inputs, prompts, completions, ids)  # gathered over processes
    forwards_after_rewards = gather_object([trainer.care_reference_forwards])

    # 2. Two optimizer steps; the full policy recorded after each (the EMA update leaves the policy as it is).
    policies: list[dict] = []

    class RecordPolicy(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            policies.append(_gathered(accelerator.unwrap_model(trainer.model)))

    trainer.add_callback(RecordPolicy())
    reference_before = _gathered(accelerator.unwrap_model(trainer.care_ref_model))
    trainer.train()
    reference_after = _gathered(accelerator.unwrap_model(trainer.care_ref_model))
    forwards_after_training = gather_object([trainer.care_reference_forwards])

    decay = cfg.care_ema_decay
    exact = {n: t.clone() for n, t in reference_before.items()}
    for policy in policies:
        for n in exact:
            exact[n] = decay * exact[n] + (1 - decay) * policy[n]
    ema_error = max((reference_after[n] - exact[n]).abs().max().item() for n in exact)
    moved = max((policies[-1][n] - reference_before[n]).abs().max().item() for n in exact)
    reference_moved = max((reference_after[n] - reference_before[n]).abs().max().item() for n in exact)

    if accelerator.is_main_process:
        import torch

        checkpoint = Path(cfg.output_dir) / "checkpoint-2"
        ema_files = sorted(p.name for p in checkpoint.glob("care_ema*.pt"))
        shards = {}
        if stage == 3:
            states = [torch.load(checkpoint / f"care_ema_rank{k}.pt", weights_only=True) for k in range(world)]
            names = states[0]["names"]
            # Each rank's shard of each parameter, in rank order, is the parameter's flat data (+ padding).
            reassembled_error = max(
                (
                    torch.cat([s["shadow"][i].flatten().double() for s in states])[: reference_after[n].numel()]
                    - reference_after[n].flatten()
                ).abs().max().item()
                for i, n in enumerate(names)
            )
            shards = {
                "numel_per_rank": [sum(t.numel() for t in s["shadow"]) for s in states],
                "updates_per_rank": [s["updates"] for s in states],
                "reassembled_error": reassembled_error,
                "full_numel": sum(t.numel() for t in reference_after.values()),
            }
        else:
            state = torch.load(checkpoint / "care_ema.pt", weights_only=True)
            numel = sum(t.numel() for t in state["shadow"])
            shards = {"updates_per_rank": [state["updates"]], "numel_per_rank": [numel]}
        import torch.distributed as dist

        Path(out_path).write_text(
            json.dumps(
                {
                    "world": world,
                    "stage": stage,
                    "backend": dist.get_backend() if dist.is_initialized() else None,
                    "distributed_type": str(accelerator.distributed_type),
                    "names": trainer.reward_func_names,
                    "rewards": rewards.tolist(),
                    "forwards_after_rewards": forwards_after_rewards,
                    "forwards_after_training": forwards_after_training,
                    "steps": trainer.state.global_step,
                    "ema_updates": trainer.care_ema_updates,
                    "ema_error_vs_exact": ema_error,
                    "policy_moved": moved,
                    "reference_moved": reference_moved,
                    "ema_files": ema_files,
                    "shards": shards,
                    "model_saved": (checkpoint / "model.safetensors").is_file(),
                }
            )
        )
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:4])
