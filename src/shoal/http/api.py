"""The HTTP API and live dashboard of one node: an ASGI (Starlette) app.

Standalone (``shoal run`` serves it with uvicorn when ``http.port`` is set)::

    app = create_app(node, token=config.http.token)

or mounted into your own FastAPI / Starlette app::

    api.mount("/shoal", create_app(node, token=..., session_manager=manager))

Endpoints, authentication, the error shape and the metrics: ``docs/http.md``.
Health, readiness, the cluster view, metrics, the live feed and the dashboard
need no credentials. Reading state needs the management token or a Shoal
session; changing the cluster (state writes, drain) needs the management token
or a session the app maps to the management role (:mod:`shoal.http._auth`).
Every error is ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from shoal.core.node_state import Phase
from shoal.errors import (
    Conflict,
    DocumentTooLarge,
    InvalidDocument,
    NotRunning,
    OutcomeUnknown,
    StateError,
    StoreError,
    StoreUnavailable,
)
from shoal.http._auth import AuthFailures, Caller, ManagementRole, check_token, identify
from shoal.http._common import (
    DEFAULT_MAX_BODY,
    BodyLimit,
    BodyTooLarge,
    error,
    parse_json,
    too_large,
)
from shoal.http._events import EventFeed
from shoal.http._metrics import CONTENT_TYPE, node_registry, render_metrics
from shoal.http._openapi import NODE_NAME_RULE, openapi_document
from shoal.http._ready import readiness
from shoal.http._redact import redact_view
from shoal.http._schedules import schedule_routes
from shoal.http._view import cluster_view
from shoal.http.session_middleware import SessionMiddleware
from shoal.runtime._state_model import check_names, check_namespace, short_repr
from shoal.runtime.control import NodeNotLive, drain_in_background, request_drain
from shoal.runtime.schedule import RESERVED_NAMESPACES as SCHEDULE_NAMESPACES
from shoal.sessions._revocation import NAMESPACE as SESSIONS_NAMESPACE

if TYPE_CHECKING:
    from shoal.runtime.node import Node
    from shoal.sessions import SessionManager

__all__ = ["cluster_view", "create_app"]

_NODE_NAME = re.compile(NODE_NAME_RULE)
_REVISION = re.compile(r'"?([0-9]{1,18})"?')
Handler = Callable[[Request], Awaitable[Response]]
# Shoal's own namespaces in replicated state: never written through the generic API.
RESERVED_NAMESPACES = frozenset({SESSIONS_NAMESPACE}) | SCHEDULE_NAMESPACES


class _BadRequest(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class _Unsatisfiable(Exception):
    """If-Match: N>0 together with If-None-Match: * (exists and absent)."""


def _expected_revision(request: Request, *, create_only: bool) -> int | None:
    """``If-Match: N`` (quotes allowed) -> N; ``If-None-Match: *`` -> 0; else None."""
    match = request.headers.get("if-match")
    none_match = request.headers.get("if-none-match") if create_only else None
    if none_match is not None and none_match.strip() != "*":
        raise _BadRequest("invalid_precondition", "If-None-Match must be '*' (create only)")
    expect: int | None = None
    if match is not None:
        found = _REVISION.fullmatch(match.strip())
        if found is None:
            raise _BadRequest(
                "invalid_precondition",
                "If-Match must be a document revision (digits, optionally quoted); "
                "0 = must not exist",
            )
        expect = int(found.group(1))
    if none_match is not None:
        if expect:
            raise _Unsatisfiable()
        expect = 0
    return expect


def _names(ns: str, key: str | None) -> tuple[str, str]:
    try:
        if key is None:
            return check_namespace(ns), ""
        return check_names(ns, key)
    except InvalidDocument as exc:
        raise _BadRequest("invalid_name", str(exc)) from None


class _Reserved(Exception):
    pass


def _writable(ns: str, key: str) -> tuple[str, str]:
    if ns in RESERVED_NAMESPACES:
        raise _Reserved(ns)
    return ns, key


def _state_error(exc: StateError | StoreError | NotRunning) -> Response:
    if isinstance(exc, Conflict):
        return error(409, "conflict", str(exc), current_revision=exc.current)
    if isinstance(exc, DocumentTooLarge):
        return error(413, "document_too_large", str(exc))
    if isinstance(exc, InvalidDocument):
        return error(400, "invalid_document", str(exc))
    if isinstance(exc, OutcomeUnknown):
        return error(503, "outcome_unknown", f"{exc} (re-read the document before retrying)")
    if isinstance(exc, StoreUnavailable):
        return error(503, "store_unavailable", str(exc))
    if isinstance(exc, NotRunning):
        return error(503, "not_running", str(exc))
    if isinstance(exc, StoreError):
        return error(503, "store_error", str(exc))
    return error(400, "state_error", str(exc))


def _csp(html: str) -> str:
    """A Content-Security-Policy allowing exactly the page's inline script and style."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
            for b in blocks
        )

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class _SlotResponse(StreamingResponse):
    """A live-feed response that gives its stream slot back when it ends."""

    def __init__(self, feed: EventFeed, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._feed = feed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._feed.release()


class _Api:
    def __init__(
        self, node: Node, token: str | None, *, public_state: bool, feed: EventFeed,
        write_wait: float, management_role: ManagementRole | None,
    ) -> None:
        from shoal.runtime.node import VERSION

        self.node = node
        self.token = token
        self.management_role = management_role
        self.public_state = public_state
        self.feed = feed
        self.write_wait = write_wait
        self.version = VERSION
        self.registry = node_registry(node.status, VERSION, node.app.version)  # its own
        self.auth_failures = AuthFailures(self.registry, node.name)
        self.page = resources.files("shoal.http").joinpath("dashboard.html").read_text("utf-8")
        self.page_headers = {
            "Content-Security-Policy": _csp(self.page), "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        }

    # -- open endpoints ------------------------------------------------------------
    async def dashboard(self, request: Request) -> Response:
        return HTMLResponse(self.page, headers=self.page_headers)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": self.node.name, "phase": self.node.phase})

    async def ready(self, request: Request) -> Response:
        query = request.query_params
        flag = query.get("coordinated", "0")
        if flag not in ("0", "1", "true", "false"):
            raise _BadRequest("invalid_query", "coordinated must be 1 or 0 (or true, false)")
        role = query.get("role") or None
        if role is not None and len(role) > 63:
            raise _BadRequest("invalid_query", "role is at most 63 characters")
        status = self.node.status()
        r = readiness(status, role=role, coordinated=flag in ("1", "true"))
        body = {"ready": r.ready, "node": status.name, "phase": status.phase,
                "reason": r.reason, "message": r.message, **r.details}
        return JSONResponse(body, status_code=200 if r.ready else 503)

    def authenticated(self, request: Request) -> bool:
        """Whether an open endpoint may show full error texts (not counted as a failure)."""
        return isinstance(identify(request, self.token, self.management_role), Caller)

    async def cluster(self, request: Request) -> Response:
        view = cluster_view(self.node.status())
        return JSONResponse(view if self.authenticated(request) else redact_view(view))

    async def metrics(self, request: Request) -> Response:
        return Response(render_metrics(self.registry), media_type=CONTENT_TYPE)

    async def events(self, request: Request) -> Response:
        if not self.feed.reserve():
            why = ("the server is shutting down" if self.feed.closed
                   else f"{self.feed.max_streams} event streams are open")
            return error(503, "too_many_streams", f"{why}; retry later",
                         headers={"Retry-After": "5"})
        return _SlotResponse(
            self.feed, self.feed.stream(full=self.authenticated(request)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def openapi(self, request: Request) -> Response:
        root = str(request.scope.get("root_path", ""))
        return JSONResponse(openapi_document(
            version=self.version, root_path=root, public_state=self.public_state))

    # -- guarded endpoints -----------------------------------------------------------
    def guard_input(self, handler: Handler) -> Handler:
        """An open endpoint whose bad input is a 400 (no credentials needed)."""

        async def checked(request: Request) -> Response:
            try:
                return await handler(request)
            except _BadRequest as exc:
                return error(400, exc.code, str(exc))

        return checked

    def caller(self, request: Request) -> Caller | None:
        """The authenticated caller, or None (the refusal is counted and logged)."""
        who = identify(request, self.token, self.management_role)
        if isinstance(who, str):
            self.auth_failures.record(who, request)
            return None
        return who

    def guard(self, handler: Handler, *, manage: bool = True) -> Handler:
        """``manage``: the call changes the cluster (the token or a management
        session); else it reads state (any credential, or none with ``public_state``)."""

        async def guarded(request: Request) -> Response:
            if manage or not self.public_state:
                who = self.caller(request)
                if who is None:
                    return error(401, "unauthorized",
                                 "send Authorization: Bearer <http.token> or a valid Shoal "
                                 "session", headers={"WWW-Authenticate": 'Bearer realm="shoal"'})
                if manage and not who.manager:
                    self.auth_failures.record("not_manager", request)
                    return error(403, "forbidden",
                                 f"{who} has no management role — use http.token, or map the "
                                 "session to the management role (App(management_role=...))")
                request.state.caller = who
            try:
                return await handler(request)
            except _BadRequest as exc:
                return error(400, exc.code, str(exc))
            except _Reserved as exc:
                return error(403, "reserved_namespace",
                             f"namespace {exc} belongs to Shoal and cannot be written through "
                             "the state API (sessions: use revoke_session / revoke_everywhere)")
            except _Unsatisfiable:
                ns, key = request.path_params.get("ns"), request.path_params.get("key")
                doc = self.node.state.get(str(ns), str(key))
                return error(409, "conflict",
                             "If-Match: N (exists at N) and If-None-Match: * (absent) cannot "
                             "both hold", current_revision=doc.revision if doc else 0)
            except (StateError, StoreError, NotRunning) as exc:
                return _state_error(exc)

        return guarded

    def _stale(self) -> dict[str, Any]:
        state = self.node.state
        return {"revision": state.revision, "stale": state.stale,
                "stale_seconds": round(state.stale_for, 3)}

    async def namespaces(self, request: Request) -> Response:
        state = self.node.state
        counts = {ns: len(state.items(ns)) for ns in state.namespaces()}
        return JSONResponse({**self._stale(), "namespaces": counts})

    async def namespace(self, request: Request) -> Response:
        ns = _names(request.path_params["ns"], None)[0]
        docs = {
            key: {"value": d.value, "revision": d.revision, "version": d.version,
                  "create_revision": d.create_revision}
            for key, d in sorted(self.node.state.items(ns).items())
        }
        return JSONResponse({"namespace": ns, **self._stale(), "documents": docs})

    async def get_doc(self, request: Request) -> Response:
        ns, key = _names(request.path_params["ns"], request.path_params["key"])
        doc = self.node.state.get(ns, key)
        if doc is None:
            return error(404, "not_found", f"no document {ns}/{key}")
        body = {"namespace": ns, "key": key, "value": doc.value, "revision": doc.revision,
                "version": doc.version, "create_revision": doc.create_revision,
                "stale": self.node.state.stale}
        return JSONResponse(body, headers={"ETag": f'"{doc.revision}"'})

    async def put_doc(self, request: Request) -> Response:
        ns, key = _writable(*_names(request.path_params["ns"], request.path_params["key"]))
        expect = _expected_revision(request, create_only=True)
        try:
            value = parse_json(await request.body())
        except InvalidDocument:
            raise
        except ValueError as exc:
            raise _BadRequest("invalid_json", str(exc)) from None
        rev = await self.node.state.put(ns, key, value, expect_revision=expect)
        await self._settle(rev)
        return JSONResponse({"namespace": ns, "key": key, "revision": rev},
                            headers={"ETag": f'"{rev}"'})

    async def delete_doc(self, request: Request) -> Response:
        ns, key = _writable(*_names(request.path_params["ns"], request.path_params["key"]))
        expect = _expected_revision(request, create_only=False)
        rev = await self.node.state.delete(ns, key, expect_revision=expect)
        await self._settle(rev)
        return JSONResponse({"namespace": ns, "key": key, "revision": rev, "deleted": rev > 0})

    async def _settle(self, revision: int) -> None:
        """Read-your-writes on this node, bounded (the write is already durable)."""
        if revision <= 0:
            return
        with contextlib.suppress(TimeoutError, NotRunning):
            async with asyncio.timeout(self.write_wait):
                await self.node.state.wait_for(revision)

    async def drain(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not _NODE_NAME.fullmatch(name):
            raise _BadRequest("invalid_name", f"bad node name {short_repr(name)}")
        node = self.node
        if name == node.name:
            if node.phase is Phase.STOPPED and not node.draining:
                raise NotRunning(f"node {name} is stopped")
            started = drain_in_background(node)
            status = "draining" if started else "already_draining"
            return JSONResponse({"node": name, "status": status, "via": "local"}, 202)
        member = node.members.get(name)
        if member is None:
            return error(404, "node_not_found", f"no live node named {name!r}")
        if member.draining:
            return JSONResponse({"node": name, "status": "already_draining", "via": "control"}, 202)
        who = getattr(request.state, "caller", "?")
        try:
            await request_drain(node.store, name, member.lease, by=node.name,
                                reason=f"HTTP API on {node.name} ({who})")
        except NodeNotLive as exc:
            return error(404, "node_not_found", str(exc))
        return JSONResponse({"node": name, "status": "requested", "via": "control"}, 202)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error(exc.status_code, code, message, headers=exc.headers)


async def _too_large(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyTooLarge)
    return too_large(exc.limit)


async def _internal(request: Request, exc: Exception) -> Response:
    return error(500, "internal", f"internal error ({type(exc).__name__}); see the node's log")


def create_app(
    node: Node,
    *,
    token: str | SecretStr | None = None,
    session_manager: SessionManager | None = None,
    public_state: bool = False,
    max_body: int = DEFAULT_MAX_BODY,
    refresh: float = 2.0,
    max_streams: int = 100,
    write_wait: float = 2.0,
    management_role: ManagementRole | None = None,
) -> Starlette:
    """The HTTP API and dashboard of ``node`` (which the caller starts and closes).

    ``token``: the management token (``http.token``, at least 32 characters,
    else ConfigError); with neither a token nor a management session,
    management requests are always refused.
    ``management_role(session) -> bool``: which sessions may manage (state
    writes, drain); default: none — a plain session only reads state.
    ``session_manager``: also accept Shoal sessions (header or cookie) — not
    needed when the app is mounted behind your own :class:`SessionMiddleware`.
    ``public_state``: let state reads through without credentials (writes
    never). ``max_body``: request size limit in bytes (413 above it).
    ``refresh``: seconds between periodic views on ``/events``; ``max_streams``:
    open ``/events`` streams at most. ``write_wait``: how long a write waits
    for this node's copy to show it (read-your-writes) before answering."""
    api = _Api(node, check_token(token), public_state=public_state,
               feed=EventFeed(node, refresh=refresh, max_streams=max_streams),
               write_wait=write_wait, management_role=management_role)
    guard = api.guard
    by_method = {
        "GET": guard(api.get_doc, manage=False),
        "PUT": guard(api.put_doc),
        "DELETE": guard(api.delete_doc),
    }

    async def document(request: Request) -> Response:
        return await by_method.get(request.method, by_method["GET"])(request)

    routes = [
        Route("/", api.dashboard, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/ready", api.guard_input(api.ready), methods=["GET"]),
        Route("/cluster", api.cluster, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/events", api.events, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/state", guard(api.namespaces, manage=False), methods=["GET"]),
        Route("/state/{ns}", guard(api.namespace, manage=False), methods=["GET"]),
        Route("/state/{ns}/{key:path}", document, methods=["GET", "PUT", "DELETE"]),
        Route("/nodes/{name}/drain", guard(api.drain), methods=["POST"]),
        *schedule_routes(node, guard),
    ]
    middleware = [Middleware(BodyLimit, limit=max_body)]
    if session_manager is not None:
        middleware.append(Middleware(SessionMiddleware, manager=session_manager))
    app = Starlette(
        routes=routes, middleware=middleware,
        exception_handlers={HTTPException: _http_error, BodyTooLarge: _too_large,
                            Exception: _internal},
    )
    app.state.shoal_node = node
    app.state.shoal_events = api.feed  # .close() ends the live streams (server shutdown)
    return app
