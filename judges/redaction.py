"""What must never be shown: a judge URL's user, password and query values, the API key, and a command
line's secret flags. ``public_url`` is the form a URL may be shown and stored in; ``scrub`` and
``redact_text`` take secrets out of any text we log, raise or write (a bug-path report too). Every
secret of a judge client made in this process is kept in ``_SECRETS_IN_USE``, and scrubbed from the
log records of httpx and httpcore. (Split from http.py, which re-exports these names.)"""

from __future__ import annotations

import logging
import re
import urllib.parse

__all__ = ["argv_secrets", "public_url", "redact_argv", "redact_text", "scrub", "url_secrets"]


def public_url(url: str) -> str:
    """``url`` as it may be shown and stored: no user or password, every query value masked, no fragment,
    no trailing slash (``http://u:p@h:8000/v1/?token=abc`` -> ``http://h:8000/v1?token=REDACTED``)."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    query = urllib.parse.urlencode(
        [(k, "REDACTED") for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    )
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip("/"), query, ""))


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a URL that must never be shown: the password, the user, every query value."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        found = [parts.password, parts.username]
    except ValueError:
        return ()
    found += [value for _, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return tuple(urllib.parse.unquote(s) for s in found if s)


def scrub(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """``text`` with every secret (as is, URL-quoted, and in a Basic header's base64) replaced by REDACTED."""
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
            text = text.replace(form, "REDACTED")
    return text


# Every secret of a judge client made in this process (keys, URL passwords and query values).
_SECRETS_IN_USE: set[str] = set()
_URL_RE = re.compile(r"https?://[^\s,'\"<>]+", re.IGNORECASE)
_SECRET_FLAG_RE = re.compile(r"^--?[\w-]*(key|token|secret|password|passwd)[\w-]*$", re.IGNORECASE)


def argv_secrets(argv: list[str]) -> tuple[str, ...]:
    """The values of a command line's secret flags (``--api-key X``, ``--api-key=X``: any flag naming a key,
    token, secret or password) and the secrets of every URL in it."""
    found: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if i and _SECRET_FLAG_RE.match(argv[i - 1]) and not arg.startswith("-"):
            found.append(arg)
        elif eq and _SECRET_FLAG_RE.match(flag):
            found.append(value)
        for url in _URL_RE.findall(arg):
            found += url_secrets(url)
    return tuple(found)


def redact_text(text: str, extra: tuple[str, ...] = ()) -> str:
    """Any text (a traceback, a command line) with every URL shown as ``public_url`` and every judge secret
    (of the clients made here, the environment's judge key, ``extra``) replaced by REDACTED."""
    text = _URL_RE.sub(lambda m: public_url(m.group(0)), text)
    from medbridge.harness_ext import settings

    env_key = settings.get_str("MEDBRIDGE_JUDGE_API_KEY")
    return scrub(text, (*_SECRETS_IN_USE, *extra, *((env_key,) if env_key else ())))


def redact_argv(argv: list[str]) -> str:
    """A command line as it may be written to a log: secret flags' values masked, every URL made public."""
    return redact_text(" ".join(argv), argv_secrets(argv))


# httpx logs each request's full URL (INFO "HTTP Request: POST http://...?token=..."): every secret of a
# judge URL in use is scrubbed from the records of httpx and httpcore before any handler sees them.


class _ScrubSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS_IN_USE:
            message = record.getMessage()
            cleaned = scrub(message, tuple(_SECRETS_IN_USE))
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_ScrubSecrets())
