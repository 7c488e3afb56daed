"""The one HTTP policy of the judge, as an httpx transport (``JudgeTransport``) under every call to a judge
server: the chat verdicts go through the official openai SDK (``openai.AsyncOpenAI`` with ``max_retries=0``,
so client.py's tenacity retries decide, and ``http_client`` an httpx client over this transport); the
``/v1/models`` identity in client.py, ``medbridge judge check`` and the health and metrics of a judge we
started (server.py) go through ``JudgeHTTP.request`` over the same transport. One policy holds everywhere:

- **No redirect to another origin.** A 3xx whose target is another scheme, host or port is refused
  (``RedirectRefused``): nothing is sent there, so the key never leaves, and no verdict is taken from
  it. Same-origin redirects are followed (at most 5; a POST only on 307/308, which keep the body). The
  transport itself sends to the judge's origin only, whatever URL a caller hands it.
- **A whole-request deadline.** Connect, send, headers and every byte of the body must arrive within
  ``timeout_s`` (``RequestTimeout``): the call is cancelled then (``asyncio.timeout`` around the SDK's or
  our request), so a server trickling one byte at a time is cut, whatever the per-read timeouts allow.
- **A reply-size cap.** ``max_reply_bytes`` bounds the body as sent (compressed) and as inflated
  (gzip/deflate are inflated here, in bounded steps, and handed on without Content-Encoding so nothing
  inflates them again; any other encoding is refused), so a compression bomb costs at most the cap in
  memory (``ReplyTooLarge``).
- **Transient errors are errors.** 408/429/5xx (``HTTPStatusError``, with the server's Retry-After),
  connection faults (``Unreachable``) and a 2xx whose body is a server error (an ``{"error": ...}``
  object, or text such as "Error: upstream model overloaded": ``TransientReply``) are raised as
  retryable errors, never returned as a reply, so nothing transient can become a cached verdict. The
  SDK's exceptions (``APIStatusError``, ``APIConnectionError``, ``APITimeoutError``, and ours, which it
  may wrap) are mapped onto these classes.
- **Secrets stay out.** Credentials are set by the transport alone: the API key as a Bearer header, or
  URL credentials as a Basic header, and the URL's query (a token) added to the first hop; a caller's
  headers pass only from an allow-list, so a key the SDK took from the environment is never sent. The
  SDK is given neither (a placeholder key, the base URL without query). ``public_url`` drops user and
  password and masks every query value; ``scrub`` removes the key, the password and the query values
  from any text we log or raise.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import json
import os
import re
import ssl
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from typing import Any

from medbridge.judges.redaction import (
    _SECRETS_IN_USE,
    argv_secrets,
    public_url,
    redact_argv,
    redact_text,
    scrub,
    url_secrets,
)

__all__ = [
    "DEFAULT_MAX_REPLY_BYTES",
    "HTTPStatusError",
    "JudgeHTTP",
    "JudgeHTTPError",
    "JudgeTransport",
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
    "server_error_in",
]

DEFAULT_MAX_REPLY_BYTES = 1 << 20  # a verdict is ~1 KB, a /v1/models list a few KB
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# The headers a caller (the SDK, JudgeHTTP.request) may send; the transport adds the credentials and
# Accept-Encoding itself. Anything else (an Authorization or OpenAI-Organization the SDK took from the
# environment, cookies) is dropped.
_CALLER_HEADERS_RE = re.compile(
    r"accept|content-type|user-agent|idempotency-key|x-stainless-[\w-]+|x-medbridge-[\w-]+", re.IGNORECASE
)
# What the reply's headers say about the body as sent; the transport hands on the inflated body without them.
_BODY_FRAMING = frozenset({"content-encoding", "content-length", "transfer-encoding"})
# The SDK's api_key: required by it, never sent (the transport sets the one Authorization header).
_SDK_PLACEHOLDER_KEY = "set-by-medbridge-judge-transport"
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


def looks_like_server_error(text: str) -> bool:
    """Is this reply text a server's error message ("Error: upstream model overloaded", "Bad Gateway")?"""
    return bool(_SERVER_ERROR_RE.match(text.strip()))


def server_error_in(data: bytes) -> str | None:
    """The error a 2xx body carries instead of an answer (a JSON ``{"error": ...}`` object without
    ``choices``/``data``, or a text that is a server's error message), else None. Parses JSON only when
    the body names an error: a verdict's body is read once, by its caller."""
    head = data[:300].decode("utf-8", "replace")
    if b'"error"' not in data and not looks_like_server_error(head):
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return head if looks_like_server_error(head) else None
    if isinstance(parsed, dict) and "error" in parsed and not ({"choices", "data"} & set(parsed)):
        return str(parsed["error"])
    return None


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


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for the judge (HTTP(S)_PROXY / ALL_PROXY, unless NO_PROXY covers its
    host): the client trusts no environment itself, so the policy transport is never bypassed by one."""
    parts = urllib.parse.urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme.lower()) or proxies.get("all")


def _carried(exc: BaseException) -> JudgeHTTPError | None:
    """Our own error inside another (the SDK wraps what the transport raises in an APIConnectionError)."""
    for _ in range(8):
        if isinstance(exc, JudgeHTTPError):
            return exc
        if exc.__cause__ is None and exc.__context__ is None:
            return None
        exc = exc.__cause__ or exc.__context__
    return None


class JudgeTransport:
    """The policy above as an httpx transport over ``inner`` (httpx's own, which does the I/O). Both the
    SDK's requests and ``JudgeHTTP.request`` pass through it: it sends to the judge's origin only, sets the
    credentials and the URL's query, follows same-origin redirects, reads the body under the cap, and
    refuses a 2xx that carries a server error. Made with ``JudgeTransport.create`` (then also an
    ``httpx.AsyncBaseTransport``; httpx is imported only where requests are sent)."""

    def __init__(self, judge: JudgeHTTP, inner: Any):
        self._judge = judge
        self._inner = inner

    @classmethod
    def create(cls, judge: JudgeHTTP, inner: Any) -> JudgeTransport:
        return _transport_class(cls)(judge, inner)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def handle_async_request(self, request: Any) -> Any:
        import httpx

        judge = self._judge
        url = request.url
        if judge._query:  # the judge URL's query (a token) goes to the judge, never through the SDK
            url = url.copy_with(query=(judge._query + ("&" + url.query.decode() if url.query else "")).encode())
        where = f"judge {public_url(str(url))}"
        if _origin(urllib.parse.urlsplit(str(url))) != judge.origin:
            raise RedirectRefused(f"{where}: not the judge's origin ({judge.public}); nothing was sent")
        headers = [(k, v) for k, v in request.headers.multi_items() if _CALLER_HEADERS_RE.fullmatch(k)]
        headers += [*judge._credentials, ("Accept-Encoding", "gzip, deflate")]
        content = await request.aread()
        for _ in range(MAX_REDIRECTS + 1):
            hop = httpx.Request(request.method, url, headers=headers, content=content, extensions=request.extensions)
            response = await self._inner.handle_async_request(hop)
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location", "")
                await response.aclose()
                target = judge._redirect_target(str(url), location, response.status_code, request.method, where)
                url = httpx.URL(target)
                continue
            try:
                data = await _read_capped(response, judge.max_reply_bytes, where)
            finally:
                await response.aclose()
            if 200 <= response.status_code < 300:
                error = server_error_in(data)
                if error is not None:
                    raise TransientReply(
                        f"{where}: HTTP {response.status_code} carrying an error: {judge.scrub(error)[:200]!r}"
                    )
            kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _BODY_FRAMING]
            extensions = {k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")}
            return httpx.Response(response.status_code, headers=kept, content=data, extensions=extensions)
        raise RedirectRefused(f"{where}: more than {MAX_REDIRECTS} redirects")


@functools.lru_cache(maxsize=1)
def _transport_class(policy: type[JudgeTransport]) -> type:
    import httpx

    return type("JudgeTransport", (policy, httpx.AsyncBaseTransport), {"__doc__": policy.__doc__})


async def _read_capped(response: Any, cap: int, where: str) -> bytes:
    """The body, inflated in bounded steps; ``ReplyTooLarge`` past ``cap`` as sent or inflated."""
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


class JudgeHTTP:
    """HTTP to one judge server (``base_url``, e.g. ``http://host:8000/v1``) under the policy above.

    Async; one instance per event loop. ``request`` returns ``(status, headers, body)`` for any 2xx and
    raises a ``JudgeHTTPError`` otherwise; ``request_json`` also parses the body; ``post_openai`` sends a
    POST through the openai SDK (``openai_client()``) over the same transport.
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
        self._headers = {"Accept": "application/json", "User-Agent": "medbridge-judge"}
        self._credentials: list[tuple[str, str]] = []  # set on every request by the transport, and only there
        if api_key:
            self._credentials.append(("Authorization", f"Bearer {api_key}"))
        elif parts.username or parts.password:
            user = urllib.parse.unquote(parts.username or "")
            token = base64.b64encode(f"{user}:{urllib.parse.unquote(parts.password or '')}".encode()).decode()
            self._credentials.append(("Authorization", f"Basic {token}"))
            self.secrets += (token,)
        _SECRETS_IN_USE.update(self.secrets)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        inner = httpx.AsyncHTTPTransport(
            verify=_tls_context(), limits=limits, proxy=_env_proxy(base_url), trust_env=False
        )
        self._client = httpx.AsyncClient(
            transport=JudgeTransport.create(self, inner),
            follow_redirects=False,  # the transport's: same origin only
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
        )
        self._sdk: Any = None

    def where(self, path: str) -> str:
        """How a request is named in messages: the public URL of ``path``."""
        return f"judge {self._public_base}{path}{self._public_query}"

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def openai_client(self) -> Any:
        """The official openai SDK's client for this judge (made on first use): its HTTP client is ours (the
        policy transport), its own retries are off (client.py's tenacity retries decide), and it holds no
        secret (a placeholder key; the base URL without query or credentials)."""
        if self._sdk is None:
            import openai

            self._sdk = openai.AsyncOpenAI(
                api_key=_SDK_PLACEHOLDER_KEY, base_url=self._base + "/", max_retries=0, timeout=self.timeout_s,
                http_client=self._client,
            )
        return self._sdk

    async def aclose(self) -> None:
        await self._client.aclose()  # the SDK's client too (it is this one)

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
        try:
            async with asyncio.timeout(seconds):
                response = await self._client.request(method, self._base + path, content=content, headers=sent)
        except (TimeoutError, httpx.TimeoutException):
            raise RequestTimeout(f"{where}: no complete reply within {seconds:.1f} s (whole request)") from None
        except httpx.TransportError as exc:  # connect, read, write, protocol, per-phase timeouts
            raise Unreachable(f"{where}: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise self._status_error(where, response)
        return response.status_code, response.headers, response.content

    async def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """``request`` and the body parsed as JSON (``NotJSON`` when it is not)."""
        _, _, data = await self.request(method, path, **kwargs)
        return _parse_json(data, self.where(path))

    async def post_openai(
        self, path: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """POST ``body`` (a plain dict, sent as is: no SDK type transform) to ``path`` through the openai SDK,
        all of it within ``timeout_s`` (the SDK call is cancelled then); the reply parsed as JSON. Every
        failure is a ``JudgeHTTPError``, as from ``request``."""
        import httpx
        import openai

        seconds = self.timeout_s if timeout_s is None else timeout_s
        where = self.where(path)
        sdk = self.openai_client()
        try:
            async with asyncio.timeout(seconds):
                options = {"headers": dict(headers or {}), "timeout": seconds}
                response = await sdk.post(path, cast_to=httpx.Response, body=body, options=options)
        except TimeoutError:
            raise RequestTimeout(f"{where}: no complete reply within {seconds:.1f} s (whole request)") from None
        except openai.APIStatusError as exc:
            raise self._status_error(where, exc.response) from None
        except openai.APITimeoutError:  # a per-phase timeout of httpx (before APIConnectionError: its subclass)
            raise RequestTimeout(f"{where}: no reply within {seconds:.1f} s") from None
        except openai.APIConnectionError as exc:
            own = _carried(exc)
            if own is not None:
                raise own from None
            raise Unreachable(f"{where}: {type(exc.__cause__ or exc).__name__}") from None
        if not 200 <= response.status_code < 300:  # a 3xx the SDK hands back (300, 304): not an answer
            raise self._status_error(where, response)
        return _parse_json(response.content, where)

    def _status_error(self, where: str, response: Any) -> HTTPStatusError:
        status = response.status_code
        excerpt = self.scrub(response.content[:200].decode("utf-8", "replace")).replace("\n", " ")
        return HTTPStatusError(f"{where}: HTTP {status} {excerpt!r}", status, retry_after_s(status, response.headers))

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


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise NotJSON(f"{where}: HTTP 200 whose body is not JSON ({len(data)} bytes)") from None


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
