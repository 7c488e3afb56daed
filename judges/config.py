"""Which judge to ask and how: ``JudgeConfig`` and its resolution.

Highest precedence first:

1. explicit arguments (CLI flags, Python callers),
2. a task YAML's ``metadata: {judge: {...}}`` block (base_url, model, judge_id, mode, concurrency, ...),
3. the environment, read through harness_ext/settings.py: ``MEDBRIDGE_JUDGE_BASE_URL``,
   ``MEDBRIDGE_JUDGE_MODEL``, ``MEDBRIDGE_JUDGE_ID``, ``MEDBRIDGE_JUDGE_API_KEY``,
   ``MEDBRIDGE_JUDGE_MODE``, ``MEDBRIDGE_JUDGE_CONCURRENCY``, ``MEDBRIDGE_JUDGE_TIMEOUT``,
   ``MEDBRIDGE_JUDGE_MAX_ATTEMPTS``, ``MEDBRIDGE_JUDGE_DEADLINE``, ``MEDBRIDGE_JUDGE_CACHE``.

``base_url`` may name several replicas of one judge: comma-separated in the environment or a
flag (``http://a:8000/v1,http://b:8000/v1``), or a list in a task's judge block; ``base_urls`` is
the tuple. Requests are spread over them (replicas.py); ``concurrency`` is per replica.

The API key is bound to the base URL(s) it was given with: the environment's key goes only to the
environment's base URLs, so a task file that points ``base_url`` elsewhere gets no key (a task
file may never carry a key itself). The key is excluded from ``repr`` and never logged, cached
or written to a record; so are URL credentials and query values (``repr`` shows ``public_url``s).

Modes: ``rules`` (our extractor only), ``judge`` (every sample judged; rules still recorded to
measure agreement), ``cascade`` (rules settle what they can read, the judge the rest). The
default is ``cascade`` when a judge endpoint is configured and ``rules`` otherwise.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medbridge.harness_ext import settings
from medbridge.harness_ext.errors import SettingError
from medbridge.judges.http import DEFAULT_MAX_REPLY_BYTES, public_url

__all__ = ["MODES", "JudgeConfig", "active_config", "split_urls"]

log = logging.getLogger(__name__)

MODES = ("rules", "judge", "cascade")

_ENV_STR = {
    "base_url": "MEDBRIDGE_JUDGE_BASE_URL",
    "model": "MEDBRIDGE_JUDGE_MODEL",
    "judge_id": "MEDBRIDGE_JUDGE_ID",
    "api_key": "MEDBRIDGE_JUDGE_API_KEY",
    "mode": "MEDBRIDGE_JUDGE_MODE",
    "cache_path": "MEDBRIDGE_JUDGE_CACHE",
}
_ENV_INT = {"concurrency": "MEDBRIDGE_JUDGE_CONCURRENCY", "max_attempts": "MEDBRIDGE_JUDGE_MAX_ATTEMPTS"}
_ENV_FLOAT = {"timeout_s": "MEDBRIDGE_JUDGE_TIMEOUT", "deadline_s": "MEDBRIDGE_JUDGE_DEADLINE"}
_INTS = ("concurrency", "max_attempts", "max_tokens", "breaker_failures", "max_reply_bytes")
_FLOATS = ("timeout_s", "backoff_initial_s", "backoff_max_s", "retry_after_max_s", "deadline_s")
_warned: set[tuple[str, str]] = set()


def split_urls(value: Any) -> tuple[str, ...]:
    """Base URLs from a comma-separated string or a list (blank entries dropped)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(item.strip() for item in items if item.strip())


def _same_url(a: Any, b: Any) -> bool:
    urls_a = {u.rstrip("/") for u in split_urls(a)}
    return bool(urls_a) and urls_a == {u.rstrip("/") for u in split_urls(b)}


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    # A name for the judge that the verdict cache is keyed on. Unset: derived from the served
    # model name, the base URL and what the server's /v1/models reports (see client.py).
    judge_id: str | None = None
    mode: str = "rules"
    # Defaults from harness_ext/settings.py's table (env={}: the table's value, not the environment's).
    concurrency: int = settings.get_int("MEDBRIDGE_JUDGE_CONCURRENCY", env={})
    timeout_s: float = settings.get_float("MEDBRIDGE_JUDGE_TIMEOUT", env={})  # one HTTP request
    max_attempts: int = settings.get_int("MEDBRIDGE_JUDGE_MAX_ATTEMPTS", env={})
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0  # a server's Retry-After is honoured up to this long
    deadline_s: float = settings.get_float("MEDBRIDGE_JUDGE_DEADLINE", env={})  # all judging of one run; 0: none
    breaker_failures: int = 5  # verdicts failed in a row (after retries) that open the breaker; 0: off
    max_tokens: int = 16
    cache_path: str | None = None  # None: the default path; "off" (or ""): no cache
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES  # one reply, as sent and as inflated

    def __repr__(self) -> str:
        shown = ",".join(public_url(u) for u in self.base_urls) or None
        return (
            f"JudgeConfig(base_url={shown!r}, model={self.model!r}, judge_id={self.judge_id!r}, mode={self.mode!r}, "
            f"concurrency={self.concurrency}, timeout_s={self.timeout_s}, deadline_s={self.deadline_s})"
        )

    def __post_init__(self) -> None:
        if self.base_url is not None and not isinstance(self.base_url, str):  # a list of replicas
            object.__setattr__(self, "base_url", ",".join(split_urls(self.base_url)) or None)
        if self.mode not in MODES:
            raise SettingError(f"judge mode must be one of {MODES}, got {self.mode!r} (MEDBRIDGE_JUDGE_MODE)")
        if self.mode != "rules" and not self.configured:
            raise SettingError(
                f"judge mode {self.mode!r} needs a judge base_url and model "
                "(set MEDBRIDGE_JUDGE_BASE_URL and MEDBRIDGE_JUDGE_MODEL)"
            )
        for url in self.base_urls:
            if not _is_http_url(url):
                raise SettingError(
                    f"judge base_url {public_url(url)!r} is not an http(s) URL (MEDBRIDGE_JUDGE_BASE_URL or "
                    "--base-url, e.g. http://127.0.0.1:8000/v1; several replicas separated by commas)"
                )
        if len({u.rstrip("/") for u in self.base_urls}) != len(self.base_urls):
            raise SettingError(f"judge base_url lists a replica twice: {[public_url(u) for u in self.base_urls]}")
        if self.concurrency < 1 or self.max_attempts < 1:
            raise SettingError("judge concurrency and max_attempts must be >= 1")
        if self.max_reply_bytes < 1024:
            raise SettingError(f"judge max_reply_bytes must be >= 1024, got {self.max_reply_bytes}")
        if self.timeout_s <= 0 or self.deadline_s < 0 or self.breaker_failures < 0:
            raise SettingError("judge timeout_s must be > 0, deadline_s and breaker_failures >= 0")

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The judge's replicas (one URL when there is one server)."""
        return split_urls(self.base_url)

    @property
    def configured(self) -> bool:
        return bool(self.base_urls and self.model)

    @property
    def cache_enabled(self) -> bool:
        return self.cache_path is None or self.cache_path.strip().lower() not in ("", "off", "none", "0")

    @classmethod
    def resolve(
        cls,
        explicit: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> JudgeConfig:
        """Merge explicit args > task metadata (``metadata["judge"]`` or the mapping itself) > environment."""
        values: dict[str, Any] = {}
        # Only what the environment sets: the rest keeps the dataclass defaults (the settings table's).
        for name, var in _ENV_STR.items():
            if settings.is_set(var, env=env):
                values[name] = settings.get_str(var, env=env)
        for name, var in _ENV_INT.items():
            if settings.is_set(var, env=env):
                values[name] = settings.get_int(var, minimum=1, env=env)
        for name, var in _ENV_FLOAT.items():
            if settings.is_set(var, env=env):
                values[name] = settings.get_float(var, minimum=0.0, env=env)
        env_key, env_url = values.get("api_key"), values.get("base_url")

        meta = dict((metadata or {}).get("judge", metadata or {}))
        if "api_key" in meta:
            raise SettingError("a task file must not carry a judge api_key; set MEDBRIDGE_JUDGE_API_KEY instead")
        explicit = dict(explicit or {})
        known = set(cls.__dataclass_fields__)
        for where, source in (("task metadata judge", meta), ("judge argument", explicit)):
            for name, value in source.items():
                if name not in known:
                    raise SettingError(f"unknown judge setting {name!r} in {where} (known: {sorted(known)})")
                if value is None:
                    continue
                if name == "base_url" and isinstance(value, (list, tuple)):
                    value = ",".join(split_urls(value))
                try:
                    values[name] = int(value) if name in _INTS else float(value) if name in _FLOATS else value
                except (TypeError, ValueError):
                    kind = "an integer" if name in _INTS else "a number"
                    raise SettingError(f"{where} {name}={value!r} is not {kind}") from None

        if explicit.get("api_key") is None and env_key and not _same_url(values.get("base_url"), env_url):
            # The environment's key was given for the environment's URL only.
            values.pop("api_key", None)
            warn = (str(values.get("base_url")), str(env_url))
            if warn not in _warned:
                _warned.add(warn)
                log.warning(
                    "not sending MEDBRIDGE_JUDGE_API_KEY to %s: it was given for MEDBRIDGE_JUDGE_BASE_URL=%s",
                    ",".join(public_url(u) for u in split_urls(values.get("base_url"))),
                    ",".join(public_url(u) for u in split_urls(env_url)),
                )
        if "mode" not in values:
            values["mode"] = "cascade" if values.get("base_url") and values.get("model") else "rules"
        return cls(**values)


def active_config() -> JudgeConfig:
    """The configuration our tasks use: the environment (explicit/metadata go through resolve())."""
    return JudgeConfig.resolve()


def _is_http_url(url: str) -> bool:
    """http(s) with a host that parses (urllib raises on e.g. an unclosed IPv6 bracket)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        return False
