"""What a deployed service needs in front of its endpoints: who may write, which Host and Origin
headers are accepted, and text fields that are really text.

- :class:`RequestGuard` (pure ASGI):
  - **Origin**: a browser sends ``Origin`` with every cross-site POST/DELETE, including the
    multipart "simple requests" that need no CORS preflight, so a page on any other site could
    otherwise add or delete products (CSRF). A state-changing request whose ``Origin`` is
    neither this server itself (same scheme-less host:port as the ``Host`` header) nor listed in
    ``allowed_origins`` gets a 403; so does one that a browser marks ``Sec-Fetch-Site:
    cross-site``. Requests without ``Origin`` (curl, scripts) are not browser requests and pass.
  - **Bearer token**: with ``token`` set, writes (``auth="writes"``) or every request except
    the page shell and its static files (``auth="all"``) need ``Authorization: Bearer <token>``;
    others get a 401. The token is compared in constant time.
- Host allow-list: Starlette's ``TrustedHostMiddleware`` (a 400 for any other ``Host``), which
  stops DNS rebinding (a hostile domain re-pointed at 127.0.0.1 is sent with its own Host).
- :class:`StrictFormText` (pure ASGI): Starlette decodes a form text field that is not valid in
  the request's charset as Latin-1 without a word, so GBK-encoded ASR would be ranked as
  mojibake. This middleware reads the same multipart stream alongside (python-multipart, the
  parser Starlette uses) and answers 422 naming the field instead.
"""

from __future__ import annotations

import codecs
import hmac
import json
import ipaddress
from typing import Optional, Sequence
from urllib.parse import urlsplit

from fastapi import HTTPException
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# reachable without a token even under auth="all": the page itself holds no data
PUBLIC_PATHS = ("/", "/docs", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: Optional[str]) -> list[str]:
    """Bound to loopback: only loopback names (stops DNS rebinding); otherwise any host (the
    deployer names theirs with ``--allow-host``; behind a proxy, the proxy's upstream host)."""
    if bind_host is not None and is_loopback(bind_host):
        return list(LOOPBACK_HOSTS)
    return ["*"]


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_json(send: Send, status: int, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _origin_host(origin: str) -> Optional[str]:
    parts = urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


class RequestGuard:
    """Origin check for state-changing requests and the optional bearer token (module docstring)."""

    def __init__(self, app: ASGIApp, token: Optional[str] = None, auth: str = "writes",
                 allowed_origins: Sequence[str] = ()):
        if auth not in ("writes", "all"):
            raise ValueError(f"auth must be 'writes' or 'all', got {auth!r}")
        if token is not None and not token.strip():
            raise ValueError("the token must not be empty")
        self.app = app
        self.token = token.strip().encode() if token else None
        self.auth = auth
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        path = scope.get("path", "")
        if method not in SAFE_METHODS:
            refusal = self._cross_origin(scope)
            if refusal:
                await _send_json(send, 403, refusal)
                return
        if self.token is not None and self._needs_token(method, path) and not self._authorised(scope):
            await _send_json(send, 401, "this server needs 'Authorization: Bearer <token>' for this request",
                             [(b"www-authenticate", b'Bearer realm="sgmn"')])
            return
        await self.app(scope, receive, send)

    def _cross_origin(self, scope: Scope) -> Optional[str]:
        origin = _header(scope, b"origin")
        if origin is None:
            if (_header(scope, b"sec-fetch-site") or "").lower() == "cross-site":
                return "cross-site request refused (no Origin header, Sec-Fetch-Site: cross-site)"
            return None
        origin_l = origin.rstrip("/").lower()
        if origin_l in self.allowed_origins:
            return None
        host = (_header(scope, b"host") or "").lower()
        if host and _origin_host(origin_l) == host:
            return None  # the server's own page
        return (f"cross-origin request from {origin[:100]!r} refused: only this server's own page "
                f"(or an origin given with --allow-origin) may change data")

    def _needs_token(self, method: str, path: str) -> bool:
        if self.auth == "writes":
            return method not in SAFE_METHODS
        return not (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))

    def _authorised(self, scope: Scope) -> bool:
        value = _header(scope, b"authorization") or ""
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token)


class BadFormText(HTTPException):
    def __init__(self, field: str, charset: str):
        super().__init__(
            status_code=422,
            detail=f"form field {field!r} is not valid {charset} text: send it as UTF-8, or declare its "
            f"encoding on the request (Content-Type: multipart/form-data; boundary=...; charset=gbk)",
        )


class StrictFormText:
    """Refuse multipart text fields that do not decode in the request's charset (see above).

    Only text parts (no ``filename``) are buffered, each up to ``max_text_bytes``; file parts
    stream past untouched.
    """

    def __init__(self, app: ASGIApp, max_text_bytes: int = 1 << 20):
        self.app = app
        self.max_text_bytes = max_text_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = _header(scope, b"content-type") if scope["type"] == "http" else None
        if not content_type:
            await self.app(scope, receive, send)
            return
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            await self.app(scope, receive, send)
            return
        charset = params.get(b"charset", b"utf-8").decode("latin-1")
        try:
            charset = codecs.lookup(charset).name
        except LookupError:
            await _send_json(send, 422, f"unknown charset {charset[:40]!r} in the request's Content-Type")
            return
        checker = _TextFieldChecker(boundary, charset, self.max_text_bytes)

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                checker.feed(message.get("body", b""))
            return message

        await self.app(scope, checked_receive, send)


class _TextFieldChecker:
    def __init__(self, boundary: bytes, charset: str, max_text_bytes: int):
        self.charset = charset
        self.max_text_bytes = max_text_bytes
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""
        self._name: Optional[str] = None
        self._is_text = False
        self._data = bytearray()
        self._failed = False
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def feed(self, chunk: bytes) -> None:
        if self._failed or not chunk:
            return
        try:
            self.parser.write(chunk)
        except BadFormText:
            raise
        except Exception:  # a malformed body is the form parser's to report, not ours
            self._failed = True

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._headers, self._data, self._name, self._is_text = {}, bytearray(), None, False

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._is_text = b"filename" not in options
        self._name = options.get(b"name", b"?").decode("latin-1")[:100]

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_text and len(self._data) <= self.max_text_bytes:
            self._data += data[start:end]

    def _part_end(self) -> None:
        if not self._is_text or len(self._data) > self.max_text_bytes:
            return  # too long: Starlette's own part limit answers that
        try:
            bytes(self._data).decode(self.charset)
        except UnicodeDecodeError:
            raise BadFormText(self._name or "?", self.charset) from None
