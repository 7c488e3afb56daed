"""SFT bridge with TRL's SFTTrainer: the same items as GRPO, answers in <think>/<answer> form.

    medbridge train sft --config training/recipes/<recipe>_sft.yaml

The paper's recipe is "bridge, then sharpen": a short SFT run teaches the output format and label
vocabulary on the training items, and the GRPO / GRPO-CARE recipe then starts from its output_dir.
Rows are prompt-completion pairs (loss on the completion only) with the image in an ``image`` column.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from medbridge.training.callbacks import checkpoint_eval_callback, training_marker_fields, write_training_marker
from medbridge.training.configs import MedScriptArguments, parse_recipe
from medbridge.training.data import load_training_dataset
from medbridge.training.model_utils import policy_init_kwargs, recipe_processor
from medbridge.training.resume import resolve_resume_checkpoint
from medbridge.training.trainers import MedSFTTrainer

__all__ = ["build_sft_trainer", "main", "run_sft"]


def build_sft_trainer(
    script_args: MedScriptArguments, training_args: Any, model_args: Any, callbacks: list | None = None
):
    """A MedSFTTrainer for a parsed SFT recipe (same data, image budget and checkpoint evaluation as GRPO)."""
    from trl import get_peft_config

    if not model_args.model_name_or_path:
        raise ValueError("the recipe must set model_name_or_path")
    dataset = load_training_dataset(script_args, sft=True)
    processor = recipe_processor(model_args, training_args)
    processor.tokenizer.padding_side = "right"  # teacher forcing pads on the right
    # The recipe's model_init_kwargs go through the same fp32-master rule (they cannot undo it).
    training_args.model_init_kwargs = policy_init_kwargs(model_args, training_args, training_args.model_init_kwargs)
    callbacks = list(callbacks or [])
    evaluation = checkpoint_eval_callback(script_args, training_args)
    if evaluation is not None:
        callbacks.append(evaluation)
    return MedSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),
    )


def run_sft(argv: list[str] | None = None, *, callbacks: list | None = None):
    """Parse an SFT recipe, train (or resume), save model and processor; return the trainer (checkpoint
    evaluations stay staged, as in :func:`medbridge.training.grpo.run_training`)."""
    script_args, training_args, model_args = parse_recipe("sft", argv)
    # A resume_from_checkpoint that names nothing fails here, before any model is loaded (the trainer checks
    # its own files again when it starts).
    resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    trainer = build_sft_trainer(script_args, training_args, model_args, callbacks=callbacks)
    if trainer.accelerator.is_main_process:
        write_training_marker(
            training_args.output_dir, **training_marker_fields("sft", script_args, training_args, model_args)
        )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        # GRPO recipes start from this folder: it must load with AutoProcessor like a Hub checkpoint.
        trainer.processing_class.save_pretrained(Path(training_args.output_dir))
    return trainer


def main(argv: list[str] | None = None) -> int:
    """``python -m medbridge.training.sft --config RECIPE.yaml [...]`` (what accelerate launches)."""
    from medbridge.training.evaluations import finish_run

    from medbridge.error_handling import run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        finish_run(run_sft(argv))
        return 0

    return run_guarded(run, ["train", "sft", *argv], lambda: "python -m medbridge.training.sft")


if __name__ == "__main__":
    sys.exit(main())
