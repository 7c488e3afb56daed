"""W&B: the medbridge summary beside lmms-eval's own metrics.

Given ``--wandb_args``, lmms-eval 0.7.3 logs each task's raw aggregates (one number per metric and
filter) through ``WandbLogger.log_eval_result``: no confidence interval, no support gap, no modality
mean, and nothing saying how the numbers were decoded. ``install()`` (called once by the plugin) adds, right after
lmms-eval's own logging, what ``medbridge report`` computes from the same run:

- summary ``medbridge/<task or group>/<metric>`` with ``..._ci_low``, ``..._ci_high`` and ``..._n``, for
  every row ``leaderboard ingest`` would store (Acc@1, Pass@K, maj@K, the gap, unparsed, distinct; datasets
  and modality / overall means);
- a table ``medbridge/results`` of those rows with their pins (subset hash, prompt version, judge,
  generation settings, config hash, data provenance);
- config ``medbridge``: the medbridge version, each dataset's decoding as run and its differences from the
  paper's, and ``partial`` (what was left out) when the run is partial.

The run is read back from the files lmms-eval has just written (``--output_path`` with ``--log_samples``:
the per-item records the CIs need), the path taken from ``EvaluationTracker.save_results_aggregated``.
Without them, or for a run with no medbridge task, nothing is added and a warning says why. A failure
here never stops lmms-eval's own logging (it runs after it, and is logged as a warning).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "install", "summary_payload"]

log = logging.getLogger(__name__)
PREFIX = "medbridge"
_MARK = "_medbridge_wandb_summary"
_written: list[Path] = []  # results files lmms-eval wrote in this process, newest last


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def summary_payload(results_path: str | Path) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]:
    """(summary keys, table rows, config) for the run whose results file is ``results_path``."""
    from medbridge.harness_ext.report import groups_for, summarize_run
    from medbridge.harness_ext.runs import load_run
    from medbridge.leaderboard.ingest import result_rows

    from medbridge import __version__

    run = load_run(results_path)
    summary = summarize_run(run, allow_partial=True)  # a partial run is logged, and says so in the config
    rows = result_rows(run, summary, groups_for(run.records))
    keys: dict[str, float] = {}
    table = []
    for row in rows:
        base = f"{PREFIX}/{row.task}/{row.metric}"
        for suffix, value in (("", row.value), ("_ci_low", row.ci_low), ("_ci_high", row.ci_high), ("_n", row.n)):
            if _finite(value) is not None:
                keys[base + suffix] = _finite(value)
        table.append({name: getattr(row, name) for name in row.__dataclass_fields__})
    config: dict[str, Any] = {
        "version": __version__,
        "results_file": str(run.results_path),
        "decoding": {base: row.get("decoding", {}) for base, row in summary["datasets"].items()},
        "decoding_vs_paper": {base: row.get("decoding_vs_paper", {}) for base, row in summary["datasets"].items()},
    }
    if summary.get("partial"):
        config["partial"] = summary["partial"]
    return keys, table, config


def log_to_run(wandb_run: Any, results_path: str | Path) -> dict[str, float]:
    """Log ``summary_payload`` to ``wandb_run``; returns the summary keys logged."""
    import wandb

    keys, table, config = summary_payload(results_path)
    if not keys:
        return keys
    wandb_run.summary.update(keys)
    wandb_run.config.update({PREFIX: config}, allow_val_change=True)
    columns = list(table[0])
    wandb_run.log({f"{PREFIX}/results": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in table])})
    return keys


def _has_medbridge_tasks(results: Mapping[str, Any]) -> bool:
    from medbridge.tasks.families import all_task_names

    return bool(set(results.get("results", {})) & all_task_names())


def install() -> None:
    """Wrap lmms-eval's ``EvaluationTracker.save_results_aggregated`` (to learn the results file) and
    ``WandbLogger.log_eval_result`` (to log the summary after lmms-eval's own metrics). Idempotent."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
    from lmms_eval.loggers.wandb_logger import WandbLogger

    save = EvaluationTracker.save_results_aggregated
    if not getattr(save, _MARK, False):

        @functools.wraps(save)
        def save_results_aggregated(self, results, samples, datetime_str):
            out = save(self, results, samples, datetime_str)
            date_id = getattr(self, "date_id", None)
            if self.output_path and date_id:
                model = self.general_config_tracker.model_name_sanitized
                path = Path(self.output_path, model, f"{date_id}_results.json")
                if path.is_file():
                    _written.append(path)
            return out

        setattr(save_results_aggregated, _MARK, True)
        EvaluationTracker.save_results_aggregated = save_results_aggregated

    original = WandbLogger.log_eval_result
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def log_eval_result(self) -> None:
        original(self)
        if not _has_medbridge_tasks(getattr(self, "results", {}) or {}):
            return
        if not _written:
            log.warning("medbridge: no results file was written (give lmms-eval --output_path and --log_samples); "
                        "W&B gets lmms-eval's metrics only, without the medbridge summary")
            return
        try:
            keys = log_to_run(self.run, _written[-1])
            log.info("medbridge: logged %d summary values to W&B from %s", len(keys), _written[-1])
        except Exception as err:  # noqa: BLE001 - lmms-eval's logging is done; ours must not end the run
            log.warning("medbridge: could not log the summary to W&B (%s: %s)", type(err).__name__, err)

    setattr(log_eval_result, _MARK, True)
    WandbLogger.log_eval_result = log_eval_result
