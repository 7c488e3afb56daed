"""GRPO and GRPO-CARE training entry (open-r1 style).

    medbridge train grpo --config training/recipes/<recipe>.yaml [--flag value ...]
    medbridge train care --config training/recipes/<recipe>.yaml
    accelerate launch --config_file training/accelerate/zero2.yaml -m medbridge.training.grpo care --config ...

The recipe names the data (MedMNIST train split or a saved PMC-VQA subset), the rewards, the image
budget and, optionally, the on-save evaluation that puts every checkpoint on the leaderboard.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from medbridge.leaderboard.store import default_store_path
from medbridge.training.configs import MedScriptArguments, parse_recipe

logger = logging.getLogger(__name__)

__all__ = ["build_trainer", "eval_callback", "load_processor", "main", "model_init_kwargs", "run_training"]


def load_processor(model_name_or_path: str, *, max_pixels: int, min_pixels: int, trust_remote_code: bool = False, revision: str | None = None):
    """The model's processor with one pixel budget for every image (left padding, as GRPO wants).

    A fixed max_pixels keeps the number of image tokens bounded and identical between generation,
    training forward passes, the CARE reference and evaluation (lmms-eval gets the same max_pixels).
    """
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_name_or_path, revision=revision, trust_remote_code=trust_remote_code, padding_side="left", truncation_side="left")
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
        for name, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
            if hasattr(image_processor, name):
                setattr(image_processor, name, value)
        size = getattr(image_processor, "size", None)
        if isinstance(size, dict) and "longest_edge" in size:
            image_processor.size = {**size, "shortest_edge": min_pixels, "longest_edge": max_pixels}
    return processor


def model_init_kwargs(model_args: Any) -> dict[str, Any]:
    """TRL ModelConfig -> from_pretrained kwargs (dtype, attention implementation, revision)."""
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if getattr(model_args, "dtype", None) not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    return kwargs


def eval_callback(script_args: MedScriptArguments, training_args: Any):
    """The on-save evaluation callback a recipe asks for (None when ckpt_eval is off)."""
    if not script_args.ckpt_eval:
        return None
    from medbridge.training.callbacks import CheckpointEvalCallback, EvalSettings

    env = {}
    if script_args.ckpt_eval_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = script_args.ckpt_eval_device
    settings = EvalSettings(
        tasks=list(script_args.ckpt_eval_tasks), model=script_args.ckpt_eval_model,
        model_args=script_args.ckpt_eval_model_args, max_pixels=training_args.max_pixels, min_pixels=training_args.min_pixels,
        limit=script_args.ckpt_eval_limit, gen_kwargs=script_args.ckpt_eval_gen_kwargs,
        batch_size=script_args.ckpt_eval_batch_size, env=env,
    )
    run_name = script_args.leaderboard_run_name or Path(training_args.output_dir).name
    return CheckpointEvalCallback(settings, eval_root=Path(training_args.output_dir) / "evaluations", run_name=run_name, leaderboard_store=script_args.leaderboard_store or default_store_path())


def _marker(kind: str, script_args: MedScriptArguments, training_args: Any, model_args: Any) -> dict[str, Any]:
    trained_on = script_args.dataset_name if script_args.data_source == "disk" else "+".join(script_args.medmnist_datasets) + f"/{script_args.medmnist_split}"
    fields = {
        "trainer": kind,
        "base_model": model_args.model_name_or_path,
        "trained_on": trained_on,
        "run": script_args.leaderboard_run_name or Path(training_args.output_dir).name,
        "learning_rate": training_args.learning_rate,
        "max_pixels": getattr(training_args, "max_pixels", None),
    }
    for name in ("loss_type", "beta", "num_generations", "scale_rewards", "temperature", "reward_names",
                 "care_ema_decay", "care_ema_interval", "care_consistency_clamp", "care_bonus_coef", "care_margin"):
        if hasattr(training_args, name):
            fields[name] = getattr(training_args, name)
    return fields


def build_trainer(kind: str, script_args: MedScriptArguments, training_args: Any, model_args: Any, callbacks: list | None = None):
    """A GRPOTrainer (kind 'grpo') or GRPOCareTrainer (kind 'care') for a parsed recipe."""
    from medbridge.training.care import GRPOCareTrainer
    from medbridge.training.data import load_training_dataset
    from medbridge.training.rewards import get_reward_funcs
    from trl import GRPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError("the recipe must set model_name_or_path")
    processor = load_processor(model_args.model_name_or_path, max_pixels=training_args.max_pixels, min_pixels=training_args.min_pixels,
                               trust_remote_code=getattr(training_args, "trust_remote_code", False), revision=model_args.model_revision)
    training_args.model_init_kwargs = {**model_init_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    dataset = load_training_dataset(script_args)
    trainer_cls = {"grpo": GRPOTrainer, "care": GRPOCareTrainer}[kind]
    extra = {}
    if model_args.use_peft:  # LoRA etc. from the recipe's ModelConfig keys (plain GRPO only)
        if kind == "care":
            raise ValueError("use_peft is not supported with GRPO-CARE (its EMA reference blends full weights)")
        from trl import get_peft_config

        extra["peft_config"] = get_peft_config(model_args)
    callbacks = list(callbacks or [])
    cb = eval_callback(script_args, training_args)
    if cb is not None:
        callbacks.append(cb)
    return trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=get_reward_funcs(training_args.reward_names),
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=callbacks,
        **extra,
    )


def run_training(kind: str, argv: list[str] | None = None, *, callbacks: list | None = None):
    """Parse a recipe (+ overrides), train, save the final model; returns the trainer."""
    from medbridge.training.callbacks import write_training_marker

    script_args, training_args, model_args = parse_recipe(kind, argv)
    trainer = build_trainer(kind, script_args, training_args, model_args, callbacks=callbacks)
    if trainer.accelerator.is_main_process:
        write_training_marker(training_args.output_dir, **_marker(kind, script_args, training_args, model_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("grpo", "care"):
        print("usage: python -m medbridge.training.grpo {grpo,care} --config RECIPE.yaml [--flag value ...]", file=sys.stderr)
        return 2
    run_training(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
