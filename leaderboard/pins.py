"""What identifies an ingested run and pins its numbers: the model, checkpoint, run and step a
results file names; when it was made (in UTC); and the comparability pins of each number (task
config hash, generation settings, provenance, prompt version, judge). Numbers whose pins differ
never share a leaderboard column.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medbridge.harness_ext import limited_io
from medbridge.harness_ext.answers import EXTRACTOR_VERSION
from medbridge.harness_ext.errors import MedbridgeError
from medbridge.harness_ext.prompts import INSTRUCTION, PROMPT_VERSION
from medbridge.leaderboard.store import canonical_json, sha256_text

TRAINING_MARKERS = ("medbridge_training.json", "medbridge_run.json")

# lmms-eval writes a run's time (results["date"], the file names) in its --timezone, Asia/Singapore
# by default, and does not record the zone; the leaderboard stores and shows UTC.
LMMS_EVAL_TIMEZONE = "Asia/Singapore"


def lmms_eval_zone() -> dt.tzinfo:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(LMMS_EVAL_TIMEZONE)
    except ZoneInfoNotFoundError:  # no tz database here: Singapore has been UTC+8 since 1982
        return dt.timezone(dt.timedelta(hours=8), LMMS_EVAL_TIMEZONE)


# ------------------------------------------------------------------ identity of the model


def _model_args(results: Mapping[str, Any]) -> dict[str, str]:
    raw = (results.get("config") or {}).get("model_args") or ""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    out = {}
    for part in str(raw).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


_STEP_RE = re.compile(r"(?:checkpoint|step|global_step)[-_]?(\d+)$")


def describe_model(
    results: Mapping[str, Any], *, model: str | None = None, run: str | None = None, step: int | None = None
) -> dict[str, Any]:
    """model / checkpoint / run / step of a results file; explicit arguments win."""
    args = _model_args(results)
    pretrained = args.get("pretrained") or args.get("model") or args.get("model_name")
    parsed_step, parsed_run, name = None, None, None
    if pretrained:
        is_path = pretrained.startswith(("/", ".", "~")) or Path(pretrained).exists()
        p = Path(pretrained)
        m = _STEP_RE.search(p.name)
        if m:
            parsed_step, parsed_run = int(m.group(1)), p.parent.name or None
            name = parsed_run
        else:
            name = p.name if is_path else pretrained
    if not name:
        name = results.get("model_name") or ""
    if not name:
        backend = (results.get("config") or {}).get("model") or "unknown-model"
        raw = (results.get("config") or {}).get("model_args") or ""
        name = f"{backend}({raw})" if raw else str(backend)
    return {
        "model": model or name,
        "checkpoint": pretrained,
        "run": run if run is not None else parsed_run,
        "step": step if step is not None else parsed_step,
    }


def training_marker(pretrained: str | None) -> dict[str, Any]:
    """The training issue writes a small JSON next to its checkpoints (trained_on, run, step)."""
    if not pretrained:
        return {}
    p = Path(pretrained).expanduser()
    for folder in (p, p.parent):
        for name in TRAINING_MARKERS:
            f = folder / name
            if f.is_file():
                try:
                    data = limited_io.load_json(f, what="training marker", limit=limited_io.CONFIG_LIMIT_BYTES)
                except MedbridgeError:
                    continue
                if isinstance(data, dict):
                    return data
    return {}


def trained_on_of(results: Mapping[str, Any], marker: Mapping[str, Any]) -> str | None:
    meta = results.get("medbridge") if isinstance(results.get("medbridge"), Mapping) else {}
    for source in (meta, marker, (results.get("config") or {}).get("metadata") or {}):
        if isinstance(source, Mapping):
            for key in ("trained_on", "train_dataset", "dataset"):
                value = source.get(key)
                if isinstance(value, (list, tuple)):
                    value = "+".join(map(str, value))
                if value:
                    return str(value)
    return None


def base_model_of(marker: Mapping[str, Any]) -> str | None:
    for key in ("base_model", "model_name_or_path"):
        if marker.get(key):
            return str(marker[key])
    return None


def run_date(results: Mapping[str, Any]) -> str | None:
    """When the run was made, as ISO 8601 in UTC (``2026-03-01T04:00:00+00:00``): lmms-eval's
    zoneless stamp read in its default zone."""
    stamp = str(results.get("date") or "")
    try:
        local = dt.datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=lmms_eval_zone())
    except ValueError:
        return stamp or None
    return local.astimezone(dt.UTC).isoformat()


# ------------------------------------------------------------------ comparability pins

_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


def _scrub(obj: Any) -> Any:
    """Task config without what changes between identical runs (object addresses, local paths)."""
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str):
        s = _ADDR.sub("", obj)
        return Path(s).name if s.startswith("/") else s
    return obj


def task_config_hash(results: Mapping[str, Any], task: str) -> str | None:
    cfg = (results.get("configs") or {}).get(task)
    if cfg is None:
        return None
    return sha256_text(canonical_json(_scrub(cfg)))[:16]


def task_gen_settings(results: Mapping[str, Any], task: str) -> dict[str, Any]:
    """What decides the generations: the task's generation_kwargs and repeats, plus any
    --gen_kwargs given on the lmms-eval command line (it overrides the task's)."""
    cfg = (results.get("configs") or {}).get(task) or {}
    return {
        "generation_kwargs": cfg.get("generation_kwargs") or {},
        "repeats": cfg.get("repeats", 1),
        "cli_gen_kwargs": (results.get("config") or {}).get("gen_kwargs") or "",
    }


# model_args that change what a model answers (image resolution, precision, attention kernel,
# engine, served model); identity (pretrained), placement and secrets are left out on purpose.
OUTPUT_MODEL_ARGS = (
    "min_pixels",
    "max_pixels",
    "dtype",
    "torch_dtype",
    "attn_implementation",
    "use_flash_attention_2",
    "engine",
    "max_num_frames",
    "fps",
    "interleave_visuals",
    "image_resolution",
    "max_image_size",
    "system_prompt",
    "reasoning_prompt",
    "quantization",
    "load_in_4bit",
    "load_in_8bit",
    "revision",
    "model_version",
    "max_images",
)


def _decoding_of(records: Sequence[Mapping[str, Any]]) -> Any:
    """The effective decoding the backend recorded on the records (one setting, or the sorted
    distinct ones), None when the backend recorded none."""
    seen = sorted({canonical_json(r["decoding"]) for r in records if isinstance(r.get("decoding"), Mapping)})
    if not seen:
        return None
    return json.loads(seen[0]) if len(seen) == 1 else [json.loads(x) for x in seen]


def task_provenance(results: Mapping[str, Any], task: str, records: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """What, besides the task's own config, decides a task's numbers: backend, output-changing
    model_args, the effective decoding the backend recorded, the extractor version, and the data
    source and revision (with the subset tag and the data files' sha256 the records carry)."""
    config = results.get("config") if isinstance(results.get("config"), Mapping) else {}
    args = _model_args(results)
    cfg = ((results.get("configs") or {}).get(task) or {}) if isinstance(results.get("configs"), Mapping) else {}
    kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), Mapping) else {}
    subsets = sorted({str(r["subset"]) for r in records if r.get("subset") is not None})
    sources = sorted({str(r["source"]) for r in records if r.get("source") is not None})
    digests = sorted({canonical_json(r["data_sha256"]) for r in records if r.get("data_sha256")})  # file -> sha256
    models = [json.loads(m) for m in sorted({canonical_json(r["model"]) for r in records if r.get("model")})]
    data = {
        "path": cfg.get("dataset_path"),
        "name": cfg.get("dataset_name"),
        "revision": kwargs.get("revision"),
        "files": _scrub(kwargs.get("data_files")),
        "subset": subsets[0] if len(subsets) == 1 else (subsets or None),
        "source": sources[0] if len(sources) == 1 else (sources or None),
        "sha256": json.loads(digests[0]) if len(digests) == 1 else ([json.loads(d) for d in digests] or None),
    }
    return {
        "backend": str(config.get("model") or "unrecorded"),
        "model_args": {k: args[k] for k in OUTPUT_MODEL_ARGS if k in args},
        "decoding": _decoding_of(records),
        "extractor_version": EXTRACTOR_VERSION,
        "data": {k: v for k, v in data.items() if v is not None},
        # The weights' fingerprint medbridge_vlm recorded (harness_ext/backend/identity.py), when it did.
        **({"model": models[0] if len(models) == 1 else models} if models else {}),
    }


def merge_provenance(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One provenance for a number over several tasks (a group row): a field the tasks share
    keeps its value, a field that differs holds the sorted distinct values."""
    merged: dict[str, Any] = {}
    for key in sorted({k for p in parts for k in p}):
        values = [p.get(key) for p in parts]
        if all(isinstance(v, Mapping) for v in values) and key == "data":
            merged[key] = merge_provenance(values)
            continue
        distinct = sorted({canonical_json(v) for v in values})
        merged[key] = json.loads(distinct[0]) if len(distinct) == 1 else [json.loads(v) for v in distinct]
    return merged


def prompt_version_of(samples: Sequence[Mapping[str, Any]]) -> str | None:
    """PROMPT_VERSION when the logged prompts end with our instruction, else a hash of theirs."""
    tails = {str(s.get("input", "")).rstrip().splitlines()[-1] for s in samples if s.get("input")}
    if not tails:
        return None
    if tails == {INSTRUCTION}:
        return PROMPT_VERSION
    return "custom-" + sha256_text("\n".join(sorted(tails)))[:10]


def judge_of(
    results: Mapping[str, Any], task: str, records: Sequence[Mapping[str, Any]] = ()
) -> tuple[str | None, str | None]:
    """Judge model and judge prompt version behind a task's numbers; (None, None) when every
    sample was scored by the rules. Read from the records (``judge_model`` /
    ``judge_prompt_version``) or the task's ``metadata.judge`` block; a judged run that recorded
    neither is pinned as "unrecorded" so it never shares a column with rule-scored numbers."""
    judged = any("judge" in (r.get("sources") or ()) for r in records)
    meta = ((results.get("configs") or {}).get(task) or {}).get("metadata") or {}
    jmeta = meta.get("judge") if isinstance(meta.get("judge"), Mapping) else {}
    from_records = {(r.get("judge_model"), r.get("judge_prompt_version")) for r in records if r.get("judge_model")}
    if from_records:
        model, prompt = sorted(from_records, key=str)[0] if len(from_records) == 1 else ("mixed", "mixed")
    else:
        model = jmeta.get("judge_id") or jmeta.get("model") or meta.get("judge_model")
        prompt = jmeta.get("prompt_version") or meta.get("judge_prompt_version")
    if not judged and not from_records:
        return None, None
    return model or "unrecorded", prompt or "unrecorded"
