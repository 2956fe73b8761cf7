"""Authority (issue #12 section 2): the management token vs user sessions."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner

from shoal.cli.main import main as cli
from shoal.config import NodeConfig
from shoal.errors import ConfigError
from shoal.http.api import create_app
from shoal.runtime.app import App
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.sessions import Session, SessionManager, generate_secret, revoke_everywhere
from shoal.store.memory import MemoryStore
from shoal.testing.clock import FakeClock

TOKEN = "management-token-0123456789-abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    clock = FakeClock()
    n = Node(App("t"), NodeSettings(name="a", ttl=6), store=MemoryStore(clock), clock=clock)
    await n.start()
    yield n
    await n.aclose()


def client(node: Node, **kw: Any) -> httpx2.AsyncClient:
    kw.setdefault("token", TOKEN)
    app = create_app(node, **kw)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://testserver")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_plain_session_reads_but_never_manages(node: Node) -> None:
    manager = SessionManager(generate_secret())
    alice = manager.issue("alice")
    await node.state.wait_for(await node.state.put("cfg", "x", 1))
    async with client(node, session_manager=manager) as http:
        assert (await http.get("/state/cfg/x", headers=bearer(alice))).status_code == 200
        for resp in (
            await http.put("/state/cfg/x", json=2, headers=bearer(alice)),
            await http.delete("/state/cfg/x", headers=bearer(alice)),
            await http.post("/nodes/a/drain", headers=bearer(alice)),
        ):
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "forbidden"
            assert "session:alice has no management role" in resp.json()["error"]["message"]
        assert not node.draining and node.state.get("cfg", "x").value == 1  # type: ignore[union-attr]
        assert (await http.put("/state/cfg/x", json=3, headers=AUTH)).status_code == 200


async def test_the_management_role_hook_maps_sessions_to_managers(node: Node) -> None:
    manager = SessionManager(generate_secret())
    admin = manager.issue("root", data={"roles": ["shoal-admin"]})
    user = manager.issue("bob", data={"roles": ["viewer"]})

    def is_admin(session: Session) -> bool:
        return "shoal-admin" in session.data.get("roles", ())

    async with client(node, token=None, session_manager=manager, management_role=is_admin) as http:
        assert (await http.put("/state/cfg/x", json=1, headers=bearer(admin))).status_code == 200
        assert (await http.put("/state/cfg/x", json=2, headers=bearer(user))).status_code == 403

    def broken(session: Session) -> bool:
        raise RuntimeError("hook bug")

    async with client(node, token=None, session_manager=manager, management_role=broken) as http:
        assert (await http.put("/state/cfg/x", json=3, headers=bearer(admin))).status_code == 403


async def test_shoal_namespaces_are_never_writable_through_the_api(node: Node) -> None:
    manager = SessionManager(generate_secret())
    victim = manager.issue("victim")
    await revoke_everywhere(node.state, "mallory")
    await node.state.wait_for(await node.state.put("cfg", "sync", 1))
    async with client(node) as http:
        for resp in (
            await http.put("/state/sessions/subject:victim", json={"before": 2e9}, headers=AUTH),
            await http.delete("/state/sessions/subject:mallory", headers=AUTH),
        ):
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "reserved_namespace"
    assert node.state.get("sessions", "subject:victim") is None
    assert node.state.get("sessions", "subject:mallory") is not None
    assert manager.verify(victim).subject == "victim"
    from shoal.runtime.schedule import RESERVED_NAMESPACES as SCHEDULE_NAMESPACES

    async with client(node) as http:  # the schedules' records and triggers too
        for ns in sorted(SCHEDULE_NAMESPACES):
            resp = await http.put(f"/state/{ns}/nightly", json={"x": 1}, headers=AUTH)
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["code"] == "reserved_namespace"
    async with client(node) as http:  # control keys live outside state/: unreachable
        resp = await http.put("/state/control/drain/a", json={"by": "x"}, headers=AUTH)
        assert resp.status_code == 200
    assert (await node.store.get("control/drain/a")) is None and not node.draining


def test_the_management_token_is_long_and_never_empty() -> None:
    for bad, why in (("", "empty"), ("x" * 31, "31 characters")):
        with pytest.raises(ConfigError, match=f"http.token: bad value '\\*\\*\\*' .*{why}"):
            NodeConfig(http={"token": bad})
        with pytest.raises(ConfigError, match=why):
            create_app(None, token=bad)  # type: ignore[arg-type]
    assert NodeConfig(http={"token": "x" * 32}).http.token is not None


async def test_failed_authentications_are_counted_and_logged_rate_limited(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    manager = SessionManager(generate_secret())
    caplog.set_level(logging.WARNING, "shoal.http")
    async with client(node, session_manager=manager) as http:
        for _ in range(5):
            assert (await http.put("/state/cfg/x", json=1, headers=bearer("w" * 40))).status_code \
                == 401
        assert (await http.put("/state/cfg/x", json=1)).status_code == 401
        assert (await http.put("/state/cfg/x", json=1,
                               headers=bearer(manager.issue("u")))).status_code == 403
        text = (await http.get("/metrics")).text
    assert 'shoal_http_auth_failures_total{node="a",reason="session_malformed"} 5' in text
    assert 'shoal_http_auth_failures_total{node="a",reason="missing"} 1' in text
    assert 'shoal_http_auth_failures_total{node="a",reason="not_manager"} 1' in text
    lines = [r for r in caplog.records if "refused credentials" in r.getMessage()]
    assert len(lines) == 1 and "PUT /state/cfg/x" in lines[0].getMessage()
    assert "w" * 40 not in caplog.text


class _Redirector(http.server.BaseHTTPRequestHandler):
    seen: list[str | None] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(307)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_node_drain_url_never_follows_a_redirect(redirector: http.server.HTTPServer) -> None:
    _Redirector.seen.clear()
    url = f"http://127.0.0.1:{redirector.server_port}"
    result = CliRunner().invoke(cli, ["node", "drain", "n2", "--url", url, "--token", TOKEN])
    assert result.exit_code != 0
    assert "redirects (307)" in result.output and "never followed" in result.output
    assert _Redirector.seen == [f"Bearer {TOKEN}"]  # one request; the redirect not followed
