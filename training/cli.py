"""`medbridge` subcommands of the training package.

    medbridge train grpo|care|sft --config training/recipes/X.yaml [--flag value ...]
    medbridge train evaluate runs/x [--retry-failed]
    medbridge eval-checkpoint PATH --tasks medmnist_mcq_organa [--store STORE --run-name NAME --step N]
    medbridge data build-medmnist-train --names organamnist --out data/organa_train
    medbridge data build-pmc-vqa --csv PMC-VQA/train.csv --images PMC-VQA/images --out data/pmc_vqa_8k

``add_parser(subparsers)`` registers them; the ``data`` builders join an existing ``data`` command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.subsets import parse_size

from medbridge.cli_args import add_flag, int_range

__all__ = ["add_parser"]


def _require_training_extra() -> None:
    """``medbridge train`` needs TRL (the ``training`` extra); say so instead of failing on an import."""
    try:
        import trl  # noqa: F401
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in ("trl", "peft", "accelerate"):
            raise
        raise MedbridgeError(
            f"medbridge train needs the training extra, which is not installed here (no module {err.name!r}): "
            "pip install 'medbridge[training]' (TRL and PEFT; add 'medbridge[deepspeed]' for the ZeRO configs)"
        ) from None


def _cmd_train(args: argparse.Namespace) -> int:
    argv = list(args.recipe_args or [])
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.trainer == "evaluate":
        return _cmd_train_evaluate(argv)
    _require_training_extra()
    if "-h" in argv or "--help" in argv:
        from medbridge.training.configs import print_recipe_help

        print_recipe_help(args.trainer)  # every recipe field with its default and help, --config first
        return 0
    if "--config" not in argv:
        print(
            "error: medbridge train needs --config RECIPE.yaml (see `medbridge train "
            f"{args.trainer} --help` for every recipe field)",
            file=sys.stderr,
        )
        return 2
    from medbridge.training.evaluations import finish_run

    if args.trainer == "sft":
        from medbridge.training.sft import run_sft

        trainer = run_sft(argv)
    else:
        from medbridge.training.grpo import run_training

        trainer = run_training(args.trainer, argv)
    # Says where the model went, then the staged checkpoints are evaluated in a fresh process (exec).
    finish_run(trainer)
    return 0


def _cmd_train_evaluate(argv: list[str]) -> int:
    """``medbridge train evaluate OUTPUT_DIR [--retry-failed]``: a run's checkpoints still to evaluate."""
    if "-h" in argv or "--help" in argv or len(argv) not in (1, 2) or argv[1:] not in ([], ["--retry-failed"]):
        print(
            "usage: medbridge train evaluate OUTPUT_DIR [--retry-failed]\n\n"
            "Evaluate the staged checkpoints of a training run (OUTPUT_DIR/evaluations/staged) that have no record\n"
            "in OUTPUT_DIR/evaluations/evaluations.jsonl yet, with the run's own lmms-eval settings and leaderboard\n"
            "store (evaluations/plan.json). --retry-failed also redoes those whose evaluation failed.",
            file=sys.stderr if not ("-h" in argv or "--help" in argv) else sys.stdout,
        )
        return 0 if ("-h" in argv or "--help" in argv) else 2
    from medbridge.training.evaluations import evaluate_pending

    records = evaluate_pending(argv[0], retry_failed=argv[1:] == ["--retry-failed"])
    return 1 if any("error" in r for r in records) else 0


def _cmd_eval_checkpoint(args: argparse.Namespace) -> int:
    from medbridge.training.callbacks import (
        CheckpointEvalError,
        EvalSettings,
        evaluate_checkpoint,
        ingest_into_leaderboard,
    )

    checkpoint = Path(args.path).resolve()
    if not (checkpoint / "config.json").is_file():
        print(f"error: {checkpoint} is not a model checkpoint (no config.json)", file=sys.stderr)
        return 2
    tasks = [t for group in args.tasks for t in group.split(",") if t]
    settings = EvalSettings(
        tasks=tasks,
        model=args.model,
        model_args=args.model_args,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
        limit=args.limit,
        gen_kwargs=args.gen_kwargs,
        batch_size=args.batch_size,
    )
    output = Path(args.output_path) if args.output_path else checkpoint / "medbridge_eval"
    try:
        results = evaluate_checkpoint(checkpoint, settings, output)
    except CheckpointEvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"results: {results}")
    if args.store:
        store = Path(args.store).resolve()
        rows = ingest_into_leaderboard(store, results, model=args.model_name, run=args.run_name, step=args.step)
        tag = "".join(f", {k} {v}" for k, v in (("run", args.run_name), ("step", args.step)) if v is not None)
        print(f"leaderboard {store}: {rows} row(s) added{tag}")
    else:
        print("leaderboard: not added (pass --store STORE [--run-name NAME --step N] to add these results)")
    return 0


def _per_class(value: str) -> int | str:
    try:
        n = parse_size(value, name="--per-class", what="--per-class", full_word="all")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return "all" if n is None else n


def _load_callable(spec: str):
    module, _, name = spec.partition(":")
    if not module or not name:
        raise SystemExit(f"--classifier must look like package.module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def _cmd_build_medmnist(args: argparse.Namespace) -> int:
    from medbridge.tasks.medmnist.catalog import get_set
    from medbridge.training.data import medmnist_dataset

    for name in args.names:
        try:
            get_set(name)
        except KeyError as err:
            raise MedbridgeError(f"--names: {err.args[0]}") from None
    ds = medmnist_dataset(
        args.names,
        split=args.split,
        root=args.root,
        per_class=args.per_class,
        seed=args.seed,
        max_samples=args.max_samples,
        sft=args.sft,
    )
    out = Path(args.out)
    ds.save_to_disk(str(out))
    counts: dict[str, int] = {}
    for name in ds["dataset"]:
        counts[name] = counts.get(name, 0) + 1
    manifest = {
        "source": "medmnist",
        "names": args.names,
        "split": args.split,
        "per_class": args.per_class,
        "seed": args.seed,
        "size": len(ds),
        "counts_per_dataset": counts,
        "format": "sft" if args.sft else "grpo",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(ds)} rows -> {out}")
    return 0


def _modality_classifier(spec: str):
    """``judge`` (the paper's: the LLM judge), ``keyword`` (the fallback, only when asked for), or
    ``package.module:function`` taking (questions, image paths or None) and returning one label each."""
    from medbridge.training import data

    if spec == "judge":
        return data.judge_modalities, "judge"
    if spec == "keyword":
        return data.keyword_modalities, "keyword-fallback"
    return _load_callable(spec), spec


def _cmd_build_pmc_vqa(args: argparse.Namespace) -> int:
    from medbridge.training.data import build_pmc_vqa_subset

    classify, labeler = _modality_classifier(args.classifier)
    if labeler == "keyword-fallback":
        print("modality labels from the KEYWORD FALLBACK (recorded in the manifest), not the judge", file=sys.stderr)
    manifest = build_pmc_vqa_subset(
        args.csv,
        args.out,
        classify=classify,
        labeler=labeler,
        size=args.size,
        seed=args.seed,
        image_dir=args.images,
        cache_path=args.cache,
        with_images=args.with_images,
        sft=args.sft,
        retries=args.retries,
        max_failed_share=args.max_failed_share,
    )
    print(
        json.dumps(
            {"counts_per_modality": manifest["counts_per_modality"], "label_validation": manifest["label_validation"]},
            indent=2,
        )
    )
    if manifest["label_validation"]["failed"]:
        print(
            f"warning: {manifest['label_validation']['failed']} question(s) got no usable label from the classifier "
            "and were left out; run the same command again to ask for them again",
            file=sys.stderr,
        )
    print(f"{manifest['size']} rows -> {args.out}")
    return 0


def _data_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-command group of an existing ``data`` command, or a new ``data`` command."""
    existing = subparsers.choices.get("data")
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
    parser = existing or subparsers.add_parser("data", help="build datasets")
    return parser.add_subparsers(dest="dataset", required=True)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a recipe: GRPO, GRPO-CARE or the SFT bridge (TRL); `train evaluate OUTPUT_DIR` runs a "
        "run's checkpoint evaluations still to do",
        usage="medbridge train {grpo,care,sft} --config RECIPE.yaml [--field value ...]\n"
        "       medbridge train {grpo,care,sft} --help      (every recipe field)\n"
        "       medbridge train evaluate OUTPUT_DIR [--retry-failed]",
    )
    p.add_argument("trainer", choices=["grpo", "care", "sft", "evaluate"])
    # Everything after the trainer goes to TRL's parser: --config RECIPE.yaml, then flags that override it.
    p.add_argument(
        "recipe_args",
        nargs=argparse.REMAINDER,
        metavar="--config RECIPE.yaml [--flag value ...]",
        help="recipe (training/recipes/*.yaml) and overrides, e.g. --learning_rate 1e-6 --output_dir runs/x",
    )
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser(
        "eval-checkpoint", help="evaluate a checkpoint with lmms-eval and optionally add it to the leaderboard"
    )
    p.add_argument("path", help="checkpoint folder (config.json, weights, processor)")
    p.add_argument("--tasks", nargs="+", required=True, help="lmms-eval tasks or groups (space or comma separated)")
    p.add_argument("--model", default="qwen2_5_vl", help="lmms-eval --model")
    # Flags lmms-eval also has are spelled as lmms-eval spells them; the old spellings stay as hidden aliases.
    add_flag(
        p, "--model_args", "--model-args",
        default="pretrained={checkpoint},max_pixels={max_pixels},min_pixels={min_pixels},attn_implementation=sdpa",
        help="lmms-eval --model_args template; {checkpoint}, {max_pixels}, {min_pixels} are filled in",
    )
    p.add_argument("--max-pixels", type=int_range(1), default=802816)
    p.add_argument("--min-pixels", type=int_range(1), default=3136)
    p.add_argument("--limit", type=int_range(1))
    add_flag(p, "--gen_kwargs", "--gen-kwargs", help="lmms-eval --gen_kwargs, e.g. max_new_tokens=512")
    add_flag(p, "--batch_size", "--batch-size", type=int_range(1, 4096), default=1, help="lmms-eval --batch_size")
    add_flag(p, "--output_path", "--output", help="lmms-eval --output_path (default: PATH/medbridge_eval)")
    add_flag(p, "--store", "--leaderboard", help="leaderboard store to add the results to (default: not added)")
    p.add_argument("--model-name", help="model name on the leaderboard (default: from the checkpoint)")
    add_flag(p, "--run-name", "--run", help="run name on the leaderboard")
    p.add_argument("--step", type=int_range(0, 2**63 - 1), help="training step on the leaderboard")
    p.set_defaults(func=_cmd_eval_checkpoint)

    dsub = _data_subparsers(subparsers)
    q = dsub.add_parser(
        "build-medmnist-train", help="MedMNIST train split -> MCQ training rows (the evaluation's prompts)"
    )
    q.add_argument("--names", nargs="+", required=True, help="MedMNIST sets, e.g. organamnist pathmnist octmnist")
    q.add_argument("--out", required=True, help="folder for datasets.save_to_disk")
    q.add_argument("--split", default="train")
    q.add_argument("--root", help="MedMNIST root (default: $MEDBRIDGE_MEDMNIST_ROOT)")
    q.add_argument("--per-class", type=_per_class, default="all", help="items per class (balanced) or 'all'")
    q.add_argument("--seed", type=int, default=1234)
    q.add_argument("--max-samples", type=int)
    q.add_argument("--sft", action="store_true", help="add <think>/<answer> completions for the SFT bridge")
    q.set_defaults(func=_cmd_build_medmnist)

    q = dsub.add_parser("build-pmc-vqa", help="PMC-VQA train CSV -> modality-balanced subset (8,000 in the paper)")
    q.add_argument(
        "--csv", required=True, help="PMC-VQA train CSV (Figure_path, Question, Answer, Choice A..D, Answer_label)"
    )
    q.add_argument("--images", help="image folder (default: images/ next to the CSV)")
    q.add_argument("--out", required=True, help="folder for datasets.save_to_disk + manifest.json")
    q.add_argument("--size", type=int, default=8000)
    q.add_argument("--seed", type=int, default=1234)
    q.add_argument(
        "--classifier",
        default="judge",
        help="modality classifier: 'judge' (the paper's; needs MEDBRIDGE_JUDGE_BASE_URL/MODEL), 'keyword' (coarse "
        "fallback), or package.module:function(questions, images) -> labels",
    )
    q.add_argument("--with-images", action="store_true", help="send each figure to the classifier with its question")
    q.add_argument("--cache", help="modality label cache JSONL (default: <out>.modality_cache.jsonl); resumable")
    q.add_argument("--sft", action="store_true")
    q.add_argument("--retries", type=int, default=2, help="rounds that ask again for questions left unlabeled")
    q.add_argument(
        "--max-failed-share", type=float,
        help="refuse the build (exit 2) when more than this share of questions has no label after the retries "
        "(default 0.01)",
    )
    q.set_defaults(func=_cmd_build_pmc_vqa)
