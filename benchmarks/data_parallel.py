"""Data-parallel throughput of medbridge_vlm: items/s with 1 process vs N processes (torchrun, gloo).

Runs the real lmms-eval CLI (``python -m lmms_eval --model medbridge_vlm``) on the same items, once
in one process and once under ``torchrun --nproc_per_node N``, each process with cores/N threads so
both runs use the same cores. An item is one document with its greedy request and its 16 sampled
ones (a dataset's greedy task and its ``_passk`` twin). Throughput is measured two ways:

  generate = items / the slowest rank's time inside generate_until (from each rank's stats file):
             what data parallel buys for the generation itself;
  end_to_end = items / the whole command's wall time (process start, model and data loading,
             scoring and the gather to rank 0 included).

Both runs must log the same responses (checked). The last line is exactly
``items=<n> procs=<N> items_per_s_1proc=<a> items_per_s_<N>proc=<b> ratio=<b/a> end_to_end_ratio=<c>``.

CPU, tiny random model (builds fixtures and the model under --workdir):
    python benchmarks/data_parallel.py
GPUs (one process per GPU against one):
    python benchmarks/data_parallel.py --model-dir /models/Qwen2.5-VL-7B-Instruct --device cuda --procs 8 \\
        --data-root /data/medmnist --limit 64 --max-new-tokens 256 --threads 8
GPUs, the vLLM engine (each rank builds its engine on its own GPU group; --tp GPUs per rank):
    python benchmarks/data_parallel.py --engine vllm --model-dir /models/Qwen2.5-VL-7B-Instruct --procs 8 \\
        --data-root /data/medmnist --limit 256 --max-new-tokens 256 --dtype bfloat16
The vLLM engine needs GPUs: on a machine without one it prints why it skipped and exits 0 (vLLM's CPU
backend is a test path here, not a throughput figure). Per-rank devices come from each rank's stats.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpu_count(python: str) -> int:
    """GPUs the Python that runs lmms-eval sees (0 without CUDA)."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


def run(procs: int, out: Path, args: argparse.Namespace, model_dir: Path, data_root: Path) -> dict[str, Any]:
    """One lmms-eval run with ``procs`` processes; returns its timings and logged responses."""
    from medbridge.tasks.families import passk_twin

    model_args = (
        f"pretrained={model_dir},engine={args.engine},dtype={args.dtype},min_pixels={args.min_pixels},"
        f"max_pixels={args.max_pixels},seed=0,stats_path={out / 'stats.json'}"
    )
    if args.engine == "vllm":
        model_args += f",tensor_parallel_size={args.tp},gpu_memory_utilization={args.gpu_memory_utilization}"
        model_args += f",max_model_len={args.max_model_len}" if args.max_model_len else ""
    else:
        model_args += f",device={args.device},attn_implementation=sdpa"
    tasks = [args.task, passk_twin(args.task)]
    cli = [
        "-m",
        "lmms_eval",
        "--model",
        "medbridge_vlm",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(tasks),
        "--limit",
        str(args.limit),
        "--gen_kwargs",
        f"max_new_tokens={args.max_new_tokens}",
        "--output_path",
        str(out / "results"),
        "--log_samples",
    ]
    if procs > 1:
        cli = ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(_free_port())] + cli
    threads = args.threads or max(1, (os.cpu_count() or 1) // procs)
    env = {
        **os.environ,
        "MEDBRIDGE_MEDMNIST_ROOT": str(data_root),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.perf_counter()
    proc = subprocess.run([args.python] + cli, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not list((out / "results").rglob("*_results.json")):
        raise SystemExit(f"lmms-eval with {procs} process(es) failed:\n{proc.stderr[-4000:]}")
    names = ["stats.json"] if procs == 1 else [f"stats.rank{r}.json" for r in range(procs)]
    stats = [json.loads((out / n).read_text()) for n in names]

    from medbridge.harness_ext.report import load_run, responses_of

    logged = load_run(out / "results")
    responses = {t: {str(s["doc_id"]): responses_of(s) for s in logged.samples[t]} for t in tasks}
    return {
        "wall_seconds": wall,
        "generate_seconds": max(s["wall_seconds"] for s in stats),
        "per_rank_generate_seconds": [s["wall_seconds"] for s in stats],
        "per_rank_items": [s["items_generated"] for s in stats],
        "per_rank_devices": [s.get("devices") for s in stats],
        "threads_per_process": threads,
        "responses": responses,
        "items": len(logged.samples[args.task]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="fixtures, model and outputs (default: a temp dir)")
    ap.add_argument("--model-dir", type=Path, default=None, help="a Qwen2.5-VL checkpoint (default: the tiny one)")
    ap.add_argument("--data-root", type=Path, default=None, help="MedMNIST root (default: build fixtures)")
    ap.add_argument("--task", default="medmnist_mcq_blood", help="a greedy task; its _passk twin runs with it")
    ap.add_argument("--limit", type=int, default=8, help="documents")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2, help="processes of the data-parallel run")
    ap.add_argument("--threads", type=int, default=0, help="threads per process (default: cores / processes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--max-pixels", type=int, default=50176)
    ap.add_argument("--engine", choices=("transformers", "vllm"), default="transformers")
    ap.add_argument("--tp", type=int, default=1, help="vllm: tensor_parallel_size (GPUs per rank)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm: per GPU")
    ap.add_argument("--max-model-len", type=int, default=0, help="vllm: 0 = the model's")
    ap.add_argument("--python", default=sys.executable, help="the Python that runs lmms-eval (a venv with vllm)")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = ap.parse_args(argv)
    if args.engine == "vllm":
        gpus = _gpu_count(args.python)
        if gpus == 0:
            print("skipped: --engine vllm measures GPU throughput and this machine has no GPU (vLLM's CPU backend "
                  "is covered by tests/test_vllm_devices.py, not timed here)")
            return 0
        if args.procs * args.tp > gpus:
            raise SystemExit(f"--procs {args.procs} x --tp {args.tp} needs {args.procs * args.tp} GPUs; {gpus} found")

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="data_parallel_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        from medbridge.tiny_model import build_tiny_qwen2_5_vl

        model_dir = build_tiny_qwen2_5_vl(work / "tiny-qwen2.5-vl")
    data_root = args.data_root
    if data_root is None:
        from medbridge.tasks.medmnist.fixtures import build_all

        data_root = work / "medmnist"
        if not data_root.exists():
            build_all(data_root, test_per_class=2, train_per_class=1, val_per_class=1)

    stamp = time.strftime("%Y%m%dT%H%M%S")
    where = args.device if args.engine == "transformers" else f"{args.tp} GPU(s) each, vllm"
    print(f"[1/2] one process on {where}", flush=True)
    one = run(1, work / f"one-{stamp}", args, model_dir, data_root)
    print(f"[2/2] {args.procs} processes (torchrun) on {where}", flush=True)
    many = run(args.procs, work / f"many-{stamp}", args, model_dir, data_root)
    same = one["responses"] == many["responses"]
    items = one["items"]
    figures = {
        "items": items,
        "procs": args.procs,
        "device": args.device if args.engine == "transformers" else "cuda (vllm)",
        "engine": args.engine,
        "per_rank_devices": many["per_rank_devices"],
        "cpu_count": os.cpu_count(),
        "threads_per_process": {"1proc": one["threads_per_process"], f"{args.procs}proc": many["threads_per_process"]},
        "generate_seconds": {"1proc": one["generate_seconds"], f"{args.procs}proc": many["generate_seconds"]},
        "per_rank_generate_seconds": many["per_rank_generate_seconds"],
        "per_rank_items": many["per_rank_items"],
        "wall_seconds": {"1proc": one["wall_seconds"], f"{args.procs}proc": many["wall_seconds"]},
        "same_responses": same,
        "items_per_s_1proc": items / one["generate_seconds"],
        f"items_per_s_{args.procs}proc": items / many["generate_seconds"],
        "end_to_end_items_per_s_1proc": items / one["wall_seconds"],
        f"end_to_end_items_per_s_{args.procs}proc": items / many["wall_seconds"],
    }
    figures["ratio"] = figures[f"items_per_s_{args.procs}proc"] / figures["items_per_s_1proc"]
    figures["end_to_end_ratio"] = one["wall_seconds"] / many["wall_seconds"]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    for k, v in figures.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if not same:
        print(f"WARNING: {args.procs} processes logged other responses than one process", file=sys.stderr)
    print(
        f"items={items} procs={args.procs} items_per_s_1proc={figures['items_per_s_1proc']:.4f} "
        f"items_per_s_{args.procs}proc={figures[f'items_per_s_{args.procs}proc']:.4f} ratio={figures['ratio']:.4f} "
        f"end_to_end_ratio={figures['end_to_end_ratio']:.4f}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
