"""The `medbridge` command: our own commands beside `lmms-eval` (which runs the tasks)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_build_fixtures(args: argparse.Namespace) -> int:
    from medbridge.tasks.medmnist.fixtures import build_all

    paths = build_all(args.root, test_per_class=args.test_per_class, train_per_class=args.train_per_class, val_per_class=args.val_per_class, seed=args.seed)
    print(f"wrote {len(paths)} MedMNIST-format files to {args.root}")
    return 0


def _cmd_build_tiny_model(args: argparse.Namespace) -> int:
    from medbridge.tiny_model import build_tiny_qwen2_5_vl

    print(build_tiny_qwen2_5_vl(args.out, seed=args.seed, overwrite=args.overwrite))
    return 0


def _cmd_data_medmnist(args: argparse.Namespace) -> int:
    from medbridge.tasks.medmnist.catalog import SETS, get_set
    from medbridge.tasks.medmnist.data import default_root, load_split

    root = Path(args.root) if args.root else default_root()
    flags = [get_set(f).flag for f in args.flags] if args.flags else [s.flag for s in SETS]
    for flag in flags:
        # medmnist downloads {flag}_224.npz and checks its MD5; we then check its layout.
        images, _ = load_split(flag, "test", root, download=True)
        print(f"{flag}: ok ({images.shape[0]} test images) in {root}")
    return 0


def _load_records(run_path: str, rescore: bool) -> tuple[dict, Path]:
    from medbridge.harness_ext.report import load_run, rescore_run

    run = load_run(run_path)
    records = rescore_run(run) if rescore else run.records
    if not records:
        raise SystemExit(f"{run.results_path}: no medbridge sample records found (was --log_samples set?)")
    return records, run.results_path


def _cmd_report(args: argparse.Namespace, rescore: bool = False) -> int:
    from medbridge.harness_ext.report import format_table, groups_for, summarize, write_summary

    records, results_path = _load_records(args.run, rescore)
    summary = summarize(records, groups=groups_for(records), iters=args.bootstrap)
    print(format_table(summary))
    out = Path(args.json) if args.json else results_path.with_name(results_path.name.replace("_results.json", "_medbridge_summary.json" if not rescore else "_medbridge_rescored.json"))
    write_summary(summary, out)
    if rescore:
        samples_out = out.with_suffix(".records.jsonl")
        with samples_out.open("w") as fh:
            for task, recs in records.items():
                for rec in recs:
                    fh.write(json.dumps({"task": task, **rec}) + "\n")
        print(f"re-scored records: {samples_out}")
    print(f"summary: {out}")
    return 0


def _cmd_tasks_path(args: argparse.Namespace) -> int:
    from medbridge.harness_ext.plugin import TASKS_DIR

    print(TASKS_DIR)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medbridge.demo import run_demo

    return run_demo(Path(args.out), max_new_tokens=args.max_new_tokens, test_per_class=args.test_per_class, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medbridge", description="medbridge: medical VLM evaluation (Acc@1, Pass@K) on lmms-eval")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="offline demo: fixtures + tiny model through the real lmms-eval CLI")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--test-per-class", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("tasks-path", help="print the folder of medbridge's lmms-eval task YAMLs (for --include_path)")
    p.set_defaults(func=_cmd_tasks_path)

    p = sub.add_parser("build-fixtures", help="write small MedMNIST-format npz files")
    p.add_argument("--root", required=True)
    p.add_argument("--test-per-class", type=int, default=2)
    p.add_argument("--train-per-class", type=int, default=4)
    p.add_argument("--val-per-class", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_build_fixtures)

    p = sub.add_parser("build-tiny-model", help="write a tiny random-weight Qwen2.5-VL checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_build_tiny_model)

    p = sub.add_parser("data", help="fetch datasets")
    dsub = p.add_subparsers(dest="dataset", required=True)
    q = dsub.add_parser("medmnist", help="download MedMNIST-v2 224x224 files (MD5-checked by medmnist)")
    q.add_argument("--flags", nargs="*", help="e.g. breastmnist pathmnist (default: all twelve)")
    q.add_argument("--root", help="data root (default: $MEDBRIDGE_MEDMNIST_ROOT or ~/.medmnist)")
    q.set_defaults(func=_cmd_data_medmnist)

    from medbridge.leaderboard.cli import add_parser as add_leaderboard_parsers

    add_leaderboard_parsers(sub)  # leaderboard ingest|build, recipe, probe

    for name, rescore, text in (("report", False, "summarise a run: Acc@1, Pass@K, gap with 95%% CIs"),
                                ("rescore", True, "re-score a run's logged generations without generating again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="lmms-eval --output_path folder or a *_results.json file")
        p.add_argument("--json", help="where to write the summary JSON")
        p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
        p.set_defaults(func=lambda a, r=rescore: _cmd_report(a, rescore=r))

    from medbridge.judges.cli import add_parser as add_judge_commands

    add_judge_commands(sub)  # judge serve|check

    from medbridge.training.cli import add_parser as add_training_commands

    add_training_commands(sub)  # train, eval-checkpoint, data build-medmnist-train|build-pmc-vqa
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
