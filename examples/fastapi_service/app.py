"""A FastAPI service whose copies form one Shoal cluster.

Every copy embeds a Shoal node in the app's lifespan (``async with node``):

* **shared sessions** — ``SessionMiddleware`` verifies tokens signed with the
  cluster's secret, so a login on one copy is valid on every copy, and
  ``/logout`` on any copy logs the session out everywhere (a revocation
  document in replicated state);
* **a duty** — ``report-mailer`` runs on exactly one copy at a time and writes
  its report with a fenced write (``guard=ctx.guard()``) into replicated state,
  which every copy reads locally (``GET /report``);
* **Shoal's HTTP API and dashboard** mounted at ``/shoal/``; a load balancer
  health-checks ``/shoal/ready`` (examples/haproxy/haproxy.cfg);
* **store lost** — reads keep working from the local copy; a write answers
  ``503`` with a clear message (``StoreUnavailable``) instead of a 500.

Run two copies (the same secret on both; SQLite file next to node.yaml)::

    export SHOAL__AUTH__SECRET="$(shoal secret generate)"
    python examples/fastapi_service/app.py --name api-1 --port 8001
    python examples/fastapi_service/app.py --name api-2 --port 8002

    curl -s -XPOST localhost:8001/login -H 'content-type: application/json' \\
         -d '{"username": "ada"}'                          # -> {"token": "..."}
    curl -s localhost:8002/me -H "Authorization: Bearer $TOKEN"   # valid on the other copy
    open http://127.0.0.1:8001/shoal/                      # the dashboard
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import shoal
from shoal.config import NodeConfig
from shoal.http import SessionMiddleware, current_session, set_session_cookie
from shoal.http.api import create_app
from shoal.sessions import Session, SessionManager, revoke_session, revoked_in

HERE = Path(__file__).resolve().parent


class Login(BaseModel):
    username: str


def require_session(request: Request) -> Session:
    """A FastAPI dependency: the request's verified session, else 401."""
    session = current_session(request)
    if session is None:
        raise HTTPException(status_code=401, detail="please log in")
    return session


def create_api(config: NodeConfig) -> FastAPI:
    """The FastAPI app of one copy, with its Shoal node started in the lifespan."""
    cluster = shoal.App("shop")
    nodes: dict[str, shoal.Node] = {}  # filled before the node starts
    interval = float(config.params.get("interval", 2.0))

    @cluster.duty("report-mailer")
    async def report_mailer(ctx: shoal.DutyContext) -> None:
        state = nodes["node"].state
        sent = 0
        while True:
            sent += 1
            report = {"sent_by": ctx.node, "token": ctx.token, "count": sent, "at": time.time()}
            try:
                await state.put("reports", "daily", report, guard=ctx.guard())  # fenced
            except shoal.DutyLost:
                return  # another copy owns the duty now
            if not await ctx.sleep(interval):
                return

    def revoked(session: Session) -> bool:
        node = nodes.get("node")
        return True if node is None else revoked_in(node.state)(session)  # fail closed

    manager = SessionManager.from_config(config, ttl=8 * 3600, revoked=revoked)

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        node = await shoal.Node.from_config(cluster, config)
        nodes["node"] = node
        async with node:  # joins the cluster; leaving the block hands the duty over
            api.mount("/shoal", create_app(node, token=config.http.token))
            yield

    api = FastAPI(title="shop", lifespan=lifespan)
    api.add_middleware(SessionMiddleware, manager=manager)

    @api.exception_handler(shoal.StoreUnavailable)
    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # the store is lost: reads still work, writes must wait for it (retry later)
        return JSONResponse({"error": {"code": "store_unavailable", "message": str(exc)}},
                            status_code=503, headers={"Retry-After": "2"})

    @api.post("/login")
    async def login(form: Login, response: Response) -> dict[str, str]:
        # a real service checks a password here
        token = manager.issue(form.username, {"name": form.username.title()})
        set_session_cookie(response, token, max_age=manager.ttl, secure=False)
        return {"token": token}

    @api.get("/me")
    async def me(session: Annotated[Session, Depends(require_session)]) -> dict[str, Any]:
        return {"user": session.subject, "served_by": nodes["node"].name}

    @api.post("/logout", status_code=204)
    async def logout(session: Annotated[Session, Depends(require_session)]) -> None:
        await revoke_session(nodes["node"].state, session)  # on every copy

    @api.post("/visits")
    async def visit(session: Annotated[Session, Depends(require_session)]) -> dict[str, Any]:
        state = nodes["node"].state
        doc = state.get("visits", session.subject)
        count = (doc.value if doc else 0) + 1
        await state.put("visits", session.subject, count)  # replicated; 503 if store lost
        return {"user": session.subject, "visits": count, "served_by": nodes["node"].name}

    @api.get("/report")
    async def report() -> dict[str, Any]:
        doc = nodes["node"].state.get("reports", "daily")  # local read, no I/O
        return {"served_by": nodes["node"].name, "report": doc.value if doc else None}

    return api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("SHOAL_CONFIG", HERE / "node.yaml"))
    parser.add_argument("--name", help="node name (default: node.name of the config)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    overrides = {"node.address": f"http://{args.host}:{args.port}/shoal"}
    if args.name:
        overrides["node.name"] = args.name
    config = shoal.load_config(args.config, overrides=overrides)
    uvicorn.run(create_api(config), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
