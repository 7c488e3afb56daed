"""Subcommands of `medbridge`: `leaderboard ingest`, `leaderboard build`, `recipe`, `probe`.

Wire them in with ``medbridge.leaderboard.cli.add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medbridge.harness_ext.errors import MedbridgeError

from medbridge.cli_args import add_flag, int_range

STORE_HELP = "leaderboard store (SQLite; default: $MEDBRIDGE_LEADERBOARD or ./medbridge_leaderboard/leaderboard.sqlite)"


def _user_error(err: BaseException) -> MedbridgeError:
    """A command's expected failure (unknown name, unreadable store, bad argument) as the one user
    error type: the medbridge command prints it as one paragraph and exits 2."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return MedbridgeError(text)


def _store(args: argparse.Namespace) -> Path:
    from medbridge.leaderboard.store import default_store_path

    return Path(args.store) if args.store else default_store_path()


def _cmd_ingest(args: argparse.Namespace) -> int:
    from medbridge.leaderboard.ingest import Ingested, expand_runs, ingest_many
    from medbridge.leaderboard.store import display_path

    store = _store(args)
    paths = expand_runs(args.runs)
    new_runs = 0

    def report(outcome: Ingested) -> None:
        nonlocal new_runs
        new_runs += outcome.added
        print(outcome.message(), file=sys.stderr if outcome.skipped is not None else sys.stdout)

    added, skipped = ingest_many(
        store,
        paths,
        on_run=report,
        model=args.model_name,
        run=args.run_name,
        step=args.step,
        trained_on=args.trained_on,
        base_model=args.base_model,
        allow_partial=args.allow_partial,
    )
    failed = len(skipped)
    stored = len(paths) - failed - new_runs
    print(
        f"store {display_path(store)}: {new_runs} run(s) added with {added} rows; {stored} already in the store; "
        f"{failed} skipped"
    )
    if failed and failed == len(paths):
        raise MedbridgeError(f"none of the {failed} run(s) could be ingested (reasons above)")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from medbridge.leaderboard.build import build_leaderboard
    from medbridge.leaderboard.store import display_path

    transfer = None
    if args.base or args.rl:
        if not (args.base and args.rl and args.trained_on):
            raise MedbridgeError("--base, --rl and --trained-on go together: give all three or none")
        transfer = [(args.base, args.rl, args.trained_on)]
    store = _store(args)
    if not store.exists():
        print(
            f"no leaderboard store at {display_path(store)}: the page shows the paper's published rows only "
            "(add runs with: medbridge leaderboard ingest RUN_FOLDER, or give --store)"
        )
    try:
        index = build_leaderboard(store, args.out, transfer=transfer)
    except MedbridgeError:
        raise
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _user_error(err) from None
    print(f"leaderboard: {display_path(index)}\nmarkdown:    {display_path(index.with_name('leaderboard.md'))}")
    return 0


def _cmd_recipe(args: argparse.Namespace) -> int:
    from medbridge.leaderboard.verdict import format_verdicts, recipe

    try:
        source, verdicts = recipe(args.target, tau=args.tau, store=_store(args), latest=args.latest)
    except MedbridgeError:
        raise
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise _user_error(err) from None
    print(format_verdicts(source, verdicts, args.tau))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from medbridge.leaderboard.probe import format_results, ingest_probe, run_probe
    from medbridge.tasks.medmnist.data import MedMNISTFileError

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        results = run_probe(
            args.model,
            datasets,
            root=args.root,
            cache=args.cache,
            layer=args.layer,
            batch_size=args.batch_size,
            device=args.device,
        )
    except MedbridgeError:
        raise
    except (FileNotFoundError, KeyError, ValueError, MedMNISTFileError, TypeError) as err:
        raise _user_error(err) from None
    print(format_results(results))
    if not args.no_ingest:
        n = ingest_probe(_store(args), args.model, results, model=args.model_name, layer=args.layer)
        print(f"store {_store(args)}: {n} rows added (Table 1)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `leaderboard {ingest,build}`, `recipe` and `probe` on the medbridge CLI."""
    p = subparsers.add_parser(
        "leaderboard", help="ingest runs into the leaderboard store; build the tables, figures and HTML page"
    )
    sub = p.add_subparsers(dest="leaderboard_command", required=True)

    q = sub.add_parser("ingest", help="add lmms-eval runs (--output_path folders with --log_samples) to the store")
    q.add_argument("runs", nargs="+", help="lmms-eval output folders or *_results.json files")
    q.add_argument("--store", help=STORE_HELP)
    q.add_argument("--model-name", help="model name to show (default: from the results file)")
    q.add_argument("--run-name", help="training run the checkpoint belongs to")
    q.add_argument("--step", type=int_range(0, 2**63 - 1),
                   help="training step of the checkpoint (default: from a checkpoint-N path)")
    q.add_argument("--trained-on", help="dataset the model was trained on (e.g. organa), for the RQ3 transfer table")
    q.add_argument("--base-model", help="model the training started from (its own evaluation is the RQ3 baseline)")
    q.add_argument(
        "--allow-partial",
        action="store_true",
        help="ingest a run with failed requests (those items are left out and the row is marked partial)",
    )
    q.set_defaults(func=_cmd_ingest)

    q = sub.add_parser("build", help="write leaderboard.md, index.html and the PNG figures")
    q.add_argument("--store", help=STORE_HELP)
    q.add_argument(
        "--out", default="medbridge_leaderboard/site", help="output folder (default: medbridge_leaderboard/site)"
    )
    q.add_argument("--base", help="RQ3 transfer table: base model (name, run or label)")
    q.add_argument("--rl", help="RQ3 transfer table: RL-trained model (name, run or label; last step)")
    q.add_argument("--trained-on", help="RQ3 transfer table: the dataset the RL model was trained on (e.g. organa)")
    q.set_defaults(func=_cmd_build)

    p = subparsers.add_parser(
        "recipe",
        help="per task: Pass@K, Acc@1, gap and the boundary-aware verdict (bridge with SFT or sharpen with RL)",
    )
    p.add_argument("target", help="an lmms-eval output folder / results JSON, or a model or run name in the store")
    p.add_argument("--tau", type=float, default=0.5, help="reliability threshold on support Pass@16 (default 0.5)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--latest", action="store_true",
                   help="read the newest run of a folder that holds several (default: refuse and list them)")
    p.set_defaults(func=_cmd_recipe)

    p = subparsers.add_parser("probe", help="linear probe of a VLM's frozen vision tower on MedMNIST (Table 1)")
    p.add_argument(
        "--model", required=True, help="local Hugging Face model folder (Qwen2.5-VL or a VLM with get_image_features)"
    )
    p.add_argument("--datasets", required=True, help="comma-separated MedMNIST names, e.g. breast,organa,blood")
    p.add_argument("--root", help="MedMNIST data root (default: $MEDBRIDGE_MEDMNIST_ROOT or ~/.medmnist)")
    p.add_argument("--cache", help="feature cache folder (default: next to the store, probe_cache/)")
    p.add_argument(
        "--layer",
        choices=("merger", "tower"),
        default="merger",
        help="features after the patch merger (default) or of the last vision block",
    )
    add_flag(p, "--batch_size", "--batch-size", type=int_range(1, 4096), default=32, help="images per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-name", help="name to show on the leaderboard (default: the folder name)")
    p.add_argument("--store", help=STORE_HELP)
    p.add_argument("--no-ingest", action="store_true", help="print the accuracies without writing them to the store")
    p.set_defaults(func=_cmd_probe)
