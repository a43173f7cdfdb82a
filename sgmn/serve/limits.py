"""Request-size limit for uploads, enforced while the body streams in.

The declared ``Content-Length`` is checked before anything is read; bodies without one (chunked)
or that lie about it are counted chunk by chunk and reading stops at the first byte past the
limit, so an oversized upload never lands in memory or in a spooled temp file.
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadTooLarge(HTTPException):
    """413 with a message that says what the limit is and how to raise it."""

    def __init__(self, max_bytes: int):
        super().__init__(
            status_code=413,
            detail=f"request body is larger than the upload limit of {_megabytes(max_bytes)} "
            f"(the server's --max-upload-mb)",
        )


def _megabytes(n: int) -> str:
    return f"{round(n / 2**20, 3):g} MB"


class BodySizeLimit:
    """Pure ASGI middleware: refuse HTTP request bodies larger than ``max_bytes`` with a 413."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == "invalid":
            await _send_json(send, 400, "invalid Content-Length header")
            return
        if declared is not None and declared > self.max_bytes:
            await _send_json(send, 413, UploadTooLarge(self.max_bytes).detail)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException raised while the framework parses the body reaches its
                    # exception handler unchanged (FastAPI re-raises HTTPExceptions from parsing).
                    raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope):
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return "invalid"
            return n if n >= 0 else "invalid"
    return None


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
