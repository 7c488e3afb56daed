"""What greedy + Pass@16 costs: lmms-eval's standard backend with ``repeats: 16`` vs. medbridge_vlm.

Both backends run in this process through lmms-eval's own ``simple_evaluate`` on the same pair of
tasks (a dataset's greedy task and its Pass@16 twin, as ``--tasks medmnist_mcq`` runs them), items,
model and generation settings. The model class's ``forward`` is instrumented
(harness_ext/backend/instrument.py), so the prompts each backend prefilled are counted from the
tensors the model actually ran. Then the very same generations (same prompts, same per-item seeds,
identical outputs checked) are run on the raw engine with no harness around it, to measure what the
harness adds, and once more with ``batch_size`` 8 (items per padded prefill).

Printed figures:
  prefills_per_item = prompt rows medbridge_vlm prefilled / items, an item being one document with
                  its greedy request and its 16 sampled ones (lmms-eval's path: 17)
  prefill_ratio = prompt tokens prefilled by medbridge_vlm / (sum over items of the prompt length)
  wall_ratio    = medbridge_vlm generation wall time / the standard backend's, both measured around
                  the model's generate_until (model loading and scoring excluded for both), the median
                  over 1 + --repeats rounds (the rounds alternate backends so machine load hits all alike)
  overhead      = (medbridge_vlm generate_until wall time - the engine's own time inside that call)
                  / the engine's time, a fraction (least of each over the rounds): what grouping,
                  documents, prompt rendering, fingerprints, the SQLite cache and fan-out add on the
                  generating thread. As a cross-check the same generations are also rerun on the bare
                  engine (``raw_engine_seconds``; the samples must come out identical).
  items_per_s_batch1 / items_per_s_batch8 = items / medbridge_vlm generate_until seconds (median of
                  the rounds) with batch_size 1 and 8; the batch-8 samples must equal batch 1's.
The last line is exactly
``prefills_per_item=<x> prefill_ratio=<x> wall_ratio=<y> overhead=<z> items_per_s_batch1=<a> items_per_s_batch8=<b>``.
Only the transformers engine runs here (vLLM needs a GPU; see the README's performance section).

CPU, tiny random model (builds fixtures + model under --workdir; a few minutes):
    python benchmarks/passk_cost.py

GPU, a 7B-shaped checkpoint with random weights built on the GPU (nothing to download):
    python benchmarks/passk_cost.py --random-7b /tmp/qwen2.5-vl-7b-random --device cuda --limit 16 \
        --max-new-tokens 128 \
        --min-pixels 200704 --max-pixels 1605632
GPU, a real 7B checkpoint:
    python benchmarks/passk_cost.py --model-dir /models/Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16 \
        --attn-implementation sdpa --limit 32 --max-new-tokens 256 --min-pixels 200704 --max-pixels 1605632 \
        --data-root /data/medmnist
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _timed(cls: type, name: str, record: dict[str, Any]):
    """Wrap ``cls.name`` to add its wall time to record['seconds'] and keep the instance."""
    original = cls.__dict__[name]

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        record["instance"], record["args"] = self, args
        # lmms-eval's evaluator deletes the model's nn.Module attributes after the run (lm.clean());
        # keep them so the timing rounds can call generate_until again.
        record["modules"] = {k: v for k, v in vars(self).items() if hasattr(v, "parameters") and hasattr(v, "forward")}
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t0

    return original, wrapper


@contextlib.contextmanager
def timing(cls: type, name: str):
    record: dict[str, Any] = {}
    original, wrapper = _timed(cls, name, record)
    setattr(cls, name, wrapper)
    try:
        yield record
    finally:
        setattr(cls, name, original)


def build_random_7b(out_dir: Path, tiny_dir: Path, device: str) -> Path:
    """A Qwen2.5-VL-7B-shaped checkpoint with random bf16 weights (the tiny model's tokenizer and
    processor; the 7B text/vision geometry), for timing on a machine that cannot download weights."""
    import torch
    from transformers import (
        AutoConfig,
        AutoProcessor,
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    if (out_dir / "config.json").exists() and any(out_dir.glob("*.safetensors")):
        return out_dir
    config = AutoConfig.from_pretrained(tiny_dir)
    text = {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 128000,
        "max_window_layers": 28,
    }
    for k, v in text.items():
        setattr(config.text_config, k, v)
    config.text_config.layer_types = ["full_attention"] * text["num_hidden_layers"]
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = False  # the 7B has its own lm_head
    config.text_config.rope_parameters = {**(config.text_config.rope_parameters or {}), "mrope_section": [16, 24, 24]}
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    }
    for k, v in vision.items():
        setattr(config.vision_config, k, v)
    with torch.device(device):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig.from_pretrained(tiny_dir)
    model.save_pretrained(out_dir)
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(out_dir)
    del model
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where fixtures, the tiny model and caches go (default: a temp dir)"
    )
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="a Qwen2.5-VL checkpoint (default: build the tiny random one)"
    )
    ap.add_argument(
        "--random-7b",
        type=Path,
        default=None,
        help="build (once) and use a 7B-shaped random-weight checkpoint in this folder",
    )
    ap.add_argument("--data-root", type=Path, default=None, help="MedMNIST root (default: build fixtures)")
    ap.add_argument(
        "--task", default="medmnist_mcq_blood", help="a greedy task; its _passk twin (repeats: 16) runs with it"
    )
    ap.add_argument("--limit", type=int, default=6, help="items")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16", help="ours; lmms-eval's qwen2_5_vl always loads bfloat16")
    ap.add_argument("--attn-implementation", default="sdpa")
    ap.add_argument("--min-pixels", type=int, default=3136)
    ap.add_argument("--max-pixels", type=int, default=50176)
    ap.add_argument(
        "--baseline-batch-size",
        type=int,
        default=16,
        help="lmms-eval qwen2_5_vl batch size (16: one item's clones per call)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="timing rounds after the first run (the median counts)")
    ap.add_argument("--batch-size", type=int, default=8, help="the batched run's items per prefill")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = ap.parse_args(argv)

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="passk_cost_"))
    work.mkdir(parents=True, exist_ok=True)

    from medbridge.tiny_model import build_tiny_qwen2_5_vl

    model_dir = args.model_dir
    if model_dir is None:
        tiny = build_tiny_qwen2_5_vl(work / "tiny-qwen2.5-vl")
        model_dir = build_random_7b(args.random_7b, tiny, args.device) if args.random_7b else tiny
    data_root = args.data_root
    if data_root is None:
        from medbridge.tasks.medmnist.fixtures import build_all

        data_root = work / "medmnist"
        build_all(data_root, test_per_class=2, train_per_class=1, val_per_class=1)
    os.environ["MEDBRIDGE_MEDMNIST_ROOT"] = str(data_root)

    import medbridge.harness_ext.plugin  # noqa: F401  (task folder hook)
    import torch
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as LmmsEvalQwen
    from medbridge.harness_ext.backend import register
    from medbridge.harness_ext.backend.cache import SampleCache
    from medbridge.harness_ext.backend.instrument import count_forward_tokens
    from medbridge.harness_ext.backend.model import MedbridgeVLM
    from medbridge.harness_ext.backend.transformers_engine import TransformersEngine
    from medbridge.tasks.families import passk_twin
    from transformers import Qwen2_5_VLForConditionalGeneration

    register()
    tasks = [args.task, passk_twin(args.task)]
    pixels = f"min_pixels={args.min_pixels},max_pixels={args.max_pixels}"
    common = {
        "tasks": tasks,
        "limit": args.limit,
        "gen_kwargs": f"max_new_tokens={args.max_new_tokens}",
        "bootstrap_iters": 0,
        "log_samples": True,
    }
    device_map = "auto" if args.device.startswith("cuda") else args.device

    print(
        f"[1/4] lmms-eval qwen2_5_vl, {' + '.join(tasks)}, batch_size {args.baseline_batch_size} on {args.device}",
        flush=True,
    )
    with (
        count_forward_tokens(Qwen2_5_VLForConditionalGeneration) as base_log,
        timing(LmmsEvalQwen, "generate_until") as base_t,
    ):
        t0 = time.perf_counter()
        base = simple_evaluate(
            model="qwen2_5_vl",
            model_args=f"pretrained={model_dir},device={args.device},device_map={device_map},"
            f"attn_implementation={args.attn_implementation},{pixels}",
            batch_size=args.baseline_batch_size,
            **common,
        )
        base_total = time.perf_counter() - t0

    print("[2/4] medbridge_vlm (transformers engine, batch_size 1, cold sample cache)", flush=True)
    batches: list = []  # the job lists the harness handed the engine
    original_generate = TransformersEngine.generate

    def recording_generate(self, jobs):
        batches.append(list(jobs))
        return original_generate(self, jobs)

    TransformersEngine.generate = recording_generate
    try:
        with (
            count_forward_tokens(Qwen2_5_VLForConditionalGeneration) as our_log,
            timing(MedbridgeVLM, "generate_until") as our_t,
        ):
            t0 = time.perf_counter()
            ours = simple_evaluate(
                model="medbridge_vlm",
                model_args=f"pretrained={model_dir},engine=transformers,device={args.device},"
                f"dtype={args.dtype},attn_implementation={args.attn_implementation},{pixels},seed={args.seed},"
                f"cache_dir={tempfile.mkdtemp(prefix='cache_', dir=work)}",
                **common,
            )
            our_total = time.perf_counter() - t0
    finally:
        TransformersEngine.generate = original_generate
    lm: MedbridgeVLM = our_t.pop("instance")
    engine = lm.engine
    our_engine_first = engine.stats.engine_seconds
    prompt_lengths = list(engine.stats.prompt_lengths)  # one per prefilled prompt of the first run

    print(
        f"[3/4] timing: {args.repeats} rounds of standard generate_until / ours (fresh cache) / raw engine", flush=True
    )
    base_lm, base_reqs = base_t.pop("instance"), base_t.pop("args")[0]
    for name, module in base_t.pop("modules").items():
        setattr(base_lm, name, module)
    our_reqs = our_t.pop("args")[0]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    raw_texts: list[list[str]] = []

    def raw_engine() -> None:
        raw_texts.clear()
        for jobs in batches:
            raw_texts.extend([s.text for s in samples] for samples in engine.generate(jobs))

    our_engine = [our_engine_first]
    our_texts: dict[int, list[str]] = {}

    def ours_again(batch_size: int) -> None:
        lm.cache = SampleCache(Path(tempfile.mkdtemp(prefix="cache_", dir=work)) / "samples.sqlite")
        lm.batch_size_per_call = engine.batch_size = batch_size
        before = engine.stats.engine_seconds
        try:
            our_texts[batch_size] = [r.text for r in lm.generate_until(our_reqs)]
        finally:
            lm.batch_size_per_call = engine.batch_size = 1
        if batch_size == 1:
            our_engine.append(engine.stats.engine_seconds - before)

    # Alternate the runs so that load changes on a shared machine hit all of them alike.
    base_times, our_times, raw_times, batched_times = [base_t["seconds"]], [our_t["seconds"]], [], []
    base_out: list[list[Any]] = []
    for _ in range(args.repeats):
        raw_times.append(timed(raw_engine))
        our_times.append(timed(lambda: ours_again(1)))
        base_times.append(timed(lambda: base_out.append(base_lm.generate_until(base_reqs))))
    print(f"[4/4] medbridge_vlm with batch_size {args.batch_size}: {1 + args.repeats} rounds", flush=True)
    for _ in range(1 + args.repeats):
        batched_times.append(timed(lambda: ours_again(args.batch_size)))
    raw_seconds = min(raw_times)
    # Load on a shared machine only ever adds time: the least harness time over the least engine time.
    harness_seconds = min(w - e for w, e in zip(our_times, our_engine))
    harness_overhead = harness_seconds / min(our_engine)

    # Same generations? The harness's samples (as lmms-eval logged them) must be the raw engine's,
    # and the batched run's must be batch 1's.
    logged = [
        tuple(_flat(s["resps"] if "resps" in s else s["filtered_resps"])) for t in tasks for s in ours["samples"][t]
    ]
    same = sorted(map(tuple, raw_texts)) == sorted(logged)
    batched_same = our_texts.get(args.batch_size) == our_texts.get(1)

    items = len(ours["samples"][args.task])
    prompt_tokens = sum(prompt_lengths)
    # A timing round only counts if it did the logged run's work: rerunning lmms-eval's backend outside
    # simple_evaluate can decode otherwise (e.g. without the decoding the plugin enforces), and then
    # generates other, often far fewer, tokens.
    base_logged = sorted(
        _flat([s["resps"] if "resps" in s else s["filtered_resps"] for t in tasks for s in base["samples"][t]])
    )
    base_repeats = [
        sorted(_flat([r if isinstance(r, str) else getattr(r, "text", r) for r in out])) == base_logged
        for out in base_out
    ]
    base_kept = [base_times[0]] + [t for t, same_work in zip(base_times[1:], base_repeats) if same_work]
    figures = {
        "items": items,
        "tasks": tasks,
        "prompts_per_item_requested": 1 + 16,
        "prompt_tokens_items_x_length": prompt_tokens,
        "baseline_prefill_tokens": base_log.prefill_tokens,
        "baseline_prefill_rows": base_log.prefill_rows,
        "ours_prefill_tokens": our_log.prefill_tokens,
        "ours_prefill_rows": our_log.prefill_rows,
        "baseline_generate_seconds": statistics.median(base_kept),
        "baseline_rounds_repeating_the_logged_run": base_repeats,
        "ours_generate_seconds": statistics.median(our_times),
        "ours_batched_generate_seconds": statistics.median(batched_times),
        "raw_engine_seconds": raw_seconds,
        "ours_engine_seconds_in_call": min(our_engine),
        "ours_harness_seconds_in_call": harness_seconds,
        "timing_rounds": {
            "baseline": base_times,
            "ours": our_times,
            "ours_engine": our_engine,
            "raw": raw_times,
            f"ours_batch{args.batch_size}": batched_times,
        },
        "baseline_evaluate_seconds": base_total,
        "ours_evaluate_seconds": our_total,
        "raw_matches_harness": same,
        "batched_matches_batch1": batched_same,
        "ours_harness_phase_seconds_all_rounds": lm.phase_seconds,
        "device": args.device,
        "model_dir": str(model_dir),
        "max_new_tokens": args.max_new_tokens,
        # The same settings must mean the same work: lmms-eval's qwen2_5_vl lets the checkpoint's
        # generation_config (e.g. repetition_penalty) into its decoding, which changes how long answers are.
        "baseline_output_tokens": _output_tokens(base, tasks, engine.tokenizer),
        "ours_output_tokens": _output_tokens(ours, tasks, engine.tokenizer),
    }
    figures["baseline_prefills_per_item"] = base_log.prefill_rows / items
    figures["prefills_per_item"] = our_log.prefill_rows / items
    figures["baseline_prefill_ratio"] = base_log.prefill_tokens / prompt_tokens
    figures["prefill_ratio"] = our_log.prefill_tokens / prompt_tokens
    figures["wall_ratio"] = figures["ours_generate_seconds"] / figures["baseline_generate_seconds"]
    # Seconds per generated token, ours over the baseline's: the wall ratio with the work equalised.
    figures["wall_ratio_per_token"] = figures["wall_ratio"] * (
        figures["baseline_output_tokens"] / max(1, figures["ours_output_tokens"])
    )
    figures["overhead"] = harness_overhead
    figures["items_per_s_batch1"] = items / figures["ours_generate_seconds"]
    figures[f"items_per_s_batch{args.batch_size}"] = items / figures["ours_batched_generate_seconds"]
    from medbridge.harness_ext import metric_registry

    for name in ("baseline", "ours"):
        run = base if name == "baseline" else ours
        for task, metric in ((tasks[0], metric_registry.acc1()), (tasks[1], metric_registry.pass_at(16))):
            figures[f"{name}_{metric.name}"] = run["results"][task].get(f"{metric.name},none")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    for k, v in figures.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if not same:
        print(
            "WARNING: raw engine samples differ from the harness's: the overhead compares different work",
            file=sys.stderr,
        )
    if not batched_same:
        print(f"WARNING: batch_size {args.batch_size} gave other samples than batch_size 1", file=sys.stderr)
    print(
        f"wall_ratio_per_token={figures['wall_ratio_per_token']:.4f} (baseline_output_tokens="
        f"{figures['baseline_output_tokens']} ours_output_tokens={figures['ours_output_tokens']})"
    )
    print(
        f"prefills_per_item={figures['prefills_per_item']:.4f} prefill_ratio={figures['prefill_ratio']:.4f} "
        f"wall_ratio={figures['wall_ratio']:.4f} overhead={figures['overhead']:.4f} "
        f"items_per_s_batch1={figures['items_per_s_batch1']:.4f} "
        f"items_per_s_batch{args.batch_size}={figures[f'items_per_s_batch{args.batch_size}']:.4f}"
    )
    return 0


def _output_tokens(run: dict[str, Any], tasks: list[str], tokenizer: Any) -> int:
    """Tokens of every logged response of a run (re-tokenised; the same tokenizer for both backends)."""
    texts = [
        t
        for task in tasks
        for s in run["samples"][task]
        for t in _flat(s["resps"] if "resps" in s else s["filtered_resps"])
    ]
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def _flat(x: Any) -> list:
    """lmms-eval logs responses nested per filter and repeat; flatten to a list of strings."""
    return [z for y in x for z in (_flat(y) if isinstance(y, list) else [y])]


if __name__ == "__main__":
    raise SystemExit(main())
