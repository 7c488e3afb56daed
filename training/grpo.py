"""GRPO and GRPO-CARE training entry (open-r1's shape: parser, dataset, model, rewards, callbacks, train).

    medbridge train grpo --config training/recipes/<recipe>.yaml [--flag value ...]
    medbridge train care --config training/recipes/<recipe>.yaml
    accelerate launch --config_file training/accelerate/zero2.yaml -m medbridge.training.grpo care --config ...

The recipe names the data (MedMNIST train split or a saved PMC-VQA subset), the rewards, the image
budget and, optionally, the evaluation that puts every checkpoint on the leaderboard.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from medbridge.training.callbacks import checkpoint_eval_callback, training_marker_fields, write_training_marker
from medbridge.training.configs import MedScriptArguments, parse_recipe
from medbridge.training.data import load_training_dataset
from medbridge.training.model_utils import policy_init_kwargs, recipe_processor
from medbridge.training.resume import resolve_resume_checkpoint
from medbridge.training.rewards import get_reward_funcs

logger = logging.getLogger(__name__)

__all__ = ["build_trainer", "main", "run_training"]


def build_trainer(
    kind: str, script_args: MedScriptArguments, training_args: Any, model_args: Any, callbacks: list | None = None
):
    """A MedGRPOTrainer (kind 'grpo') or GRPOCareTrainer (kind 'care') for a parsed recipe."""
    from medbridge.training.care import GRPOCareTrainer
    from medbridge.training.trainers import MedGRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("the recipe must set model_name_or_path")

    # Dataset: the evaluation's own items (MedMNIST train split) or a saved PMC-VQA subset.
    dataset = load_training_dataset(script_args)

    # Model and processor: one image budget; fp32 master weights outside DeepSpeed.
    processor = recipe_processor(model_args, training_args)
    # The recipe's model_init_kwargs go through the same fp32-master rule (they cannot undo it).
    training_args.model_init_kwargs = policy_init_kwargs(model_args, training_args, training_args.model_init_kwargs)
    extra: dict[str, Any] = {}
    if model_args.use_peft:  # LoRA etc. from the recipe's ModelConfig keys (plain GRPO only)
        if kind == "care":
            raise ValueError("use_peft is not supported with GRPO-CARE (its EMA reference blends full weights)")
        from trl import get_peft_config

        extra["peft_config"] = get_peft_config(model_args)

    # Rewards: the evaluation's extractor and format check (CARE adds its bonus column itself).
    reward_funcs = get_reward_funcs(training_args.reward_names)

    # Callbacks: the caller's, then checkpoint evaluation when the recipe asks for it.
    callbacks = list(callbacks or [])
    evaluation = checkpoint_eval_callback(script_args, training_args)
    if evaluation is not None:
        callbacks.append(evaluation)

    trainer_cls = {"grpo": MedGRPOTrainer, "care": GRPOCareTrainer}[kind]
    return trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=callbacks,
        **extra,
    )


def run_training(kind: str, argv: list[str] | None = None, *, callbacks: list | None = None):
    """Parse a recipe (+ overrides), train (or resume), save the final model; return the trainer.

    Checkpoint evaluations stay staged: :func:`medbridge.training.evaluations.finish_run` (the command
    line's end) hands them to a fresh process; from Python, ``evaluations.evaluate_pending(output_dir)``."""
    script_args, training_args, model_args = parse_recipe(kind, argv)
    # A resume_from_checkpoint that names nothing fails here, before any model is loaded (the trainer checks
    # its own files again when it starts).
    resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer = build_trainer(kind, script_args, training_args, model_args, callbacks=callbacks)
    if trainer.accelerator.is_main_process:
        write_training_marker(
            training_args.output_dir, **training_marker_fields(kind, script_args, training_args, model_args)
        )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> int:
    """``python -m medbridge.training.grpo {grpo,care} --config RECIPE.yaml [...]`` (what accelerate launches)."""
    from medbridge.training.evaluations import finish_run

    from medbridge.error_handling import run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("grpo", "care"):
        print(
            "usage: python -m medbridge.training.grpo {grpo,care} --config RECIPE.yaml [--flag value ...]",
            file=sys.stderr,
        )
        return 2

    def run() -> int:
        finish_run(run_training(argv[0], argv[1:]))
        return 0

    return run_guarded(run, ["train", *argv], lambda: f"python -m medbridge.training.grpo {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
