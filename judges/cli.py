"""``medbridge judge serve`` and ``medbridge judge check`` (wired into medbridge/cli.py via add_parser)."""

from __future__ import annotations

import argparse
import sys

from medbridge.cli_args import int_range


def _cmd_serve(args: argparse.Namespace) -> int:
    from medbridge.judges import server as vllm_server

    opts = vllm_server.ServeOptions(
        model=args.model,
        served_name=args.served_name,
        host=args.host,
        port=args.port,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        enforce_eager=args.enforce_eager,
        extra_args=list(args.vllm_args or []),
    )
    gpus = [g for g in args.gpus.split(",") if g.strip()] if args.gpus else vllm_server.visible_gpus()
    replicas = vllm_server.replica_options(opts, args.replicas, gpus)
    procs = []
    for i, replica in enumerate(replicas):
        log = f"{args.log}.{i}" if args.log and len(replicas) > 1 else args.log
        devices = f" on GPU(s) {','.join(replica.gpus)}" if replica.gpus else ""
        command = " ".join(vllm_server.serve_command(replica, args.vllm_python))
        print(f"starting replica {i}{devices}: {command}", file=sys.stderr)
        procs.append((replica, log, vllm_server.start_server(replica, log_path=log, python=args.vllm_python)))
    for replica, log, proc in procs:
        try:
            seconds = vllm_server.wait_healthy(replica.base_url, timeout_s=args.timeout, proc=proc)
        except (RuntimeError, TimeoutError) as err:
            for _, _, other in procs:
                vllm_server.stop_server(other)
            where = f" (see {log})" if log else ""
            print(f"judge server {replica.base_url} failed to start: {err}{where}", file=sys.stderr)
            return 1
        print(f"judge server {replica.base_url} healthy after {seconds:.0f} s (pid {proc.pid})", file=sys.stderr)
    # The endpoint(s), as the environment the tasks read (several replicas: one comma-separated list).
    print(f"MEDBRIDGE_JUDGE_BASE_URL={','.join(r.base_url for r in replicas)}")
    print(f"MEDBRIDGE_JUDGE_MODEL={opts.name}")
    sys.stdout.flush()
    if args.detach:
        return 0
    try:
        codes = [proc.wait() for _, _, proc in procs]
    except KeyboardInterrupt:
        for _, _, proc in procs:
            vllm_server.stop_server(proc)
        return 0
    return max(codes)


def _cmd_check(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from medbridge.judges import MCQ_CHOICE, JudgeConfig, JudgePool, choice_inputs
    from medbridge.judges import server as vllm_server

    config = JudgeConfig.resolve(
        explicit={"base_url": args.base_url, "model": args.model, "api_key": args.api_key, "mode": "rules"}
    )
    if not config.base_urls:
        print("no judge endpoint configured: pass --base-url or set MEDBRIDGE_JUDGE_BASE_URL", file=sys.stderr)
        return 2
    ok = True
    for url in config.base_urls:  # every replica, through the judge's one HTTP client
        up, message = vllm_server.check_endpoint(url, config.model, config.api_key)
        print(message)
        ok = ok and up
    if ok and args.probe:
        if not config.model:
            print("--probe needs the judge model: pass --model or set MEDBRIDGE_JUDGE_MODEL", file=sys.stderr)
            return 2
        # A question whose answer is unambiguous: the judge must reply exactly "VERDICT: A". With several
        # replicas the probe also checks that they all serve one model (else the verdict is refused).
        pool = JudgePool(replace(config, mode="judge", cache_path="off", max_attempts=3), cache=False)
        try:
            probe = choice_inputs("Which option is a color?", {"A": "red", "B": "seven"}, "<answer>A</answer>")
            verdict = pool.judge_many(MCQ_CHOICE, [probe])[0]
            refused = pool.client.refused
        finally:
            pool.close()
        print(f"probe verdict: {verdict.status} {verdict.letter or verdict.error or ''} (reply {verdict.raw!r:.80})")
        if refused:
            print(f"judge refused: {refused}", file=sys.stderr)
        ok = verdict.status == "letter" and verdict.letter == "A"
        if not ok:
            print(
                "probe FAILED: the judge did not answer the probe with the exact verdict line (VERDICT: A)",
                file=sys.stderr,
            )
    return 0 if ok else 1


def add_parser(subparsers) -> None:
    judge = subparsers.add_parser("judge", help="serve or check the LLM judge (OpenAI-compatible endpoint)")
    sub = judge.add_subparsers(dest="judge_command", required=True)

    serve = sub.add_parser(
        "serve", help="start a vLLM OpenAI-compatible server for the judge and wait until it is healthy"
    )
    serve.add_argument("--model", required=True, help="model path or hub id, e.g. Qwen/Qwen2.5-VL-32B-Instruct")
    serve.add_argument("--served-name", help="name clients ask for (default: --model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int_range(1, 65535), default=8000)
    serve.add_argument("--tensor-parallel-size", type=int_range(1), default=1, help="GPUs per replica")
    serve.add_argument(
        "--replicas", type=int_range(1), default=1,
        help="servers of the same model on ports --port, --port+1, ...; each on its own --tensor-parallel-size GPUs",
    )
    serve.add_argument("--gpus", help="GPUs to spread the replicas over (default: CUDA_VISIBLE_DEVICES, else all)")
    serve.add_argument("--max-model-len", type=int_range(1), default=4096)
    serve.add_argument("--dtype", default="auto", help="auto on GPU; float32 for the CPU build")
    serve.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation (CPU, tests)")
    serve.add_argument(
        "--vllm-python", help="python that has vllm (default: $MEDBRIDGE_VLLM_VENV/bin/python, else this one)"
    )
    serve.add_argument("--log", help="append the server's output to this file")
    serve.add_argument("--timeout", type=float, default=900, help="seconds to wait for /health")
    serve.add_argument("--detach", action="store_true", help="print the endpoint and leave the server running")
    serve.add_argument("vllm_args", nargs="*", help="extra vLLM flags after --")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser("check", help="is the configured judge endpoint up and serving the expected model?")
    check.add_argument("--base-url", help="default: $MEDBRIDGE_JUDGE_BASE_URL (several replicas: comma-separated)")
    check.add_argument("--model", help="default: $MEDBRIDGE_JUDGE_MODEL")
    check.add_argument("--api-key", help="default: $MEDBRIDGE_JUDGE_API_KEY (never printed)")
    check.add_argument("--probe", action="store_true", help="also send one verdict request and show the parsed verdict")
    check.set_defaults(func=_cmd_check)
