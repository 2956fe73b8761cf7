"""Errors, echoed input and the request-size limit of the HTTP API."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.errors import InvalidArgument
from shoal.runtime._state_model import TooDeep

__all__ = [
    "DEFAULT_MAX_BODY",
    "BodyLimit",
    "BodyTooLarge",
    "error",
    "parse_json",
    "too_large",
]

DEFAULT_MAX_BODY = (1 << 20) + 4096  # a 1 MiB document plus room for JSON whitespace


def error(
    status: int,
    code: str,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The one error shape: ``{"error": {"code": ..., "message": ..., **extra}}``."""
    body = {"error": {"code": code, "message": message, **extra}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class BodyTooLarge(Exception):
    """A request body went over the limit while it was being read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"request body is larger than {limit} bytes")


def too_large(limit: int) -> JSONResponse:
    return error(413, "body_too_large", f"request body is larger than {limit} bytes")


class BodyLimit:
    """Refuses bodies over ``limit`` bytes with 413: at once by Content-Length,
    or while a streamed body is read (raises :class:`BodyTooLarge`)."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() == b"content-length":
                text = bytes(value).decode("latin-1").strip()
                if not text.isdigit():
                    await error(400, "bad_request", "invalid Content-Length")(scope, receive, send)
                    return
                if int(text) > self.limit:
                    await too_large(self.limit)(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def parse_json(body: bytes) -> Any:
    """The JSON value of a body; InvalidArgument (with a reason) when it is not JSON,
    :class:`TooDeep` when it is nested too deeply to parse."""
    if not body.strip():
        raise InvalidArgument("the request body is empty; send a JSON value")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the request body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise TooDeep("the request body") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON")
