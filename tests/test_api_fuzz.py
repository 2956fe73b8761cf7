"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis).

Two nodes on a memory store (fake clock: nothing expires while fuzzing) are
started in the app's lifespan, on the event loop schemathesis runs the app
on. Every generated request is authenticated with the API token, so state
writes and drains are exercised; schemathesis's ``ignored_auth`` check sends
them without it too. Every default check runs: no 5xx, documented status
codes and content types, responses match their schemas.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from shoal.http.api import create_app
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock

TOKEN = "fuzz-token-0123456789-abcdefghijklmn"
pytestmark = pytest.mark.timeout(120)


async def _forever(ctx: DutyContext) -> None:
    while await ctx.sleep(1.0):
        pass


class WithNodes:
    """The API of node ``fuzz``; its lifespan starts and stops two nodes."""

    def __init__(self) -> None:
        app = App("fuzz")
        app.duty("importer")(_forever)
        app.duty("cleanup")(_forever)
        clock = FakeClock()
        store = MemoryStore(clock)
        self.nodes = [
            Node(app, NodeSettings(name=name, ttl=6, drain_timeout=0.2), store=store, clock=clock)
            for name in ("fuzz", "peer")
        ]
        self.api = create_app(self.nodes[0], token=TOKEN, refresh=0.005, write_wait=0.5)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.api(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for node in self.nodes:
                    await node.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for node in self.nodes:
                    await node.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(scope="module")
def api_schema() -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", WithNodes())


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_api_never_fails_and_matches_its_openapi(case: Any) -> None:
    # /ready answers 503 by design (a role this node lacks): the body is still checked
    excluded = [not_a_server_error] if case.path == "/ready" else []
    response = case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                      excluded_checks=excluded)
    if case.path == "/ready" and response.status_code == 503:
        assert response.json()["reason"] == "no_role"
