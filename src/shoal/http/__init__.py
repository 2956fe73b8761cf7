"""Shoal's HTTP surfaces (pure ASGI; nothing here imports Starlette).

:class:`SessionMiddleware` verifies shared-session tokens for any ASGI app
(Starlette, FastAPI); see ``docs/sessions.md``.
"""

from __future__ import annotations

from shoal.http.session_middleware import (
    DEFAULT_COOKIE,
    SCOPE_ERROR_KEY,
    SCOPE_KEY,
    SessionMiddleware,
    clear_session_cookie,
    current_session,
    session_cookie_header,
    set_session_cookie,
)

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
