"""Judge throughput: the same N verdicts against the same real server, one at a time vs the
client's bounded concurrency, plus the share of a MedMNIST run's answers the rules settle (the
answers the cascade never sends to the judge).

    python benchmarks/judge_throughput.py                      # starts the tiny vLLM judge itself
    python benchmarks/judge_throughput.py --base-url http://127.0.0.1:8000/v1 --model judge
    python benchmarks/judge_throughput.py --run OUTPUT_DIR     # rules_settled from a real run's log

Without ``--run`` the answers come from the test-only messy model's styles over the MedMNIST
fixture items (half of its styles are unreadable by design), so the reported fraction then
describes that synthetic mix, not a real model. Caching is off: every verdict is a request.
The last line reads ``speedup=<x> rules_settled=<fraction>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from medbridge.harness_ext.answers import extract_choice
from medbridge.harness_ext.judge import MCQ_CHOICE, JudgeClient, JudgeConfig
from medbridge.harness_ext.judge.client import choice_inputs


def _run_answers(run_dir: str) -> list[tuple[str, dict, str]]:
    """(question, options, response) for every generated answer in an lmms-eval samples log."""
    out = []
    for path in sorted(Path(run_dir).rglob("*_samples_*.jsonl")):
        for line in path.open():
            sample = json.loads(line)
            record = next((v for v in sample.values() if isinstance(v, dict) and "options" in v and "choices" in v), None)
            if record is None:
                continue
            resps = sample.get("filtered_resps") or sample.get("resps") or []
            flat = []
            for r in resps:
                flat.extend(r if isinstance(r, list) else [r])
            question = sample.get("doc", {}).get("question", "")
            out.extend((question, record["options"], r) for r in flat if isinstance(r, str))
    if not out:
        raise SystemExit(f"{run_dir}: no medbridge samples found (run lmms-eval with --log_samples)")
    return out


def _synthetic_answers(n_items: int = 96) -> list[tuple[str, dict, str]]:
    from medbridge.tasks.medmnist.data import build_items
    from medbridge.tasks.medmnist.fixtures import build_all
    from medbridge.tests.judge_messy_model import STYLES

    with tempfile.TemporaryDirectory() as tmp:
        build_all(tmp, test_per_class=2, train_per_class=1, val_per_class=1)
        items = []
        for flag in ("pathmnist", "chestmnist", "dermamnist", "bloodmnist", "organamnist"):
            items += build_items(flag, "test", root=tmp, with_images=False)
    rng = random.Random(0)
    out = []
    for i, item in enumerate(items[:n_items]):
        options = json.loads(item["options"])
        letter = rng.choice(list(options))
        other = rng.choice([x for x in options if x != letter])
        out.append((item["question"], options, STYLES[i % len(STYLES)].format(letter=letter, other=other)))
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _timed(config: JudgeConfig, jobs) -> tuple[float, list]:
    client = JudgeClient(config, cache=False)
    try:
        start = time.perf_counter()
        verdicts = await client.judge_many(MCQ_CHOICE, [choice_inputs(*job) for job in jobs])
        return time.perf_counter() - start, verdicts
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("MEDBRIDGE_JUDGE_BASE_URL"))
    parser.add_argument("--model", default=os.environ.get("MEDBRIDGE_JUDGE_MODEL"))
    parser.add_argument("-n", "--n", type=int, default=64, help="verdicts per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per phase, interleaved; the fastest counts (the CPU is shared)")
    parser.add_argument("--run", help="lmms-eval output dir (with --log_samples) of a MedMNIST run")
    args = parser.parse_args(argv)

    answers = _run_answers(args.run) if args.run else _synthetic_answers()
    settled = sum(extract_choice(r, o) is not None for _, o, r in answers)
    rules_settled = settled / len(answers)
    print(f"answers: {len(answers)} from {args.run or 'synthetic messy-model mix'}; rules settled {settled}")

    server = None
    if not (args.base_url and args.model):
        from medbridge.judges import server as S
        from medbridge.tiny_judge import build_tiny_judge

        tmp = tempfile.mkdtemp(prefix="medbridge-bench-")
        opts = S.ServeOptions(model=str(build_tiny_judge(Path(tmp) / "tiny-judge")), served_name="tiny-judge", port=_free_port(), max_model_len=2048, dtype="float32", enforce_eager=True)
        server = S.start_server(opts, log_path=Path(tmp) / "vllm.log")
        print(f"tiny vLLM judge healthy after {S.wait_healthy(opts.base_url, 600, server):.1f} s", flush=True)
        args.base_url, args.model = opts.base_url, opts.name
    try:
        base = dict(base_url=args.base_url, model=args.model, api_key=os.environ.get("MEDBRIDGE_JUDGE_API_KEY"), mode="judge", cache_path="", max_tokens=args.max_tokens)

        def jobs(phase: str):
            # Distinct, equally long prompts per phase, so neither phase gains from the other's
            # prefix cache or from our in-flight de-duplication.
            return [(q, o, f"{r}\n[{phase} {i:05d}]") for i, (q, o, r) in enumerate((answers * (args.n // len(answers) + 1))[: args.n])]

        asyncio.run(_timed(JudgeConfig(**base, concurrency=args.concurrency), jobs("warmup")[: args.concurrency]))
        seq_times, con_times, seq_v, con_v = [], [], [], []
        for round_ in range(args.repeats):
            t, v = asyncio.run(_timed(JudgeConfig(**base, concurrency=1), jobs(f"seq{round_}")))
            seq_times.append(t)
            seq_v += v
            t, v = asyncio.run(_timed(JudgeConfig(**base, concurrency=args.concurrency), jobs(f"con{round_}")))
            con_times.append(t)
            con_v += v
        seq_s, con_s = min(seq_times), min(con_times)
        print("rounds (s): sequential " + " ".join(f"{t:.2f}" for t in seq_times) + "; concurrent " + " ".join(f"{t:.2f}" for t in con_times))
    finally:
        if server is not None:
            S.stop_server(server)
    failed = sum(v.status == "failed" for v in seq_v + con_v)
    print(f"sequential: {args.n} verdicts in {seq_s:.2f} s ({args.n / seq_s:.1f}/s)")
    print(f"concurrency {args.concurrency}: {args.n} verdicts in {con_s:.2f} s ({args.n / con_s:.1f}/s); failed: {failed}")
    print(f"speedup={seq_s / con_s:.2f} rules_settled={rules_settled:.3f}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
