"""The one HTTP client of the judge: every call to a judge server goes through ``JudgeHTTP`` (chat
verdicts and the ``/v1/models`` identity in client.py, ``medbridge judge check``, the health and metrics
of a judge we started in server.py), so one policy holds everywhere:

- **No redirect to another origin.** A 3xx whose target is another scheme, host or port is refused
  (``RedirectRefused``): nothing is sent there, so the key never leaves, and no verdict is taken from
  it. Same-origin redirects are followed (at most 5; a POST only on 307/308, which keep the body).
- **A whole-request deadline.** Connect, send, headers and every byte of the body must arrive within
  ``timeout_s`` (``RequestTimeout``); a server trickling one byte at a time is cut there, whatever
  the per-read timeouts would allow.
- **A reply-size cap.** ``max_reply_bytes`` bounds the body as sent (compressed) and as inflated
  (gzip/deflate are inflated here, in bounded steps; any other Content-Encoding is refused), so a
  compression bomb costs at most the cap in memory (``ReplyTooLarge``).
- **Transient errors are errors.** 408/429/5xx (``HTTPStatusError``, with the server's Retry-After),
  connection faults (``Unreachable``) and a 200 whose body is a server error (an ``{"error": ...}``
  object, or text such as "Error: upstream model overloaded": ``TransientReply``) are raised as
  retryable errors, never returned as a reply, so nothing transient can become a cached verdict.
- **Secrets stay out.** URL credentials become a Basic header (or the API key a Bearer header) and
  never appear in a message: ``public_url`` drops user and password and masks every query value;
  ``scrub`` removes the key, the password and the query values from any text we log or raise.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import json
import logging
import os
import re
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "HTTPStatusError",
    "JudgeHTTP",
    "JudgeHTTPError",
    "NotJSON",
    "RedirectRefused",
    "ReplyTooLarge",
    "RequestTimeout",
    "TransientReply",
    "Unreachable",
    "argv_secrets",
    "get_json",
    "get_text",
    "looks_like_server_error",
    "public_url",
    "redact_argv",
    "redact_text",
    "retry_after_s",
    "scrub",
]

DEFAULT_MAX_REPLY_BYTES = 1 << 20  # a verdict is ~1 KB, a /v1/models list a few KB
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A reply that is a server's error message rather than an answer (as proxies and gateways send with a 200).
_SERVER_ERROR_RE = re.compile(
    r"^\W{0,3}(error\b|internal server error|service unavailable|bad gateway|gateway time-?out|"
    r"upstream\b.{0,80}\b(error|overload|unavailable|timeout)|(model|server) (is )?overloaded|rate limit)",
    re.IGNORECASE | re.DOTALL,
)


class JudgeHTTPError(Exception):
    """A judge request that gave no usable reply. ``reason`` is a short name recorded with a failed verdict;
    the message names the judge by its public URL and carries no secret."""

    retryable = False

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or type(self).__name__


class Unreachable(JudgeHTTPError):
    """Connection refused or reset, DNS, TLS, a broken reply (a transport fault)."""

    retryable = True


class RequestTimeout(JudgeHTTPError):
    """No complete reply within the whole-request deadline."""

    retryable = True


class TransientReply(JudgeHTTPError):
    """A 200 whose body is a server's error message, or a damaged (undecodable) body."""

    retryable = True


class HTTPStatusError(JudgeHTTPError):
    def __init__(self, message: str, status: int, retry_after: float | None = None):
        super().__init__(message, reason=f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after
        self.retryable = status >= 500 or status in (408, 429)


class RedirectRefused(JudgeHTTPError):
    """A redirect to another origin (or one that would change a POST), never followed."""


class ReplyTooLarge(JudgeHTTPError):
    """The body passed the size cap, compressed or inflated."""


class NotJSON(JudgeHTTPError):
    """A 200 whose body is not JSON (and not a server error message either)."""


# ----------------------------------------------------------------------------------------- secrets


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


def looks_like_server_error(text: str) -> bool:
    """Is this reply text a server's error message ("Error: upstream model overloaded", "Bad Gateway")?"""
    return bool(_SERVER_ERROR_RE.match(text.strip()))


def retry_after_s(status: int | None, headers: Mapping[str, str] | None) -> float | None:
    """Seconds a 429/503 reply asked us to wait (``retry-after-ms``, or ``Retry-After``: seconds or an HTTP date)."""
    if status not in (429, 503) or not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    try:
        if lowered.get("retry-after-ms"):
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        value = lowered.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


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


# -------------------------------------------------------------------------------------- the client


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One certificate-verifying TLS context for every client (building one costs ~60 ms): httpx's own
    default, certifi's bundle, or the SSL_CERT_FILE / SSL_CERT_DIR the environment names."""
    import certifi

    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    return ssl.create_default_context(cafile=cafile or (None if capath else certifi.where()), capath=capath)


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int | None]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


class JudgeHTTP:
    """HTTP to one judge server (``base_url``, e.g. ``http://host:8000/v1``) under the policy above.

    Async; one instance per event loop. ``request`` returns ``(status, headers, body)`` for any 2xx and
    raises a ``JudgeHTTPError`` otherwise; ``request_json`` also parses the body.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_connections: int = 64,
    ):
        import httpx

        parts = urllib.parse.urlsplit(base_url.strip())
        self.origin = _origin(parts)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        self._base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._query = parts.query
        self.public = public_url(base_url)
        public = urllib.parse.urlsplit(self.public)
        self._public_base = urllib.parse.urlunsplit((public.scheme, public.netloc, public.path, "", ""))
        self._public_query = f"?{public.query}" if public.query else ""
        self.secrets = tuple(s for s in (api_key, *url_secrets(base_url)) if s)
        self.timeout_s = timeout_s
        self.max_reply_bytes = max_reply_bytes
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate", "User-Agent": "medbridge-judge"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif parts.username or parts.password:
            user = urllib.parse.unquote(parts.username or "")
            token = base64.b64encode(f"{user}:{urllib.parse.unquote(parts.password or '')}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
            self.secrets += (token,)
        self._headers = headers
        _SECRETS_IN_USE.update(self.secrets)
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # ours: same origin only (see request)
            verify=_tls_context(),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def url_for(self, path: str) -> str:
        return self._base + path + (f"?{self._query}" if self._query else "")

    def where(self, path: str) -> str:
        """How a request is named in messages: the public URL of ``path``."""
        return f"judge {self._public_base}{path}{self._public_query}"

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request, all of it (redirect hops and the whole body) within ``timeout_s``."""
        import httpx

        seconds = self.timeout_s if timeout_s is None else timeout_s
        where = self.where(path)
        content = json.dumps(body, ensure_ascii=True).encode("ascii") if body is not None else None
        sent = dict(self._headers, **(headers or {}))
        if content is not None:
            sent["Content-Type"] = "application/json"
        url = self.url_for(path)
        try:
            async with asyncio.timeout(seconds):
                for _ in range(MAX_REDIRECTS + 1):
                    status, reply_headers, data = await self._once(method, url, content, sent, where)
                    if status not in _REDIRECTS:
                        break
                    url = self._redirect_target(url, reply_headers.get("location", ""), status, method, where)
                else:
                    raise RedirectRefused(f"{where}: more than {MAX_REDIRECTS} redirects")
        except (TimeoutError, httpx.TimeoutException):
            raise RequestTimeout(f"{where}: no complete reply within {seconds:.1f} s (whole request)") from None
        except httpx.TransportError as exc:  # connect, read, write, protocol, per-phase timeouts
            raise Unreachable(f"{where}: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            excerpt = self.scrub(data[:200].decode("utf-8", "replace")).replace("\n", " ")
            raise HTTPStatusError(
                f"{where}: HTTP {status} {excerpt!r}", status, retry_after_s(status, reply_headers)
            )
        return status, reply_headers, data

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and the body parsed as JSON; a server error in a 200 is ``TransientReply``."""
        _, _, data = await self.request(method, path, **kwargs)
        where = self.where(path)
        try:
            parsed = json.loads(data)
        except ValueError:
            text = data[:300].decode("utf-8", "replace")
            if looks_like_server_error(text):
                raise TransientReply(f"{where}: HTTP 200 carrying an error: {self.scrub(text)!r}") from None
            raise NotJSON(f"{where}: HTTP 200 whose body is not JSON ({len(data)} bytes)") from None
        if isinstance(parsed, dict) and "error" in parsed and not ({"choices", "data"} & set(parsed)):
            raise TransientReply(f"{where}: HTTP 200 carrying an error: {self.scrub(str(parsed['error']))[:200]!r}")
        return parsed

    def _redirect_target(self, url: str, location: str, status: int, method: str, where: str) -> str:
        target = urllib.parse.urljoin(url, location)
        try:
            other = _origin(urllib.parse.urlsplit(target))
        except ValueError:
            other = None
        if other != self.origin:
            shown = public_url(target) if other else "<unparsable>"
            raise RedirectRefused(
                f"{where}: HTTP {status} redirect to another origin ({shown}) refused: nothing was sent there "
                "and no verdict is taken from it (point the judge URL at the server itself)",
                reason="RedirectRefused",
            )
        if method != "GET" and status not in (307, 308):
            raise RedirectRefused(f"{where}: HTTP {status} would turn the {method} into a GET")
        return target

    async def _once(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str], where: str
    ) -> tuple[int, Mapping[str, str], bytes]:
        async with self._client.stream(method, url, content=content, headers=headers) as response:
            if response.status_code in _REDIRECTS:
                return response.status_code, response.headers, b""
            return response.status_code, response.headers, await self._read_capped(response, where)

    async def _read_capped(self, response: Any, where: str) -> bytes:
        cap = self.max_reply_bytes
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            decoder = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
        else:
            raise TransientReply(f"{where}: reply in Content-Encoding {encoding!r}, which is not read here")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise ReplyTooLarge(f"{where}: reply of {int(declared)} bytes is over the {cap}-byte cap")
        received, out = 0, bytearray()
        try:
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > cap:
                    raise ReplyTooLarge(f"{where}: reply over the {cap}-byte cap as sent (compressed)")
                if decoder is None:
                    out += chunk
                    continue
                out += decoder.decompress(chunk, cap + 1 - len(out))
                if len(out) > cap or decoder.unconsumed_tail:
                    raise ReplyTooLarge(f"{where}: reply over the {cap}-byte cap once inflated ({encoding})")
            if decoder is not None:
                out += decoder.flush()
        except zlib.error as exc:
            raise TransientReply(f"{where}: damaged {encoding} body ({exc})") from None
        if len(out) > cap:
            raise ReplyTooLarge(f"{where}: reply over the {cap}-byte cap once inflated ({encoding})")
        return bytes(out)


# ------------------------------------------------------------------------------ synchronous callers


def _run_sync(base_url: str, path: str, api_key: str | None, timeout_s: float, max_reply_bytes: int, as_json: bool):
    async def go():
        http = JudgeHTTP(base_url, api_key, timeout_s=timeout_s, max_reply_bytes=max_reply_bytes, max_connections=1)
        try:
            if as_json:
                return await http.request_json("GET", path, timeout_s=timeout_s)
            _, _, data = await http.request("GET", path, timeout_s=timeout_s)
            return data.decode("utf-8", "replace")
        finally:
            await http.aclose()

    return asyncio.run(go())


def get_json(
    base_url: str, path: str, api_key: str | None = None, *, timeout_s: float = 10.0,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
) -> Any:
    """GET ``base_url + path`` as JSON from synchronous code, under the same policy (raises JudgeHTTPError)."""
    return _run_sync(base_url, path, api_key, timeout_s, max_reply_bytes, as_json=True)


def get_text(
    base_url: str, path: str, api_key: str | None = None, *, timeout_s: float = 10.0,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
) -> str:
    """GET ``base_url + path`` as text from synchronous code, under the same policy (raises JudgeHTTPError)."""
    return _run_sync(base_url, path, api_key, timeout_s, max_reply_bytes, as_json=False)
