"""Who may do what on the HTTP API: two kinds of credential, never confused.

* the **management token** (``http.token``, at least :data:`MIN_TOKEN_LENGTH`
  characters): ``Authorization: Bearer <token>``, compared in constant time;
* a **user session** (signed with ``auth.secret``, verified by
  :class:`~shoal.http.SessionMiddleware`): it may READ state, but it carries
  no management rights (state writes, drain) unless the app maps its claims
  to the management role with an explicit hook::

      def is_admin(session: Session) -> bool:
          return "shoal-admin" in session.data.get("roles", ())

      app = shoal.App("billing", management_role=is_admin)   # shoal run
      create_app(node, token=..., management_role=is_admin)   # mounted

Failed attempts are counted (``shoal_http_auth_failures_total{reason}``) and
logged at most once per :data:`LOG_EVERY` seconds, with the number of
failures since the last line.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from pydantic import SecretStr
from starlette.requests import Request

from shoal.config._sections import MIN_TOKEN_LENGTH
from shoal.errors import ConfigError
from shoal.http.session_middleware import SCOPE_ERROR_KEY, current_session
from shoal.sessions import Session

__all__ = [
    "LOG_EVERY",
    "MIN_TOKEN_LENGTH",
    "AuthFailures",
    "Caller",
    "ManagementRole",
    "check_token",
    "identify",
]

LOG_EVERY = 10.0
ManagementRole = Callable[[Session], bool]
log = logging.getLogger("shoal.http")


def check_token(value: str | SecretStr | None) -> str | None:
    """The management token as text (None = none configured); ConfigError when
    it is empty or shorter than :data:`MIN_TOKEN_LENGTH` characters."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return None
    if len(value) < MIN_TOKEN_LENGTH:
        what = "empty" if not value else f"{len(value)} characters"
        raise ConfigError(
            f"http.token is {what} — use at least {MIN_TOKEN_LENGTH} random characters "
            "(`shoal secret generate` makes one), or remove the key to refuse management calls"
        )
    return value


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the token holder, or a session's subject."""

    kind: str  # "token" | "session"
    subject: str
    manager: bool  # may change the cluster (state writes, drain)

    def __str__(self) -> str:
        return "token" if self.kind == "token" else f"session:{self.subject}"


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


def identify(
    request: Request, token: str | None, management_role: ManagementRole | None = None
) -> Caller | str:
    """The caller of ``request``, or why it is not authenticated (a reason).

    The bearer token is compared in constant time with ``token``; else the
    session verified by the middleware counts (a cookie-only session must come
    from the same origin). A session is a manager only when
    ``management_role(session)`` says so; an exception there means no."""
    given = _bearer(request)
    if token is not None and given is not None and hmac.compare_digest(given, token.encode()):
        return Caller("token", "token", manager=True)
    session = current_session(request)
    if session is None:
        refused = request.scope.get(SCOPE_ERROR_KEY)
        if refused:
            return f"session_{refused}"
        return "bad_token" if given is not None else "missing"
    if given is None and not _same_origin(request):
        return "cross_site"
    manager = False
    if management_role is not None:
        try:
            manager = bool(management_role(session))
        except Exception:  # an app hook that fails grants nothing
            log.exception("http: the management_role hook failed; the session is not a manager")
    return Caller("session", session.subject, manager=manager)


class AuthFailures:
    """Counts refused credentials by reason (``shoal_http_auth_failures_total`` in
    ``registry``); logs at most every ``every`` seconds."""

    def __init__(
        self, registry: CollectorRegistry, node: str, every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.counts: Counter[str] = Counter()
        self._metric = PromCounter(
            "shoal_http_auth_failures", "Requests refused for missing, wrong or insufficient "
            "credentials.", ["node", "reason"], registry=registry,
        )
        self._node = node
        self._every = every
        self._clock = clock
        self._last = -float("inf")
        self._unlogged = 0

    def record(self, reason: str, request: Request) -> None:
        self.counts[reason] += 1
        self._metric.labels(node=self._node, reason=reason).inc()
        self._unlogged += 1
        now = self._clock()
        if now - self._last < self._every:
            return
        client = request.client.host if request.client else "?"
        log.warning(
            "http: refused credentials for %s %s from %s (%s); %d refusal(s) since the last "
            "report", request.method, request.url.path[:200], client, reason, self._unlogged,
        )
        self._last = now
        self._unlogged = 0
