"""`medbridge demo`: the whole evaluation chain offline, on fixtures and a tiny random model.

Builds MedMNIST-format files and a tiny Qwen2.5-VL, runs the real `lmms-eval` CLI on the
`medmnist_mcq` group (greedy + 16 samples per item) with lmms-eval's own qwen2_5_vl backend on
the CPU, then prints Acc@1, Pass@K and the support gap per dataset and modality.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.lmms_eval_cli import lmms_eval_command
from medbridge.harness_ext.runs import results_files, results_written_since


def offline_env(data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MEDBRIDGE_MEDMNIST_ROOT=str(data_root),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def qwen_cpu_model_args(model_dir: Path) -> str:
    # lmms-eval's default min_pixels upsamples a 224 px image to 448 px; keep MedMNIST's 224 px
    # (64 visual tokens, the tiny model's own limits), which is also what makes the CPU demo quick.
    from medbridge.tiny_model import MAX_PIXELS, MIN_PIXELS

    return (f"pretrained={model_dir},device=cpu,device_map=cpu,attn_implementation=sdpa,"
            f"min_pixels={MIN_PIXELS},max_pixels={MAX_PIXELS}")


def run_demo(out: Path, *, max_new_tokens: int = 24, test_per_class: int = 1, batch_size: int = 16,
             tasks: str = "medmnist_mcq") -> int:
    from medbridge.harness_ext.report import format_table, load_run, summarize_run, write_summary
    from medbridge.tasks.medmnist.fixtures import build_all
    from medbridge.tiny_model import build_tiny_qwen2_5_vl

    out = out.resolve()
    data_root, results_dir = out / "medmnist", out / "results"
    print(f"[1/3] MedMNIST-format fixtures ({test_per_class} test image(s) per class) -> {data_root}", flush=True)
    build_all(data_root, test_per_class=test_per_class)
    print("[2/3] tiny random-weight Qwen2.5-VL", flush=True)
    model_dir = build_tiny_qwen2_5_vl(out / "tiny-qwen2.5-vl")
    cmd = lmms_eval_command() + [
        "--model", "qwen2_5_vl",
        "--model_args", qwen_cpu_model_args(model_dir),
        "--tasks", tasks,
        "--batch_size", str(batch_size),
        "--gen_kwargs", f"max_new_tokens={max_new_tokens}",
        "--output_path", str(results_dir),
        "--log_samples",
    ]
    print("[3/3] " + " ".join(cmd), flush=True)
    before = results_files(results_dir)  # an earlier demo in the same --out left its runs there
    proc = subprocess.run(cmd, env=offline_env(data_root))
    if proc.returncode != 0:
        # lmms-eval's own message (or medbridge's one paragraph from inside it) is just above.
        print(f"medbridge demo: lmms-eval exited with code {proc.returncode} (its message is above)", file=sys.stderr)
        return proc.returncode if proc.returncode in (1, 2) else 1
    try:
        run = load_run(results_written_since(results_dir, before))
    except MedbridgeError as err:
        print(f"medbridge demo: {err}", file=sys.stderr)
        return 1
    summary = summarize_run(run)
    print()
    print(format_table(summary))
    summary_name = run.results_path.name.replace("_results.json", "_medbridge_summary.json")
    summary_path = write_summary(summary, run.results_path.with_name(summary_name))
    print(f"\nlmms-eval results: {run.results_path}\nmedbridge summary: {summary_path}")
    from medbridge.leaderboard import build_leaderboard, ingest_run

    # The demo's own store, so a random tiny model never lands in your default leaderboard
    # (./medbridge_leaderboard/leaderboard.sqlite or $MEDBRIDGE_LEADERBOARD).
    store, site = out / "leaderboard" / "leaderboard.sqlite", out / "leaderboard" / "site"
    ingest_run(store, run.results_path, model="tiny-qwen2.5-vl (random weights)")
    index = build_leaderboard(store, site)
    print(f"leaderboard store: {store}\nleaderboard: {index}\n  open it: {Path(index).resolve().as_uri()}\n"
          f"  rebuild it: medbridge leaderboard build --store {store} --out {site}")
    return 0
