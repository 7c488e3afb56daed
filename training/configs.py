"""Config dataclasses of the medbridge trainers (open-r1 shape: script args + trainer config + model config).

A recipe YAML is parsed the way TRL's scripts parse theirs:
``TrlParser((MedScriptArguments, <trainer config>, ModelConfig)).parse_args_and_config()`` reads
``--config recipe.yaml``, command-line flags override it, and a key that no dataclass knows is an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.training.image_budget import DEFAULT_MIN_PIXELS, PAPER_MAX_PIXELS
from medbridge.training.rewards import REWARDS
from trl import GRPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

__all__ = [
    "TRAINER_CONFIGS",
    "GRPOCareConfig",
    "MedGRPOConfig",
    "MedSFTConfig",
    "MedScriptArguments",
    "parse_recipe",
    "print_recipe_help",
]

@dataclass
class MedScriptArguments(ScriptArguments):
    """Which data to train on and how saved checkpoints are evaluated (shared by every trainer)."""

    data_source: str = field(
        default="medmnist",
        metadata={
            "help": "'medmnist' (build items from the MedMNIST train split), or 'disk' (a dataset saved by "
            "`medbridge data build-pmc-vqa` / `datasets.save_to_disk`, given as dataset_name)."
        },
    )
    medmnist_datasets: list[str] = field(
        default_factory=lambda: ["organa"],
        metadata={"help": "MedMNIST sets (names or flags) whose train split becomes MCQ items."},
    )
    medmnist_root: str | None = field(
        default=None, metadata={"help": "MedMNIST data root (default: $MEDBRIDGE_MEDMNIST_ROOT)."}
    )
    medmnist_split: str = field(default="train", metadata={"help": "MedMNIST split to train on."})
    per_class: int | None = field(
        default=None, metadata={"help": "Items per class (balanced); None = the whole split."}
    )
    sampling_seed: int = field(default=1234, metadata={"help": "Seed of the balanced sampling and shuffling."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cap on training rows after shuffling."})
    leaderboard_run_name: str | None = field(
        default=None, metadata={"help": "Run name on the leaderboard (default: the output_dir's name)."}
    )
    ckpt_eval: bool = field(default=False, metadata={"help": "Evaluate every saved checkpoint with lmms-eval."})
    ckpt_eval_tasks: list[str] = field(
        default_factory=lambda: ["medmnist_mcq_organa"], metadata={"help": "lmms-eval tasks run on each checkpoint."}
    )
    ckpt_eval_model: str = field(default="qwen2_5_vl", metadata={"help": "lmms-eval --model of the checkpoint."})
    ckpt_eval_model_args: str = field(
        default="pretrained={checkpoint},max_pixels={max_pixels},min_pixels={min_pixels},attn_implementation=sdpa",
        metadata={
            "help": "lmms-eval --model_args template; {checkpoint}, {max_pixels}, {min_pixels} are filled in "
            "from the recipe, so evaluation sees images exactly as training did."
        },
    )
    ckpt_eval_limit: int | None = field(default=None, metadata={"help": "lmms-eval --limit (items per task)."})
    ckpt_eval_gen_kwargs: str | None = field(
        default=None, metadata={"help": "lmms-eval --gen_kwargs, e.g. max_new_tokens=1024."}
    )
    ckpt_eval_batch_size: int = field(default=1, metadata={"help": "lmms-eval --batch_size."})
    ckpt_eval_device: str | None = field(
        default=None,
        metadata={
            "help": "CUDA_VISIBLE_DEVICES of the evaluation process, a GPU training does not use: "
            "evaluations then run during training. Unset: they run after training, never on a training GPU."
        },
    )
    leaderboard_store: str | None = field(
        default=None,
        metadata={
            "help": "Leaderboard store that each evaluated checkpoint is appended to "
            "(default: the leaderboard's own, $MEDBRIDGE_LEADERBOARD or ./medbridge_leaderboard/leaderboard.sqlite)."
        },
    )


@dataclass
class _PixelBudget:
    max_pixels: int = field(
        default=PAPER_MAX_PIXELS,
        metadata={"help": "Every image is resized to at most this many pixels (the processor's longest_edge)."},
    )
    min_pixels: int = field(default=DEFAULT_MIN_PIXELS, metadata={"help": "Lower pixel bound of the processor."})


def _activation_checkpointing_name(config: object) -> None:
    """TRL 1.16's configs default ``gradient_checkpointing=True``, a name transformers >= 5.2x deprecates
    (``activation_checkpointing``) with a FutureWarning on every run; move the value to the new name when
    this transformers has it (older ones keep reading the old name)."""
    for old, new in (
        ("gradient_checkpointing", "activation_checkpointing"),
        ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
    ):
        if hasattr(config, new) and getattr(config, new) is None and getattr(config, old, None) is not None:
            setattr(config, new, getattr(config, old))


@dataclass
class MedGRPOConfig(GRPOConfig, _PixelBudget):
    """GRPOConfig with the image budget and the reward list; loss type set to plain GRPO on purpose.

    TRL's default loss_type is 'dapo' (token-level normalisation over the global batch); the paper and
    GRPO-CARE use per-sequence normalisation, which TRL calls 'grpo'. Recipes state it explicitly.
    """

    loss_type: str = field(default="grpo", metadata={"help": "TRL loss formulation; 'grpo' = the paper's."})
    max_grad_norm: float = field(
        default=5.0, metadata={"help": "Gradient clipping; 5 as in GRPO-CARE's official scripts (TRL: 1)."}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay; 0.01 as in GRPO-CARE's official scripts (TRL: 0)."}
    )
    reward_names: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={
            "help": f"Reward functions: {', '.join(repr(name) for name in REWARDS)} "
            "(medbridge.training.rewards.REWARDS) or package.module:function."
        },
    )

    def __post_init__(self):
        _activation_checkpointing_name(self)
        super().__post_init__()


@dataclass
class GRPOCareConfig(MedGRPOConfig):
    """GRPO-CARE: consistency bonus from an EMA reference model (defaults from its paper and scripts)."""

    beta: float = field(default=0.0, metadata={"help": "KL weight; GRPO-CARE trains without a KL term."})
    care_ema_decay: float = field(default=0.995, metadata={"help": "ref <- decay * ref + (1 - decay) * policy."})
    care_ema_interval: int = field(default=10, metadata={"help": "Optimizer steps between EMA updates."})
    care_ema_offload: bool = field(
        default=False,
        metadata={
            "help": "Keep the fp32 EMA average in CPU memory (saves 4 bytes per parameter of GPU memory; "
            "a host round trip every care_ema_interval steps)."
        },
    )
    care_consistency_clamp: float = field(default=0.95, metadata={"help": "Upper clamp of the consistency c."})
    care_bonus_coef: float = field(default=0.5, metadata={"help": "Bonus = coef * accuracy for consistent answers."})
    care_margin: float = field(
        default=0.0, metadata={"help": "Consistent when c >= mean c of accurate answers - margin."}
    )
    care_accuracy_threshold: float = field(
        default=0.1, metadata={"help": "Accurate when accuracy > this and >= group mean."}
    )
    care_accuracy_reward: str = field(default="accuracy", metadata={"help": "Name of the reward the bonus scales."})

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.care_ema_decay <= 1.0:
            raise ValueError(f"care_ema_decay must be in [0, 1], got {self.care_ema_decay}")
        if self.care_ema_interval < 1:
            raise ValueError(f"care_ema_interval must be >= 1, got {self.care_ema_interval}")
        if self.care_accuracy_reward not in self.reward_names:
            raise ValueError(
                f"care_accuracy_reward {self.care_accuracy_reward!r} is not among reward_names {self.reward_names}"
            )


@dataclass
class MedSFTConfig(SFTConfig, _PixelBudget):
    """SFTConfig for the bridge: the same images and prompts, answers in <think>/<answer> form."""

    def __post_init__(self):
        _activation_checkpointing_name(self)
        super().__post_init__()


TRAINER_CONFIGS = {"grpo": MedGRPOConfig, "care": GRPOCareConfig, "sft": MedSFTConfig}


def parse_recipe(
    kind: str, argv: list[str] | None = None, *, prog: str | None = None
) -> tuple[MedScriptArguments, object, ModelConfig]:
    """``--config recipe.yaml [--flag value ...]`` -> (script args, trainer config, model config).

    Unknown keys in the YAML or on the command line raise (TrlParser / argparse)."""
    if kind not in TRAINER_CONFIGS:
        raise ValueError(f"unknown trainer {kind!r}; expected one of {sorted(TRAINER_CONFIGS)}")
    classes = (MedScriptArguments, TRAINER_CONFIGS[kind], ModelConfig)
    _check_recipe_file(argv, classes)
    parser = TrlParser(classes, prog=prog or f"medbridge train {kind}")
    return tuple(parser.parse_args_and_config(args=argv))


def print_recipe_help(kind: str, *, prog: str | None = None) -> None:
    """Every recipe field of trainer ``kind`` with its default and help, ``--config`` first."""
    import argparse

    if kind not in TRAINER_CONFIGS:
        raise ValueError(f"unknown trainer {kind!r}; expected one of {sorted(TRAINER_CONFIGS)}")
    prog = prog or f"medbridge train {kind}"
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument(
        "--config",
        metavar="RECIPE.yaml",
        help="the recipe: a YAML mapping of the fields below (training/recipes/*.yaml); flags after it override it",
    )
    parser = TrlParser(
        (MedScriptArguments, TRAINER_CONFIGS[kind], ModelConfig),
        prog=prog,
        usage=f"{prog} --config RECIPE.yaml [--field value ...]",
        description="Train with a recipe. Every field below can be set in the recipe or given as a flag.",
        parents=[recipe],  # before the dataclass fields, so --config is listed first
    )
    parser.print_help()


class RecipeError(MedbridgeError, ValueError):
    """A recipe file that is missing, not a mapping of recipe fields, or names fields that do not exist."""


def _check_recipe_file(argv: list[str] | None, classes: tuple[type, ...]) -> None:
    """Name a recipe file that is missing, not a YAML mapping, or holds unknown keys before TrlParser
    reads it (it would otherwise validate the known fields first, and report e.g. a bf16 error instead)."""
    import dataclasses

    from medbridge.harness_ext.limited_io import CONFIG_LIMIT_BYTES, load_yaml

    args = list(sys.argv[1:] if argv is None else argv)
    paths = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    paths += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    for path in paths:
        # Size-limited and regular files only: `--config /dev/zero` or a FIFO is refused, not read forever.
        recipe = load_yaml(path, what="recipe", limit=CONFIG_LIMIT_BYTES)
        if not isinstance(recipe, dict):
            raise RecipeError(f"recipe {path}: must be a YAML mapping of recipe fields, got {type(recipe).__name__}")
        known = {f.name for cls in classes for f in dataclasses.fields(cls)} | {"env"}  # TrlParser sets env vars
        unknown = sorted(str(k) for k in recipe if k not in known)
        if unknown:
            raise RecipeError(
                f"recipe {path}: unknown key(s) {', '.join(unknown)}; "
                f"`medbridge train <grpo|care|sft> --help` lists the recipe fields"
            )
