"""Judge throughput: the client on its own against a local stub judge, then the same N verdicts
against a real server, one at a time vs the client's bounded concurrency, plus the share of a
MedMNIST run's answers the rules settle (the answers the cascade never sends to the judge).

    python benchmarks/judge_throughput.py                      # stub phase, then the tiny vLLM judge
    python benchmarks/judge_throughput.py --stub-only          # the client on its own (no vLLM needed)
    python benchmarks/judge_throughput.py --base-url http://127.0.0.1:8000/v1 --model judge
    python benchmarks/judge_throughput.py --run OUTPUT_DIR     # rules_settled from a real run's log
    python benchmarks/judge_throughput.py --replicas 1,2,4     # judge replicas against stub servers

Stub phase: tests/fake_judge_server.py answers every request after a fixed delay, in parallel
(one thread per connection), so an ideal client at concurrency C is exactly C times faster than
one at concurrency 1. It prints ``client_efficiency=<speedup / C>`` (target >= 0.8): what our
client (event loop, HTTP, semaphore, parsing) loses on its own. Real-server phase: the
``speedup=`` line; a server on two CPU cores is compute-bound, so that number says more about the
server than the client. Without a vLLM venv and without ``--base-url`` the real phase is skipped
with what to install.

Replica phase (``--replicas N[,N...]``): N stub judges in their own processes, each answering at most
``--capacity`` requests at once after ``--stub-delay`` (a fixed per-server capacity, as a GPU server
has), and one client over all N (``base_url`` = the N URLs, ``concurrency`` = capacity per replica).
A perfect spread gives N x capacity / delay verdicts per second; it prints, per N,
``replicas=N throughput=<verdicts/s> ideal=<N x capacity / delay> efficiency=<throughput / ideal>``
and the requests each server answered.

Without ``--run`` the answers come from the test-only messy model's styles over the MedMNIST
fixture items (half of its styles are unreadable by design), so the reported fraction then
describes that synthetic mix, not a real model. Caching is off: every verdict is a request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medbridge.harness_ext import settings
from medbridge.harness_ext.answers import extract_choice
from medbridge.judges import MCQ_CHOICE, JudgeClient, JudgeConfig, choice_inputs, http


def _run_answers(run_dir: str) -> list[tuple[str, dict, str]]:
    """(question, options, response) for every generated answer in an lmms-eval samples log."""
    out = []
    for path in sorted(Path(run_dir).rglob("*_samples_*.jsonl")):
        for line in path.open():
            sample = json.loads(line)
            record = next(
                (v for v in sample.values() if isinstance(v, dict) and "options" in v and "choices" in v), None
            )
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


def _phase_jobs(answers, n: int, phase: str):
    # Distinct, equally long prompts per phase, so neither phase gains from the other's prefix
    # cache or from our in-flight de-duplication.
    pool = (answers * (n // len(answers) + 1))[:n]
    return [(q, o, f"{r}\n[{phase} {i:05d}]") for i, (q, o, r) in enumerate(pool)]


def _compare(base: dict, answers, n: int, concurrency: int, repeats: int) -> tuple[float, float, int]:
    """(fastest sequential s, fastest concurrent s, failed verdicts) over interleaved rounds."""
    asyncio.run(_timed(JudgeConfig(**base, concurrency=concurrency), _phase_jobs(answers, concurrency, "warmup")))
    seq_times, con_times, failed = [], [], 0
    for round_ in range(repeats):
        for conc, times in ((1, seq_times), (concurrency, con_times)):
            t, verdicts = asyncio.run(
                _timed(JudgeConfig(**base, concurrency=conc), _phase_jobs(answers, n, f"c{conc}r{round_}"))
            )
            times.append(t)
            failed += sum(v.status == "failed" for v in verdicts)
    print(
        "  rounds (s): sequential "
        + " ".join(f"{t:.2f}" for t in seq_times)
        + "; concurrent "
        + " ".join(f"{t:.2f}" for t in con_times)
    )
    return min(seq_times), min(con_times), failed


def _start_stub(delay_s: float, capacity: int = 0):
    """The stub judge in its own process (so it does not share our interpreter's GIL); (process, base URL)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medbridge.tests.fake_judge_server", "--port", str(port), "--delay", str(delay_s),
         "--capacity", str(capacity)]
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http.get_text(root, "/health", timeout_s=1)
            return proc, root + "/v1"
        except http.JudgeHTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the stub judge did not start within 60 s")


def _stub_stats(base_url: str) -> dict:
    return http.get_json(base_url.removesuffix("/v1"), "/stats", timeout_s=10)


def replica_throughput(answers, replicas: int, capacity: int, delay_s: float, waves: int) -> tuple[float, int]:
    """Verdicts per second of one client over ``replicas`` stub judges of fixed capacity; (efficiency, failed)."""
    from medbridge.tests.fake_judge_server import MODEL_NAME

    stubs = [_start_stub(delay_s, capacity) for _ in range(replicas)]
    urls = [url for _, url in stubs]
    n = waves * replicas * capacity
    try:
        base = dict(base_url=",".join(urls), model=MODEL_NAME, mode="judge", cache_path="off", concurrency=capacity)
        asyncio.run(_timed(JudgeConfig(**base), _phase_jobs(answers, replicas * capacity, "warmup")))
        before = [_stub_stats(url)["counts"].get("requests", 0) for url in urls]
        seconds, verdicts = asyncio.run(_timed(JudgeConfig(**base), _phase_jobs(answers, n, f"replicas{replicas}")))
        answered = [_stub_stats(url)["counts"].get("requests", 0) - b for url, b in zip(urls, before)]
    finally:
        for proc, _ in stubs:
            proc.kill()
            proc.wait()
    failed = sum(v.status == "failed" for v in verdicts)
    throughput, ideal = n / seconds, replicas * capacity / delay_s
    print(
        f"replicas={replicas} throughput={throughput:.2f}/s ideal={ideal:.1f}/s efficiency={throughput / ideal:.3f} "
        f"verdicts={n} seconds={seconds:.2f} per_server={answered} failed={failed}",
        flush=True,
    )
    return throughput / ideal, failed


def stub_efficiency(answers, n: int, concurrency: int, delay_s: float, repeats: int) -> tuple[float, int]:
    """client_efficiency against the stub judge, and the number of failed verdicts."""
    from medbridge.tests.fake_judge_server import MODEL_NAME

    stub, base_url = _start_stub(delay_s)
    try:
        base = dict(base_url=base_url, model=MODEL_NAME, judge_id="stub", mode="judge", cache_path="off")
        seq_s, con_s, failed = _compare(base, answers, n, concurrency, repeats)
        peak = _stub_stats(base_url)["max_inflight"]
    finally:
        stub.kill()
        stub.wait()
    speedup = seq_s / con_s
    print(
        f"stub judge ({delay_s:.2f} s per reply, answered in parallel; peak {peak} in flight): "
        f"sequential {n / seq_s:.1f}/s, concurrency {concurrency} {n / con_s:.1f}/s"
    )
    # The stricter view: the concurrent round against a perfect client (ceil(n / C) waves of one delay each).
    vs_ideal = math.ceil(n / concurrency) * delay_s / con_s
    print(
        f"client_efficiency={speedup / concurrency:.3f} stub_speedup={speedup:.2f} concurrency={concurrency} "
        f"vs_ideal={vs_ideal:.3f}"
    )
    return speedup / concurrency, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=settings.get_str("MEDBRIDGE_JUDGE_BASE_URL"))
    parser.add_argument("--model", default=settings.get_str("MEDBRIDGE_JUDGE_MODEL"))
    parser.add_argument("-n", "--n", type=int, default=64, help="verdicts per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds per phase, interleaved; the fastest counts"
    )
    parser.add_argument("--stub-delay", type=float, default=0.25, help="seconds the stub judge takes per reply")
    parser.add_argument("--stub-only", action="store_true", help="measure the client against the stub judge only")
    parser.add_argument("--run", help="lmms-eval output dir (with --log_samples) of a MedMNIST run")
    parser.add_argument(
        "--replicas", help="comma-separated replica counts (e.g. 1,2,4): only the replica phase, against stub judges"
    )
    parser.add_argument("--capacity", type=int, default=8, help="replica phase: requests each stub answers at once")
    parser.add_argument("--waves", type=int, default=8, help="replica phase: verdicts = waves x replicas x capacity")
    args = parser.parse_args(argv)

    answers = _run_answers(args.run) if args.run else _synthetic_answers()
    settled = sum(extract_choice(r, o) is not None for _, o, r in answers)
    rules_settled = settled / len(answers)
    print(f"answers: {len(answers)} from {args.run or 'synthetic messy-model mix'}; rules settled {settled}")

    if args.replicas:
        counts = [int(c) for c in args.replicas.split(",") if c.strip()]
        print(f"replica phase: stub judges answering {args.capacity} at once, {args.stub_delay:.2f} s per reply")
        failed = sum(replica_throughput(answers, c, args.capacity, args.stub_delay, args.waves)[1] for c in counts)
        return 0 if failed == 0 else 1

    _, failed = stub_efficiency(answers, args.n, args.concurrency, args.stub_delay, args.repeats)
    if args.stub_only:
        return 0 if failed == 0 else 1

    from medbridge.judges import server as vllm_server

    server = None
    if not (args.base_url and args.model):
        if not (vllm_server.vllm_venv() / "bin" / "python").exists():
            print(
                f"real-server phase skipped: no vLLM venv at {vllm_server.vllm_venv()}. Install one with "
                "`bash judges/install_vllm_cpu.sh` (or set MEDBRIDGE_VLLM_VENV to a venv that has vllm), "
                "or pass --base-url and --model of a running judge."
            )
            print(f"speedup=nan rules_settled={rules_settled:.3f}")
            return 0 if failed == 0 else 1
        from medbridge.tiny_judge import build_tiny_judge

        tmp = tempfile.mkdtemp(prefix="medbridge-bench-")
        opts = vllm_server.ServeOptions(
            model=str(build_tiny_judge(Path(tmp) / "tiny-judge")),
            served_name="tiny-judge",
            port=_free_port(),
            max_model_len=2048,
            dtype="float32",
            enforce_eager=True,
        )
        server = vllm_server.start_server(opts, log_path=Path(tmp) / "vllm.log")
        try:
            print(
                f"tiny vLLM judge healthy after {vllm_server.wait_healthy(opts.base_url, 600, server):.1f} s",
                flush=True,
            )
        except (RuntimeError, TimeoutError) as err:
            vllm_server.stop_server(server, hard=True)
            print(f"the tiny vLLM judge did not start ({err}); its log: {Path(tmp) / 'vllm.log'}")
            return 1
        args.base_url, args.model = opts.base_url, opts.name
    try:
        base = dict(
            base_url=args.base_url,
            model=args.model,
            api_key=settings.get_str("MEDBRIDGE_JUDGE_API_KEY"),
            mode="judge",
            cache_path="off",
            max_tokens=args.max_tokens,
        )
        seq_s, con_s, real_failed = _compare(base, answers, args.n, args.concurrency, args.repeats)
    finally:
        if server is not None:
            vllm_server.stop_server(server)
    print(f"sequential: {args.n} verdicts in {seq_s:.2f} s ({args.n / seq_s:.1f}/s)")
    print(
        f"concurrency {args.concurrency}: {args.n} verdicts in {con_s:.2f} s ({args.n / con_s:.1f}/s); "
        f"failed: {real_failed}"
    )
    print(f"speedup={seq_s / con_s:.2f} rules_settled={rules_settled:.3f}")
    return 0 if failed + real_failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
