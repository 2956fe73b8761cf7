"""ASGI middleware that verifies shared-session tokens (Starlette, FastAPI, any ASGI app).

::

    app.add_middleware(SessionMiddleware, manager=manager)

    @app.get("/me")
    def me(request: Request) -> dict[str, str]:
        session = current_session(request)      # Session or None
        ...

For every HTTP and websocket connection the token is taken from the
``Authorization: Bearer`` header (or the configured header) and else from the
session cookie, verified, and the result stored in the scope:
``scope["shoal.session"]`` is the :class:`~shoal.sessions.Session`, or None
when there is no token or it was refused; ``scope["shoal.session_error"]``
is then the refusal reason (``"expired"``, ``"revoked"``, ...) or None. The
middleware never answers on its own: routes decide what needs a session.

Pure ASGI: nothing here imports Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal, Protocol

from shoal.errors import InvalidSession
from shoal.sessions import Session, SessionManager

__all__ = [
    "DEFAULT_COOKIE",
    "SCOPE_ERROR_KEY",
    "SCOPE_KEY",
    "SessionMiddleware",
    "clear_session_cookie",
    "current_session",
    "session_cookie_header",
    "set_session_cookie",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_COOKIE = "shoal_session"
SCOPE_KEY = "shoal.session"
SCOPE_ERROR_KEY = "shoal.session_error"


class SessionMiddleware:
    """Verifies the session token of every request with ``manager``.

    ``header`` (default ``authorization``) is read first: for
    ``Authorization`` only the ``Bearer`` scheme counts; any other header may
    hold the bare token or ``Bearer TOKEN``. Then the cookie ``cookie_name``.
    Set either to None to ignore it. Verification is synchronous and quick
    (one HMAC and, with :func:`~shoal.sessions.revoked_in`, two local reads).
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: SessionManager,
        cookie_name: str | None = DEFAULT_COOKIE,
        header: str | None = "authorization",
    ) -> None:
        self.app = app
        self.manager = manager
        self.cookie_name = cookie_name
        self.header = header.lower().encode("latin-1") if header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            session: Session | None = None
            error: str | None = None
            token = self.token_from(scope)
            if token is not None:
                try:
                    session = self.manager.verify(token)
                except InvalidSession as exc:
                    error = exc.reason
            scope[SCOPE_KEY] = session
            scope[SCOPE_ERROR_KEY] = error
        await self.app(scope, receive, send)

    def token_from(self, scope: Scope) -> str | None:
        """The token of a request (header first, then cookie), or None."""
        cookies: list[str] = []
        header_value: str | None = None
        for raw_name, raw_value in scope.get("headers", ()):
            name = bytes(raw_name).lower()
            if self.header is not None and name == self.header and header_value is None:
                header_value = bytes(raw_value).decode("latin-1").strip()
            elif name == b"cookie":
                cookies.append(bytes(raw_value).decode("latin-1"))
        if header_value:
            scheme, _, rest = header_value.partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
            if self.header != b"authorization" and " " not in header_value:
                return header_value
        if self.cookie_name is not None:
            for line in cookies:
                for pair in line.split(";"):
                    key, sep, value = pair.strip().partition("=")
                    if sep and key.strip() == self.cookie_name and value.strip():
                        return value.strip().strip('"')
        return None


def current_session(request: Any) -> Session | None:
    """The verified session of a request (anything with ``.scope``) or an ASGI scope."""
    scope = request if isinstance(request, MutableMapping) else request.scope
    session = scope.get(SCOPE_KEY)
    return session if isinstance(session, Session) else None


SameSite = Literal["lax", "strict", "none"]


def session_cookie_header(
    token: str,
    *,
    max_age: float | None,
    cookie_name: str = DEFAULT_COOKIE,
    secure: bool = True,
    samesite: SameSite = "lax",
    path: str = "/",
    domain: str | None = None,
) -> tuple[bytes, bytes]:
    """A ``Set-Cookie`` header (name, value) for raw ASGI responses; the
    cookie is HttpOnly. ``max_age=None`` makes a browser-session cookie;
    ``max_age=0`` deletes it. Pass ``manager.ttl`` to match the token."""
    parts = [f"{cookie_name}={token}", f"Path={path}", "HttpOnly", f"SameSite={samesite.title()}"]
    if max_age is not None:
        parts.append(f"Max-Age={max(0, int(max_age))}")
    if domain:
        parts.append(f"Domain={domain}")
    if secure:
        parts.append("Secure")
    return b"set-cookie", "; ".join(parts).encode("latin-1")


class _CookieResponse(Protocol):
    """What Starlette's and FastAPI's ``Response`` offer."""

    def set_cookie(
        self,
        key: str,
        value: str = ...,
        *,
        max_age: int | None = ...,
        path: str | None = ...,
        domain: str | None = ...,
        secure: bool = ...,
        httponly: bool = ...,
        samesite: SameSite | None = ...,
    ) -> Any: ...


def set_session_cookie(
    response: _CookieResponse,
    token: str,
    *,
    max_age: float | None,
    cookie_name: str = DEFAULT_COOKIE,
    secure: bool = True,
    samesite: SameSite = "lax",
    path: str = "/",
    domain: str | None = None,
) -> None:
    """Put ``token`` in an HttpOnly cookie on a Starlette/FastAPI ``response``.
    Use ``secure=False`` only for plain-HTTP development."""
    response.set_cookie(
        cookie_name,
        token,
        max_age=None if max_age is None else max(0, int(max_age)),
        path=path,
        domain=domain,
        secure=secure,
        httponly=True,
        samesite=samesite,
    )


def clear_session_cookie(
    response: _CookieResponse, *, cookie_name: str = DEFAULT_COOKIE, path: str = "/"
) -> None:
    """Remove the session cookie from the browser (the token itself stays
    valid until it expires; revoke it with :func:`~shoal.sessions.revoke_session`)."""
    response.set_cookie(cookie_name, "", max_age=0, path=path, httponly=True)
