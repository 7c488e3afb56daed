"""Closing the loop: every saved checkpoint is evaluated by the harness and lands on the leaderboard.

``CheckpointEvalCallback.on_save`` stages the checkpoint's model files (hard links, so a later
``save_total_limit`` rotation cannot pull them away) and queues them; one background worker runs the
real ``lmms-eval`` CLI on each in a separate process, one at a time, then appends the results to the
leaderboard store with the run name and step. ``evaluate_checkpoint`` is the same evaluation for any
checkpoint by hand (``medbridge eval-checkpoint``).

When evaluations run: never on a training GPU and never while a rank waits in a collective.
With ``ckpt_eval_device`` set (a GPU that training does not use) they run during training on that
device; otherwise the staged checkpoints wait, and after training the trainer's main process hands
over to a fresh evaluator process (:mod:`medbridge.training.evaluations`) once the trainer's GPU memory
is given back. What that process needs is in ``evaluations/plan.json``; what was evaluated is in
``evaluations/evaluations.jsonl``, so checkpoints staged by a killed run are evaluated after its resume.
``finish()`` runs the queue in this process instead (Python use, tests). No trainer hook waits for an
evaluation.

The staged copy is what lmms-eval loaded, so the leaderboard rows point to it: it is kept (hard links
cost no space while the training checkpoint exists; after a rotation they keep the evaluated weights).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.lmms_eval_cli import lmms_eval_command
from transformers import TrainerCallback

__all__ = [
    "TRAINING_MARKER",
    "CheckpointEvalCallback",
    "CheckpointEvalError",
    "EvalSettings",
    "build_eval_command",
    "checkpoint_eval_callback",
    "evaluate_checkpoint",
    "ingest_into_leaderboard",
    "pending_checkpoints",
    "read_records",
    "training_marker_fields",
    "write_training_marker",
]

# Read by the leaderboard's ingest (trained_on / run / step of a checkpoint).
TRAINING_MARKER = "medbridge_training.json"
# In <output_dir>/evaluations/: one JSON line per evaluation tried, and what a fresh evaluator process needs.
RECORDS_FILE = "evaluations.jsonl"
PLAN_FILE = "plan.json"
STAGE_SUFFIX = ".stage.json"  # staged/<run>/checkpoint-N.stage.json: which staging of that step
# Checkpoint files that are training state, not the model: not staged for evaluation.
_TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin")


class CheckpointEvalError(RuntimeError):
    """lmms-eval ran but produced no usable results for a checkpoint."""


@dataclass
class EvalSettings:
    """How a checkpoint is evaluated (lmms-eval arguments) and where its results go."""

    tasks: list[str]
    model: str = "qwen2_5_vl"
    # {checkpoint}, {max_pixels} and {min_pixels} are filled in; other braces are left alone.
    model_args: str = "pretrained={checkpoint},max_pixels={max_pixels},min_pixels={min_pixels},attn_implementation=sdpa"
    max_pixels: int = 802816
    min_pixels: int = 3136
    limit: int | None = None
    gen_kwargs: str | None = None
    batch_size: int = 1
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    extra_args: list[str] = field(default_factory=list)


def build_eval_command(checkpoint: str | Path, settings: EvalSettings, output_path: str | Path) -> list[str]:
    """The lmms-eval command line evaluating ``checkpoint`` into ``output_path``."""
    if not settings.tasks:
        raise ValueError("no evaluation tasks given")
    model_args = (
        settings.model_args.replace("{checkpoint}", str(checkpoint))
        .replace("{max_pixels}", str(settings.max_pixels))
        .replace("{min_pixels}", str(settings.min_pixels))
    )
    cmd = lmms_eval_command() + [
        "--model",
        settings.model,
        "--model_args",
        model_args,
        "--tasks",
        ",".join(settings.tasks),
        "--batch_size",
        str(settings.batch_size),
        "--output_path",
        str(output_path),
        "--log_samples",
    ]
    if settings.limit is not None:
        cmd += ["--limit", str(settings.limit)]
    if settings.gen_kwargs:
        cmd += ["--gen_kwargs", settings.gen_kwargs]
    return cmd + list(settings.extra_args)


def evaluate_checkpoint(checkpoint: str | Path, settings: EvalSettings, output_path: str | Path) -> Path:
    """Run lmms-eval on ``checkpoint`` in a subprocess; return the results JSON.

    lmms-eval logs a failing task and still exits 0, so success means: a results file exists and
    names every requested task (or group). The subprocess output goes to ``output_path/lmms_eval.log``.
    """
    from medbridge.harness_ext.report import load_run
    from medbridge.harness_ext.runs import results_files, results_written_since

    output_path = Path(output_path)
    output_path.mkdir(parents=True, exist_ok=True)
    before = results_files(output_path)  # a retried evaluation finds the failed attempt's files there
    cmd = build_eval_command(checkpoint, settings, output_path)
    env = dict(os.environ)
    env.update(settings.env)
    log_path = output_path / "lmms_eval.log"
    with log_path.open("w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=settings.timeout_s, check=False
        )
    try:
        run = load_run(results_written_since(output_path, before))
    except (FileNotFoundError, ValueError, MedbridgeError) as err:
        raise CheckpointEvalError(
            f"lmms-eval (exit {proc.returncode}) wrote no results for {checkpoint}: {err}; see {log_path}"
        ) from None
    reported = set(run.results.get("results", {})) | set(run.results.get("groups", {}))
    missing = [t for t in settings.tasks if t not in reported]
    if missing:
        raise CheckpointEvalError(f"{run.results_path}: no results for task(s) {missing}; see {log_path}")
    return run.results_path


def ingest_into_leaderboard(
    store: str | Path, results_file: str | Path, *, model: str | None, run: str | None, step: int | None
) -> int:
    """Append one evaluated run (its results file, as ``evaluate_checkpoint`` returned it) to the
    leaderboard store; returns the rows added."""
    from medbridge.leaderboard.ingest import ingest_run

    return ingest_run(store, results_file, model=model, run=run, step=step)


def write_training_marker(folder: str | Path, **fields: Any) -> Path:
    """``medbridge_training.json`` (trained_on, run, step, trainer, ...) next to checkpoints."""
    path = Path(folder) / TRAINING_MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def _stage(checkpoint: Path, staged: Path) -> Path:
    """Model + processor files of a checkpoint in their own folder (hard links when possible)."""
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for f in checkpoint.iterdir():
        if not f.is_file() or f.name in _TRAINING_STATE or f.name.startswith(("rng_state", "care_ema")):
            continue
        try:
            os.link(f, staged / f.name)
        except OSError:
            shutil.copy2(f, staged / f.name)
    # Which staging a record belongs to (next to the folder, which holds model files only): a step saved
    # again after a resume is a new staging, to be evaluated again.
    _stage_file(staged).write_text(json.dumps({"stage_id": f"{time.time_ns()}-{os.getpid()}"}) + "\n")
    return staged


def _stage_file(staged: Path) -> Path:
    return staged.with_name(staged.name + STAGE_SUFFIX)


def _stage_id(staged: Path) -> str | None:
    try:
        return str(json.loads(_stage_file(staged).read_text())["stage_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_records(eval_root: str | Path) -> list[dict[str, Any]]:
    """The lines of ``<eval_root>/evaluations.jsonl``, one per evaluation tried (unparsable lines skipped)."""
    path = Path(eval_root) / RECORDS_FILE
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def pending_checkpoints(
    eval_root: str | Path, run_name: str, *, retry_failed: bool = False
) -> list[tuple[int, Path]]:
    """(step, folder) of the staged checkpoints of ``run_name`` whose staging has no evaluation record (with
    ``retry_failed``: no successful one), by step."""
    done = [
        r
        for r in read_records(eval_root)
        if r.get("run") == run_name and "step" in r and not (retry_failed and "error" in r)
    ]
    done_ids = {r["stage_id"] for r in done if r.get("stage_id")}
    done_steps = {int(r["step"]) for r in done}
    staged = Path(eval_root) / "staged" / run_name
    found = []
    for folder in staged.iterdir() if staged.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if not (match and folder.is_dir()):
            continue
        stage_id = _stage_id(folder)
        evaluated = stage_id in done_ids if stage_id is not None else int(match.group(1)) in done_steps
        if not evaluated:
            found.append((int(match.group(1)), folder))
    return sorted(found)


class CheckpointEvalCallback(TrainerCallback):
    """On every save: stage the checkpoint and queue its evaluation; results go to the leaderboard.

    Records one line per checkpoint in ``<eval_root>/evaluations.jsonl`` (run, step, checkpoint,
    results file, leaderboard rows added or the error). Only the main process queues work.
    ``during_training=True`` evaluates while training goes on (only with a device of its own, see the
    module docstring); otherwise the queue waits for :meth:`finish`, called after the final save.
    """

    def __init__(
        self,
        settings: EvalSettings,
        *,
        eval_root: str | Path,
        run_name: str,
        model_name: str | None = None,
        leaderboard_store: str | Path | None = None,
        during_training: bool = False,
    ):
        self.settings = settings
        self.eval_root = Path(eval_root)
        self.run_name = run_name
        self.model_name = model_name or run_name
        self.leaderboard_store = leaderboard_store
        self.during_training = during_training
        self.records: list[dict[str, Any]] = []
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- trainer hooks -------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.write_plan()
        if self.during_training:  # checkpoints staged by an earlier process that was killed before evaluating
            for step, folder in pending_checkpoints(self.eval_root, self.run_name):
                self.submit(folder, step)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
        if not checkpoint.is_dir():
            return
        write_training_marker(checkpoint, **self._marker_fields(args, step))
        # Folder named <run>/checkpoint-<step>, so lmms-eval's output and the leaderboard read run and step.
        staged = _stage(checkpoint, self.eval_root / "staged" / self.run_name / f"checkpoint-{step}")
        self.submit(staged, step)

    # -- the plan: what a fresh evaluator process needs ------------------------------------------

    def write_plan(self) -> Path:
        """``<eval_root>/plan.json``: lmms-eval settings, run and model name, leaderboard store (absolute)."""
        store = None if self.leaderboard_store is None else str(Path(self.leaderboard_store).resolve())
        plan = {
            "settings": asdict(self.settings),
            "run_name": self.run_name,
            "model_name": self.model_name,
            "leaderboard_store": store,
        }
        self.eval_root.mkdir(parents=True, exist_ok=True)
        path = self.eval_root / PLAN_FILE
        path.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_plan(cls, eval_root: str | Path) -> CheckpointEvalCallback:
        """The callback a run's ``plan.json`` describes (for evaluations in another process)."""
        from medbridge.harness_ext.limited_io import load_json

        path = Path(eval_root) / PLAN_FILE
        if not path.is_file():
            raise MedbridgeError(
                f"{path} does not exist: is {Path(eval_root).parent} the output_dir of a medbridge training run "
                "with ckpt_eval: true?"
            )
        plan = load_json(path, what="evaluation plan")
        return cls(
            EvalSettings(**plan["settings"]),
            eval_root=eval_root,
            run_name=plan["run_name"],
            model_name=plan["model_name"],
            leaderboard_store=plan["leaderboard_store"],
        )

    # -- queue ---------------------------------------------------------------------------------

    def finish(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """After training (main process, after the final save): run what is queued and wait for it."""
        self.during_training = True
        self._start_worker()
        return self.wait(timeout)

    def submit(self, checkpoint: Path, step: int) -> None:
        self._queue.put((checkpoint, step))
        if self.during_training:
            self._start_worker()

    def _start_worker(self) -> None:
        if self._queue.unfinished_tasks and (self._worker is None or not self._worker.is_alive()):
            self._worker = threading.Thread(target=self._drain, name="medbridge-ckpt-eval", daemon=True)
            self._worker.start()

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until every queued checkpoint is evaluated; returns the records so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return list(self.records)

    def _drain(self) -> None:
        while True:
            try:
                checkpoint, step = self._queue.get(timeout=1.0)
            except queue.Empty:
                return
            try:
                self.evaluate_one(checkpoint, step)
            finally:
                self._queue.task_done()

    def evaluate_one(self, checkpoint: Path, step: int, **observed: Any) -> dict[str, Any]:
        """Evaluate one staged checkpoint now (this thread), record it, and return the record;
        ``observed`` adds what was measured around it (e.g. GPU memory in use before it started)."""
        out = self.eval_root / f"step-{step}"
        record: dict[str, Any] = {
            "run": self.run_name,
            "step": step,
            "checkpoint": str(checkpoint),
            "tasks": self.settings.tasks,
            "output_path": str(out),
            "stage_id": _stage_id(Path(checkpoint)),
            **observed,
        }
        started = time.monotonic()
        try:
            record["results"] = str(evaluate_checkpoint(checkpoint, self.settings, out))
            if self.leaderboard_store is not None:
                record["leaderboard_rows"] = ingest_into_leaderboard(
                    self.leaderboard_store, record["results"], model=self.model_name, run=self.run_name, step=step
                )
        except Exception as err:  # noqa: BLE001 - a failed evaluation must never kill training; it is recorded
            record["error"] = f"{type(err).__name__}: {err}"
            print(
                f"[medbridge] checkpoint evaluation failed at step {step}: {record['error']}",
                file=sys.stderr,
                flush=True,
            )
        record["seconds"] = round(time.monotonic() - started, 1)
        with self._lock:
            self.records.append(record)
            self.eval_root.mkdir(parents=True, exist_ok=True)
            with (self.eval_root / RECORDS_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        return record

    def _marker_fields(self, args, step: int) -> dict[str, Any]:
        marker_path = Path(args.output_dir) / TRAINING_MARKER
        fields: dict[str, Any] = {}
        if marker_path.is_file():
            try:
                fields = json.loads(marker_path.read_text())
            except ValueError:
                fields = {}
        fields.update(run=self.run_name, step=step)
        return fields


# ---------------------------------------------------------------------------------------------
# What the entry points use
# ---------------------------------------------------------------------------------------------


def training_marker_fields(kind: str, script_args: Any, training_args: Any, model_args: Any) -> dict[str, Any]:
    """The fields of ``medbridge_training.json`` for a run: trainer, base model, data, hyperparameters."""
    if script_args.data_source == "disk":
        trained_on = script_args.dataset_name
    else:
        trained_on = "+".join(script_args.medmnist_datasets) + f"/{script_args.medmnist_split}"
    fields = {
        "trainer": kind,
        "base_model": model_args.model_name_or_path,
        "trained_on": trained_on,
        "run": script_args.leaderboard_run_name or Path(training_args.output_dir).name,
        "learning_rate": training_args.learning_rate,
        "max_pixels": getattr(training_args, "max_pixels", None),
    }
    for name in (
        "loss_type",
        "beta",
        "num_generations",
        "scale_rewards",
        "temperature",
        "reward_names",
        "max_grad_norm",
        "weight_decay",
        "care_ema_decay",
        "care_ema_interval",
        "care_consistency_clamp",
        "care_bonus_coef",
        "care_margin",
    ):
        if hasattr(training_args, name):
            fields[name] = getattr(training_args, name)
    return fields


def checkpoint_eval_callback(script_args: Any, training_args: Any) -> CheckpointEvalCallback | None:
    """The on-save evaluation a recipe asks for (None when ckpt_eval is off).

    Without ``ckpt_eval_device`` the evaluations run after training (never on a training GPU); with it
    they run during training with ``CUDA_VISIBLE_DEVICES`` set to that device.
    """
    if not script_args.ckpt_eval:
        return None
    from medbridge.leaderboard.store import default_store_path

    env = {}
    if script_args.ckpt_eval_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = script_args.ckpt_eval_device
    settings = EvalSettings(
        tasks=list(script_args.ckpt_eval_tasks),
        model=script_args.ckpt_eval_model,
        model_args=script_args.ckpt_eval_model_args,
        max_pixels=training_args.max_pixels,
        min_pixels=training_args.min_pixels,
        limit=script_args.ckpt_eval_limit,
        gen_kwargs=script_args.ckpt_eval_gen_kwargs,
        batch_size=script_args.ckpt_eval_batch_size,
        env=env,
    )
    run_name = script_args.leaderboard_run_name or Path(training_args.output_dir).name
    return CheckpointEvalCallback(
        settings,
        eval_root=Path(training_args.output_dir) / "evaluations",
        run_name=run_name,
        leaderboard_store=script_args.leaderboard_store or default_store_path(),
        during_training=script_args.ckpt_eval_device is not None,
    )
