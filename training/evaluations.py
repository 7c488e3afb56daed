"""Checkpoint evaluations after training, in a fresh process once the trainer has given back the GPUs.

The trainer only stages its checkpoints (:class:`medbridge.training.callbacks.CheckpointEvalCallback`).
When training and the final save are over, :func:`hand_over` makes the trainer's main process *become*
the evaluator: every rank passes a last barrier and leaves the process group, ranks > 0 return (and
exit), and the main process runs the exit hooks a normal exit would run and replaces itself (``exec``) with

    python -m medbridge.training.evaluations OUTPUT_DIR

so the kernel takes back its GPU memory (policy, optimizer state, reference model, a colocated vLLM
engine, the CUDA context) before lmms-eval loads the first checkpoint, while ``medbridge train`` and
``accelerate launch`` still return only once the evaluations are done (same process id, same output,
its exit status). The evaluator reads ``evaluations/plan.json`` (lmms-eval settings, run name, leaderboard
store), evaluates every staged checkpoint with no record yet (also those of an earlier process killed
before its evaluations ran), records the GPU memory in use before each one (``nvidia-smi``, when there is
one), and prints where each checkpoint's results and leaderboard rows went. ``medbridge train evaluate
OUTPUT_DIR`` does the same by hand and retries failed ones. With ``ckpt_eval_device`` (a GPU training does
not use) the evaluations ran during training instead, with ``CUDA_VISIBLE_DEVICES`` set for lmms-eval.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from medbridge.training.callbacks import CheckpointEvalCallback, pending_checkpoints

__all__ = [
    "evaluate_pending",
    "finish_run",
    "gpu_memory_in_use",
    "hand_over",
    "main",
    "process_rss_mib",
    "summary_lines",
]


def gpu_memory_in_use() -> dict[str, int] | None:
    """MiB in use per GPU, all processes, as ``nvidia-smi`` reports it; None where there is no nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    usage = {}
    for line in out.splitlines():
        index, _, used = line.partition(",")
        if used.strip().isdigit():
            usage[index.strip()] = int(used.strip())
    return usage


def process_rss_mib() -> float | None:
    """Resident memory of this process now (Linux ``/proc/self/status``), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def summary_lines(records: list[dict[str, Any]], store: str | os.PathLike[str] | None) -> list[str]:
    """One line per evaluated checkpoint: where its results and leaderboard rows went, or why it failed."""
    lines = []
    for r in sorted(records, key=lambda r: r["step"]):
        name = f"checkpoint-{r['step']}"
        if "error" in r:
            lines.append(f"{name}: evaluation FAILED: {r['error']} (lmms-eval log: {r['output_path']}/lmms_eval.log)")
        elif store is None:
            lines.append(f"{name}: results {r['results']}; no leaderboard store configured")
        else:
            lines.append(
                f"{name}: results {r['results']}; leaderboard {store}: {r.get('leaderboard_rows', 0)} row(s) "
                f"(run {r['run']}, step {r['step']})"
            )
    return lines


def _print_summary(callback: CheckpointEvalCallback) -> None:
    for line in summary_lines(callback.records, callback.leaderboard_store):
        print(f"[medbridge] {line}", file=sys.stderr if "FAILED" in line else sys.stdout, flush=True)
    print(f"[medbridge] every evaluation of this run: {callback.eval_root / 'evaluations.jsonl'}", flush=True)


def evaluate_pending(output_dir: str | os.PathLike[str], *, retry_failed: bool = False) -> list[dict[str, Any]]:
    """Evaluate a run's staged checkpoints that have no record yet (with ``retry_failed``: no successful one),
    one at a time in this process's children; print where the results went; return the new records."""
    callback = CheckpointEvalCallback.from_plan(Path(output_dir) / "evaluations")
    pending = pending_checkpoints(callback.eval_root, callback.run_name, retry_failed=retry_failed)
    print(
        f"[medbridge] {len(pending)} checkpoint(s) of run {callback.run_name} to evaluate with lmms-eval "
        f"({', '.join(callback.settings.tasks)})",
        flush=True,
    )
    for step, folder in pending:
        # What the evaluator held when lmms-eval started: after the hand-over, not the trainer's memory.
        callback.evaluate_one(
            folder,
            step,
            evaluator_pid=os.getpid(),
            evaluator_rss_mib_before=process_rss_mib(),
            gpu_memory_mib_before=gpu_memory_in_use(),
        )
    _print_summary(callback)
    return callback.records


def hand_over(trainer: Any) -> None:
    """After training and the final save, on every rank (see the module docstring). Returns on ranks > 0
    and when no staged checkpoint waits; otherwise the main process becomes the evaluator and does not return."""
    callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CheckpointEvalCallback)]
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()  # no rank is inside a collective from here on
    if not callbacks or not accelerator.is_main_process:
        return
    callback = callbacks[0]
    if callback.during_training:
        callback.wait()  # those ran on a GPU of their own while training went on
    if not pending_checkpoints(callback.eval_root, callback.run_name):
        _print_summary(callback)
        return
    import torch

    held = f"trainer pid {os.getpid()}, resident memory {process_rss_mib()} MiB"
    if torch.cuda.is_available():
        held += f", peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    print(f"[medbridge] {held}", flush=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    print(
        "[medbridge] training done; the checkpoint evaluations run next in a fresh process (exec), after this "
        "trainer's memory is given back",
        flush=True,
    )
    command = [sys.executable, "-m", "medbridge.training.evaluations", str(trainer.args.output_dir)]
    atexit._run_exitfuncs()  # exec skips the interpreter's exit: flush logs, close trackers as an exit would
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def finish_run(trainer: Any) -> None:
    """The end of ``medbridge train`` / ``python -m medbridge.training.{grpo,sft}``: say where the model went,
    then :func:`hand_over` to the checkpoint evaluations (does not return on the main process while
    staged checkpoints wait)."""
    if trainer.accelerator.is_main_process:
        out = Path(trainer.args.output_dir)
        checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.rpartition("-")[2] or 0))
        print(
            f"[medbridge] final model (step {trainer.state.global_step}): {out}"
            + (f"; checkpoints: {', '.join(p.name for p in checkpoints)}" if checkpoints else ""),
            flush=True,
        )
    hand_over(trainer)


def main(argv: list[str] | None = None) -> int:
    """``python -m medbridge.training.evaluations OUTPUT_DIR [--retry-failed]``: 0 when every evaluation
    succeeded, 1 when one failed (it is recorded and printed), 2 for a folder that is not a run's."""
    from medbridge.error_handling import run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) not in (1, 2) or argv[0].startswith("-") or argv[1:] not in ([], ["--retry-failed"]):
        print("usage: python -m medbridge.training.evaluations OUTPUT_DIR [--retry-failed]", file=sys.stderr)
        return 2

    def run() -> int:
        records = evaluate_pending(argv[0], retry_failed=argv[1:] == ["--retry-failed"])
        return 1 if any("error" in r for r in records) else 0

    return run_guarded(run, ["train", "evaluate", *argv], lambda: "medbridge train evaluate")


if __name__ == "__main__":
    sys.exit(main())
