"""The `medbridge` command: our own commands beside `lmms-eval` (which runs the tasks).

Every command runs under one handler (medbridge/error_handling.py): an error the user can fix is one
paragraph and exit code 2, anything else names the log file that holds its traceback.
"""

from __future__ import annotations

import argparse
import sys

from medbridge import __version__
from medbridge.cli_args import SEED_MAX, add_flag, int_range
from medbridge.cli_run import folder_to_write, run_command, stdout_for_the_result_only
from medbridge.tiny_model import add_parser as add_tiny_model_command

# Upper bounds of counts: far above any real use, low enough that a typo cannot exhaust memory.
MAX_PER_CLASS = 1_000
MAX_NEW_TOKENS = 32_768
MAX_BATCH_SIZE = 4_096
MAX_BOOTSTRAP = 100_000  # resamples x items integers are drawn at once


def medmnist_flag(text: str) -> str:
    """An argparse type: a MedMNIST dataset name or flag (e.g. breast, breastmnist) -> its flag."""
    from medbridge.tasks.medmnist.catalog import BY_NAME, get_set

    try:
        return get_set(text).flag
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown MedMNIST dataset {text!r}; known: {', '.join(BY_NAME)}") from None


def _cmd_build_fixtures(args: argparse.Namespace) -> int:
    from medbridge.tasks.medmnist.fixtures import build_all

    root = folder_to_write(args.root, "--root")
    paths = build_all(root, test_per_class=args.test_per_class, train_per_class=args.train_per_class,
                      val_per_class=args.val_per_class, seed=args.seed)
    print(f"wrote {len(paths)} MedMNIST-format files to {root}")
    return 0


def _cmd_data_medmnist(args: argparse.Namespace) -> int:
    from medbridge.medmnist_download import download_medmnist
    from medbridge.tasks.medmnist.catalog import SETS
    from medbridge.tasks.medmnist.data import default_root

    root = folder_to_write(args.root, "--root") if args.root else \
        folder_to_write(default_root(), "MEDBRIDGE_MEDMNIST_ROOT")
    flags = args.flags or [s.flag for s in SETS]
    for flag in flags:
        n_images = download_medmnist(flag, root)
        print(f"{flag}: ok ({n_images} test images) in {root}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from medbridge.models import registered_models

    for model in registered_models():
        print(f"{model.model_id}\t{model.class_path}\t{model.kind}")
    print("\nUse them as: lmms-eval --model <name> ... (`lmms-eval models` in lmms-eval 0.7.3 lists built-ins only)")
    return 0


def _cmd_report(args: argparse.Namespace, rescore: bool = False) -> int:
    from medbridge.harness_ext.report import report_command

    return report_command(
        args.run, rescore=rescore, json_out=args.json, iters=args.bootstrap, allow_partial=args.allow_partial,
        latest=args.latest,
    )


def _cmd_tasks_path(args: argparse.Namespace) -> int:
    with stdout_for_the_result_only():
        from medbridge.harness_ext.plugin import TASKS_DIR

    print(TASKS_DIR)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medbridge.demo import run_demo

    return run_demo(folder_to_write(args.out, "--out"), max_new_tokens=args.max_new_tokens,
                    test_per_class=args.test_per_class, batch_size=args.batch_size)


def version_text() -> str:
    """What `medbridge --version` prints: ours, and the lmms-eval and Python it runs with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lmms_eval = version("lmms-eval")
    except PackageNotFoundError:
        lmms_eval = "not installed"
    return f"medbridge {__version__} (lmms-eval {lmms_eval}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medbridge",
                                     description="medbridge: medical VLM evaluation (Acc@1, Pass@K) on lmms-eval")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline demo: fixtures + tiny model through the real lmms-eval CLI")
    p.add_argument("--out", default="demo_out",
                   help="folder for fixtures, model, results, leaderboard (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int_range(1, MAX_NEW_TOKENS), default=24,
                   help="tokens per response (default: %(default)s)")
    p.add_argument("--test-per-class", type=int_range(1, MAX_PER_CLASS), default=1,
                   help="fixture test images per class (default: %(default)s)")
    add_flag(p, "--batch_size", "--batch-size", type=int_range(1, MAX_BATCH_SIZE), default=16,
             help="lmms-eval --batch_size (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("tasks-path", help="print the folder of medbridge's lmms-eval task YAMLs (for --include_path)")
    p.set_defaults(func=_cmd_tasks_path)

    p = sub.add_parser("build-fixtures", help="write small MedMNIST-format npz files")
    p.add_argument("--root", required=True, help="folder for the {flag}_224.npz files")
    for split, default in (("test", 2), ("train", 4), ("val", 2)):
        p.add_argument(f"--{split}-per-class", type=int_range(1, MAX_PER_CLASS), default=default,
                       help="images per class (default: %(default)s)")
    p.add_argument("--seed", type=int_range(0, SEED_MAX), default=0, help="pixel-noise seed (default: %(default)s)")
    p.set_defaults(func=_cmd_build_fixtures)

    add_tiny_model_command(sub)  # build-tiny-model (also `python -m medbridge.tiny_model`)

    p = sub.add_parser("data", help="fetch datasets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    q = dsub.add_parser("medmnist", help="download MedMNIST-v2 224x224 files (MD5-checked by medmnist)")
    q.add_argument("--flags", nargs="*", type=medmnist_flag, help="e.g. breastmnist pathmnist (default: all twelve)")
    q.add_argument("--root", help="data root (default: $MEDBRIDGE_MEDMNIST_ROOT or ~/.medmnist)")
    q.set_defaults(func=_cmd_data_medmnist)

    p = sub.add_parser("models", help="list the lmms-eval model backends medbridge registers (for --model)")
    p.set_defaults(func=_cmd_models)

    from medbridge.leaderboard.cli import add_parser as add_leaderboard_parsers

    add_leaderboard_parsers(sub)  # leaderboard ingest|build, recipe, probe

    for name, rescore, text in (("report", False, "summarise a run: Acc@1, Pass@K, gap with 95%% CIs"),
                                ("rescore", True, "re-score a run's logged generations without generating again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="lmms-eval --output_path folder (holding one run) or a *_results.json file")
        p.add_argument("--latest", action="store_true",
                       help="read the newest run of a folder that holds several (default: refuse and list them)")
        p.add_argument("--json", help="where to write the summary JSON")
        p.add_argument("--bootstrap", type=int_range(1, MAX_BOOTSTRAP), default=2000,
                       help="bootstrap resamples for the CIs (default: %(default)s)")
        p.add_argument("--allow-partial", action="store_true",
                       help="score a run with failed requests or judge verdicts, or tasks without numbers (those "
                            "items and tasks are left out, counted, and the run is marked partial)")
        p.set_defaults(func=lambda a, r=rescore: _cmd_report(a, rescore=r))

    from medbridge.judges.cli import add_parser as add_judge_commands

    add_judge_commands(sub)  # judge serve|check

    from medbridge.training.cli import add_parser as add_training_commands

    add_training_commands(sub)  # train, eval-checkpoint, data build-medmnist-train|build-pmc-vqa
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. argparse's own exits (a usage error: 2, --help: 0) leave as SystemExit."""
    return run_command(build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
