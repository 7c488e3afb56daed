"""Worker of tests/test_training_distributed.py: GRPO-CARE's reward step on fixed completions.

    accelerate launch --cpu --num_processes 2 tests/care_gather_worker.py MODEL_DIR OUT.json
    python tests/care_gather_worker.py MODEL_DIR OUT.json          (one process, the reference)

The 8 completions form ONE group of 8 generations; with two processes each holds 4 of them (the group is
split across ranks, as TRL may do). Process k takes completions [4k, 4k + 4); rank 0's completions mostly
have no answer span, rank 1's all have one, so a data-dependent forward count would differ between ranks.
Writes the gathered reward table and every rank's reference-forward count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "training" / "recipes" / "tiny_cpu_care.yaml"
ANSWERS = [
    "no tags at all",
    "I cannot tell",
    "<think>x</think><answer>{right}</answer>",
    "<think>only reasoning</think>",
    "<think>first look</think><answer>{right}</answer>",
    "<think>a quite different and longer look at it</think><answer>{right}</answer>",
    "<think>x</think><answer>{wrong}</answer>",
    "<think>hmm</think><answer>{right} or {wrong}</answer>",
]


def main(model_dir: str, out_path: str) -> None:
    from accelerate import PartialState
    from accelerate.utils import gather_object
    from medbridge.training.configs import parse_recipe
    from medbridge.training.grpo import build_trainer
    from trl.data_utils import prepare_multimodal_messages

    state = PartialState(cpu=True)  # gloo on the CPU; the trainer (use_cpu) joins the same state
    world, rank = state.num_processes, state.process_index
    per_device = len(ANSWERS) // world
    script, cfg, model = parse_recipe(
        "care",
        [
            "--config",
            str(RECIPE),
            "--model_name_or_path",
            model_dir,
            "--output_dir",
            str(Path(out_path).parent / f"run{world}"),
            "--ckpt_eval",
            "false",
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--num_generations",
            str(len(ANSWERS)),
            "--per_device_train_batch_size",
            str(per_device),
        ],
    )
    trainer = build_trainer("care", script, cfg, model)
    trainer.model.train()

    row = trainer.train_dataset[0]
    right = row["answer_letter"]
    wrong = next(k for k in json.loads(row["options"]) if k != right)
    mine = range(rank * per_device, (rank + 1) * per_device)
    tok = trainer.processing_class.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    texts = [ANSWERS[i].format(right=right, wrong=wrong) for i in mine]
    prompts = [prepare_multimodal_messages(row["prompt"], images=[row["image"]]) for _ in texts]
    inputs = [dict(row) for _ in texts]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [end] for t in texts]

    rewards = trainer._calculate_rewards(inputs, prompts, completions, ids)  # gathered over processes
    forwards = gather_object([trainer.care_reference_forwards])
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_initialized() else None
    if state.is_main_process:
        Path(out_path).write_text(
            json.dumps(
                {
                    "world": world,
                    "names": trainer.reward_func_names,
                    "rewards": rewards.tolist(),
                    "forwards_per_rank": forwards,
                    "backend": backend,
                }
            )
        )
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
