"""Errors, authentication and the request-size limit of the HTTP API."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal._errors import InvalidArgument
from shoal.http.session_middleware import current_session

__all__ = [
    "DEFAULT_MAX_BODY",
    "BodyLimit",
    "BodyTooLarge",
    "authenticate",
    "error",
    "parse_json",
    "secret_text",
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


def secret_text(value: str | SecretStr | None) -> str | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value or None


def _bearer(request: Request) -> bytes | None:
    raw = request.headers.get("authorization")
    if raw is None:
        return None
    scheme, _, rest = raw.strip().partition(" ")
    if scheme.lower() != "bearer" or not rest.strip():
        return None
    return rest.strip().encode("latin-1")  # the bytes as sent


def _same_origin(request: Request) -> bool:
    """False for a browser request made by another site (cookie CSRF guard)."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    try:
        return urlsplit(origin).netloc.lower() == host.lower()
    except ValueError:
        return False


def authenticate(request: Request, token: str | None) -> str | None:
    """Who sent a management request, or None (answer 401).

    ``Authorization: Bearer <token>`` compared in constant time with the
    configured API token, else a session verified by
    :class:`~shoal.http.SessionMiddleware` (from the same header or the
    session cookie; a cookie-only session must come from the same origin)."""
    given = _bearer(request)
    if token is not None and given is not None and hmac.compare_digest(given, token.encode()):
        return "token"
    session = current_session(request)
    if session is None:
        return None
    if given is None and not _same_origin(request):
        return None
    return f"session:{session.subject}"


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
    """The JSON value of a body; ValueError (with a reason) when it is not JSON."""
    if not body.strip():
        raise InvalidArgument("the request body is empty; send a JSON value")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("the request body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArgument("the JSON value is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not valid JSON")
