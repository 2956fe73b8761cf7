"""HTTP API and dashboard (shoal.http.api) over ASGI, against nodes on a memory store."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from shoal.http._view import cluster_view
from shoal.http.api import create_app
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.control import DRAIN
from shoal.runtime.node import Node
from shoal.sessions import SessionManager, generate_secret
from shoal.testing.cluster import SimCluster
from shoal.testing.procs import ProcCluster

TTL = 6
TOKEN = "s3cret-api-token-for-the-http-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(60)


async def _forever(ctx: DutyContext) -> None:
    while await ctx.sleep(1.0):
        pass


def make_app() -> App:
    app = App("t")
    for name in ("importer", "cleanup", "renewer"):
        app.duty(name)(_forever)
    return app


class Cluster(SimCluster):
    def __init__(self) -> None:
        super().__init__(make_app(), ttl=TTL, rebalance_delay=1.0, roles=("api",), zone="z1")


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.aclose()


def client(node: Node, **kw: Any) -> httpx2.AsyncClient:
    kw.setdefault("token", TOKEN)
    app = create_app(node, **kw)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://testserver")


def assert_error(resp: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


# -- health and readiness ---------------------------------------------------------------------
async def test_health_and_ready_follow_the_node_phase(cluster: Cluster) -> None:
    a = cluster.node("a")
    async with client(a) as http:
        health = (await http.get("/health")).json()
        assert health == {"status": "ok", "node": "a", "phase": "STOPPED"}
        resp = await http.get("/ready")
        assert resp.status_code == 503 and resp.json()["reason"] == "starting"
        await a.start()
        await cluster.add("b")
        await cluster.run(0.5)
        resp = await http.get("/ready")
        assert resp.status_code == 200 and resp.json()["ready"] is True, resp.text
        assert resp.json()["stale"] is False
        assert (await http.get("/ready?coordinated=1")).status_code == 200
        cluster.links["a"].cut()  # store lost: keep serving from the stale cache
        await cluster.run(TTL + 1.0)
        assert a.phase == "LOST"
        resp = await http.get("/ready")
        body = resp.json()
        assert resp.status_code == 200 and body["reason"] == "stale", resp.text
        assert body["stale"] is True and body["stale_seconds"] >= TTL
        resp = await http.get("/ready?coordinated=1")  # but it holds no lease
        assert resp.status_code == 503 and resp.json()["reason"] == "not_coordinated"
        assert (await http.get("/health")).status_code == 200  # still alive
        cluster.links["a"].heal()
        await cluster.run(3.0)
        assert (await http.get("/ready?coordinated=1")).status_code == 200
        assert (await http.get("/ready")).json()["stale"] is False
        assert (await http.get("/ready?role=api")).status_code == 200
        resp = await http.get("/ready?role=frontend")  # not a frontend node
        assert resp.status_code == 503 and resp.json()["reason"] == "no_role"
        assert_error(await http.get("/ready?coordinated=maybe"), 400, "invalid_query")
        await a.drain()
        resp = await http.get("/ready")
        assert resp.status_code == 503 and resp.json()["reason"] == "draining"
        assert (await http.get("/health")).status_code == 200
        await a.aclose()
        assert (await http.get("/ready")).status_code == 503


# -- cluster view -----------------------------------------------------------------------------
async def test_cluster_view_lists_nodes_leader_duties_and_store(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    await cluster.run(3.0)
    await a.state.put("cfg", "x", 1)
    await cluster.run(0.5)
    async with client(a) as http:
        view = (await http.get("/cluster")).json()
    assert view["node"] == "a" and view["phase"] == "ACTIVE" and view["ready"] is True
    assert view["node_count"] == 2 and [n["name"] for n in view["nodes"]] == ["a", "b"]
    assert view["leader"] == a.leader and view["leader"] in ("a", "b")
    me = next(n for n in view["nodes"] if n["self"])
    other = next(n for n in view["nodes"] if not n["self"])
    assert me["name"] == "a" and me["roles"] == ["api"] and me["zone"] == "z1"
    assert me["session"]["keepalive_latency"] >= 0 and me["session"]["ttl"] == TTL
    assert "session" not in other and other["version"] == me["version"] != ""
    duties = {d["name"]: d for d in view["duties"]}
    assert set(duties) == {"leader", "importer", "cleanup", "renewer"}
    owners = a.owners
    for name, d in duties.items():
        assert d["owner"] == owners[name].node and d["token"] == owners[name].token
        assert d["since"] == owners[name].since
    assert sorted(me["duties"] + other["duties"]) == sorted(duties)
    local = {d["name"]: d for d in view["local_duties"]}
    assert set(local) == set(a.runners) and all(d["status"] == "running" for d in local.values())
    store = view["store"]
    assert store["connected"] is True and store["stale"] is False and store["stale_seconds"] == 0
    assert store["revision"] == a.state.revision and store["documents"] == 1
    assert store["namespaces"] == {"cfg": 1}
    assert json.loads(json.dumps(cluster_view(b.status())))["node"] == "b"  # shoal status --json


# -- replicated state -------------------------------------------------------------------------
async def test_state_read_write_conflict_and_delete(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    async with client(a) as http:
        resp = await http.put("/state/cfg/feature-x", json={"on": True}, headers=AUTH)
        assert resp.status_code == 200, resp.text
        rev = resp.json()["revision"]
        assert resp.json() == {"namespace": "cfg", "key": "feature-x", "revision": rev}
        got = await http.get("/state/cfg/feature-x", headers=AUTH)  # read-your-writes
        assert got.json()["value"] == {"on": True} and got.json()["revision"] == rev
        assert got.headers["etag"] == f'"{rev}"' and got.json()["version"] == 1
        # optimistic concurrency: If-Match (ETag or bare revision), If-None-Match: *
        stale = await http.put("/state/cfg/feature-x", json=1,
                               headers={**AUTH, "If-Match": str(rev - 1)})
        assert assert_error(stale, 409, "conflict")["current_revision"] == rev
        assert_error(await http.put("/state/cfg/feature-x", json=1,
                                    headers={**AUTH, "If-None-Match": "*"}), 409, "conflict")
        ok = await http.put("/state/cfg/feature-x", json={"on": False},
                            headers={**AUTH, "If-Match": f'"{rev}"'})
        assert ok.status_code == 200 and ok.json()["revision"] > rev
        created = await http.put("/state/cfg/tenant:7/settings", json=[1, 2],
                                 headers={**AUTH, "If-None-Match": "*"})
        assert created.status_code == 200
        listing = (await http.get("/state/cfg", headers=AUTH)).json()
        assert set(listing["documents"]) == {"feature-x", "tenant:7/settings"}
        assert listing["documents"]["tenant:7/settings"]["value"] == [1, 2]
        assert (await http.get("/state", headers=AUTH)).json()["namespaces"] == {"cfg": 2}
        assert (await http.get("/state/empty", headers=AUTH)).json()["documents"] == {}
        # the other node sees the write
        await b.state.wait_for(ok.json()["revision"])
        assert b.state.get("cfg", "feature-x").value == {"on": False}  # type: ignore[union-attr]
        # bad input is a 4xx with the error shape, never a 500
        assert_error(await http.put("/state/cfg/x", content=b"{nope", headers=AUTH),
                     400, "invalid_json")
        assert_error(await http.put("/state/cfg/x", content=b"", headers=AUTH), 400, "invalid_json")
        assert_error(await http.put("/state/cfg/x", content=b"NaN", headers=AUTH),
                     400, "invalid_json")
        assert_error(await http.put("/state/-bad/x", json=1, headers=AUTH), 400, "invalid_name")
        assert_error(await http.get("/state/cfg/%20x", headers=AUTH), 400, "invalid_name")
        assert_error(await http.put("/state/cfg/x", json=1, headers={**AUTH, "If-Match": "W/1"}),
                     400, "invalid_precondition")
        deep = b"[" * 100_000 + b"]" * 100_000
        assert_error(await http.put("/state/cfg/x", content=deep, headers=AUTH), 400,
                     "invalid_document")  # the one nesting-depth limit
        # delete (If-Match too), then 404
        wrong = await http.delete("/state/cfg/feature-x", headers={**AUTH, "If-Match": "1"})
        assert_error(wrong, 409, "conflict")
        gone = await http.delete("/state/cfg/feature-x", headers=AUTH)
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        again = await http.delete("/state/cfg/feature-x", headers=AUTH)
        assert again.json() == {"namespace": "cfg", "key": "feature-x", "revision": 0,
                                "deleted": False}
        assert_error(await http.get("/state/cfg/feature-x", headers=AUTH), 404, "not_found")


async def test_state_writes_refused_with_503_while_the_store_is_lost(cluster: Cluster) -> None:
    a = await cluster.add("a")
    async with client(a) as http:
        assert (await http.put("/state/cfg/x", json=1, headers=AUTH)).status_code == 200
        cluster.links["a"].cut()
        await cluster.run(2.0)
        err = assert_error(await http.put("/state/cfg/x", json=2, headers=AUTH),
                           503, "store_unavailable")
        assert "write refused" in err["message"]
        read = await http.get("/state/cfg/x", headers=AUTH)  # reads keep working, marked stale
        assert read.status_code == 200 and read.json()["value"] == 1 and read.json()["stale"]
        cluster.links["a"].heal()
        await cluster.run(2.0)


# -- authentication and limits ----------------------------------------------------------------
async def test_management_needs_a_token_or_a_session(cluster: Cluster) -> None:
    a = await cluster.add("a")
    async with client(a) as http:
        for resp in (
            await http.put("/state/cfg/x", json=1),
            await http.put("/state/cfg/x", json=1, headers={"Authorization": "Bearer wrong"}),
            await http.put("/state/cfg/x", json=1, headers={"Authorization": f"Basic {TOKEN}"}),
            await http.delete("/state/cfg/x"),
            await http.post("/nodes/a/drain"),
            await http.get("/state/cfg/x"),  # state reads are not public by default
            await http.get("/state"),
        ):
            assert_error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"].startswith("Bearer")
        for path in ("/health", "/cluster", "/metrics", "/openapi.json", "/"):
            assert (await http.get(path)).status_code == 200, path
        assert not a.draining
    async with client(a, token=None) as http:  # no token, no sessions: always refused
        assert_error(await http.put("/state/cfg/x", json=1, headers=AUTH), 401, "unauthorized")
    async with client(a, public_state=True) as http:
        assert (await http.get("/state/cfg/x")).status_code == 404
        assert_error(await http.put("/state/cfg/x", json=1), 401, "unauthorized")
    manager = SessionManager(generate_secret(), clock=cluster.clock)
    session = manager.issue("alice")
    async with client(a, token=None, session_manager=manager,
                      management_role=lambda s: s.subject == "alice") as http:
        ok = await http.put("/state/cfg/x", json=1, headers={"Authorization": f"Bearer {session}"})
        assert ok.status_code == 200, ok.text
        http.cookies.set("shoal_session", session)
        assert (await http.put("/state/cfg/y", json=1)).status_code == 200
        cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        assert_error(await http.put("/state/cfg/y", json=2, headers=cross), 401, "unauthorized")
        same = {"Origin": "http://testserver"}
        assert (await http.put("/state/cfg/y", json=3, headers=same)).status_code == 200
        http.cookies.clear()
        bad = {"Authorization": f"Bearer {session[:-2]}xx"}
        assert_error(await http.put("/state/cfg/x", json=1, headers=bad), 401, "unauthorized")


async def test_oversized_bodies_get_413(cluster: Cluster) -> None:
    a = await cluster.add("a")
    async with client(a) as http:
        big = b'"' + b"x" * (2 << 20) + b'"'
        assert_error(await http.put("/state/cfg/x", content=big, headers=AUTH),
                     413, "body_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(40):
                yield b" " * 65536

        assert_error(await http.put("/state/cfg/x", content=chunks(), headers=AUTH),
                     413, "body_too_large")
    async with client(a, max_body=4 << 20) as http:  # the body fits, the document does not
        assert_error(await http.put("/state/cfg/x", content=big, headers=AUTH),
                     413, "document_too_large")
    assert a.state.get("cfg", "x") is None


# -- drain ------------------------------------------------------------------------------------
async def test_drain_the_local_node(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    await cluster.run(3.0)
    assert a.runners
    async with client(a) as http:
        resp = await http.post("/nodes/a/drain", headers=AUTH)
        assert resp.status_code == 202
        assert resp.json() == {"node": "a", "status": "draining", "via": "local"}
        await cluster.run(2.0)
        assert a.draining and not a.runners
        assert (await http.get("/ready")).json()["reason"] == "draining"
        again = await http.post("/nodes/a/drain", headers=AUTH)
        assert again.status_code == 202 and again.json()["status"] == "already_draining"
    await cluster.run(2.0)
    assert set(b.members) == {"b"} and {o.node for o in b.owners.values()} == {"b"}


async def test_drain_a_remote_node_through_a_control_key(cluster: Cluster) -> None:
    a, b = await cluster.add("a"), await cluster.add("b")
    await cluster.run(3.0)
    async with client(a) as http:
        assert_error(await http.post("/nodes/nobody/drain", headers=AUTH), 404, "node_not_found")
        assert_error(await http.post("/nodes/-x/drain", headers=AUTH), 400, "invalid_name")
        resp = await http.post("/nodes/b/drain", headers=AUTH)
        assert resp.status_code == 202
        assert resp.json() == {"node": "b", "status": "requested", "via": "control"}
        key = cluster.store.snapshot()[DRAIN + "b"]
        assert key.lease == b.session.lease  # type: ignore[union-attr]
        assert json.loads(key.value)["by"] == "a"
        await cluster.run(3.0)
        assert b.draining and not b.runners and not a.draining
        assert set(a.members) == {"a"} and {o.node for o in a.owners.values()} == {"a"}
        assert DRAIN + "b" not in cluster.store.snapshot()  # gone with b's lease
        # a new node with the same name is not drained by the old request
        await b.aclose()
        b2 = await cluster.add("b")
        await cluster.run(2.0)
        assert not b2.draining and set(a.members) == {"a", "b"}


# -- metrics, events, dashboard, OpenAPI --------------------------------------------------------
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})?'
                     r" (-?[0-9.e+-]+|NaN|[+-]Inf)$")


def parse_metrics(text: str) -> dict[str, float]:
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter") and name not in typed
            typed.add(name)
            continue
        assert _SAMPLE.match(line), line
        series, value = line.rsplit(" ", 1)
        assert series.split("{")[0] in typed, line
        samples[series] = float(value)
    return samples


async def test_metrics_are_prometheus_text(cluster: Cluster) -> None:
    a, _ = await cluster.add("a"), await cluster.add("b")
    await cluster.run(3.0)
    await a.state.put("cfg", "x", 1)
    async with client(a) as http:
        resp = await http.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = parse_metrics(resp.text)
    assert m['shoal_nodes{node="a"}'] == 2
    assert m['shoal_is_leader{node="a"}'] == (1 if a.leader == "a" else 0)
    assert m['shoal_phase{node="a",phase="ACTIVE"}'] == 1
    assert m['shoal_phase{node="a",phase="LOST"}'] == 0
    assert m['shoal_duties_owned{node="a"}'] == len(a.runners)
    assert m['shoal_duties_acquired_total{node="a"}'] == a.counters["acquired"]
    for name in ("shoal_failovers_total", "shoal_duties_released_total", "shoal_duty_crashes_total",
                 "shoal_keepalive_latency_seconds", "shoal_state_stale_seconds"):
        assert f'{name}{{node="a"}}' in m, name
    assert m['shoal_store_up{node="a"}'] == 1
    assert m['shoal_state_revision{node="a"}'] == a.state.revision


async def test_metrics_parse_with_prometheus_client(cluster: Cluster) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    a, b = await cluster.add("a"), await cluster.add("b")
    await cluster.run(3.0)
    await a.state.put("cfg", "x", 1)
    await a.state.put("cfg", "y", 2)
    await cluster.run(0.5)  # the watch applies both writes
    async with client(a) as http:
        text = (await http.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    one = {name: [(s.labels, s.value) for s in f.samples] for name, f in families.items()}
    status = a.status()
    assert families["shoal_duties_acquired"].type == "counter"
    assert families["shoal_nodes"].type == "gauge"
    assert one["shoal_nodes"] == [({"node": "a"}, 2.0)]
    assert one["shoal_duties_owned"] == [({"node": "a"}, float(len(status.local)))]
    assert one["shoal_duties_unowned"] == [({"node": "a"}, 0.0)]
    assert one["shoal_duties_acquired"] == [({"node": "a"}, float(status.counters.acquired))]
    c = status.counters
    assert c.acquired - c.released - c.lost == len(status.local) > 0
    assert one["shoal_duties_released"] == [({"node": "a"}, float(c.released))]
    assert one["shoal_state_documents"] == [({"node": "a"}, 2.0)]
    assert one["shoal_is_leader"] == [({"node": "a"}, 1.0 if status.is_leader else 0.0)]
    phases = {s["phase"]: v for s, v in one["shoal_phase"]}
    assert phases == {"JOINING": 0, "ACTIVE": 1, "SUSPENDED": 0, "LOST": 0, "STOPPED": 0}
    assert one["shoal_info"][0][0]["version"]
    assert one["shoal_info"][0][0]["app_version"] == a.app.version
    assert one["shoal_cordoned"] == [({"node": "a"}, 0.0)]
    remaining = one["shoal_lease_remaining_seconds"][0][1]
    assert 0 < remaining <= TTL - 1.0
    # a second app on the same node has its own registry (no global one): same output
    from shoal.http._metrics import node_registry, render_metrics

    assert render_metrics(node_registry(a.status, "v")) != b""
    assert await a.set_cordoned(True)
    await cluster.run(0.5)  # its record, republished, comes back through the watch
    async with client(a) as http:
        text = (await http.get("/metrics")).text
    cordoned = {f.name: f for f in text_string_to_metric_families(text)}["shoal_cordoned"]
    assert [s.value for s in cordoned.samples] == [1.0]
    await b.aclose()
    await cluster.run(1.0)
    async with client(a) as http:
        text = (await http.get("/metrics")).text
    after = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in after["shoal_nodes"].samples] == [1.0]


async def read_sse(app: Any, until: Any, limit: float = 5.0) -> list[tuple[str, Any]]:
    """Call the ASGI app for GET /events; collect (event, data) until ``until(events)``."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/events", "raw_path": b"/events", "root_path": "",
             "query_string": b"", "headers": [(b"host", b"testserver")],
             "client": ("test", 1), "server": ("testserver", 80)}
    bye = asyncio.Event()
    requested = False
    out: list[tuple[str, Any]] = []
    buf = b""
    start: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await bye.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal buf
        if message["type"] == "http.response.start":
            start.update(message)
            return
        buf += message.get("body", b"")
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines())
            if "event" in fields:
                out.append((fields["event"], json.loads(fields["data"])))
        if until(out):
            bye.set()

    task = asyncio.create_task(app(scope, receive, send))
    waiter = asyncio.create_task(bye.wait())
    async with asyncio.timeout(limit):
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        bye.set()
        await task
    headers = dict(start["headers"])
    assert start["status"] == 200 and headers[b"content-type"].startswith(b"text/event-stream")
    return out


async def test_events_start_with_a_snapshot_then_follow_the_cluster(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.run(1.0)
    app = create_app(a, refresh=30.0)
    joining = asyncio.create_task(cluster.add("b"))

    def saw_b(events: list[tuple[str, Any]]) -> bool:
        return any(kind == "view" and data["node_count"] == 2 for kind, data in events)

    events = await read_sse(app, saw_b)
    await joining
    kind, first = events[0]
    assert kind == "snapshot" and first["node"] == "a" and first["node_count"] == 1
    assert set(first) >= {"leader", "duties", "nodes", "store"}
    cluster_events = [data for kind, data in events if kind == "cluster"]
    assert {"kind": "joined", "name": "b"}.items() <= cluster_events[0].items()
    assert not a._subscribers  # the stream unsubscribed when the client left
    periodic = await read_sse(create_app(a, refresh=0.01), lambda ev: len(ev) >= 3)
    assert [k for k, _ in periodic[:3]] == ["snapshot", "view", "view"]


async def test_event_streams_are_limited_and_closed_with_the_server(cluster: Cluster) -> None:
    a = await cluster.add("a")
    async with client(a, max_streams=0) as http:
        assert_error(await http.get("/events"), 503, "too_many_streams")
    app = create_app(a, refresh=30.0)
    feed = app.state.shoal_events

    def close_after_snapshot(events: list[tuple[str, Any]]) -> bool:
        if events and not feed.closed:
            feed.close()  # what shoal run does before stopping uvicorn
        return False

    assert [k for k, _ in await read_sse(app, close_after_snapshot)] == ["snapshot"]
    assert feed.open == 0 and not a._subscribers
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                                  base_url="http://testserver") as http:
        assert_error(await http.get("/events"), 503, "too_many_streams")


async def test_dashboard_errors_openapi_and_mounting(cluster: Cluster) -> None:
    a = await cluster.add("a")
    await cluster.run(1.0)  # joined: /cluster lists it
    async with client(a) as http:
        page = await http.get("/")
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "'sha256-" in csp and "unsafe-inline" not in csp
        for marker in ('id="node-count"', 'id="leader"', 'id="nodes"', 'id="duties"',
                       'id="store"', "dataset.node", "dataset.duty", "dataset.owner",
                       "EventSource", "@media (max-width:600px)"):
            assert marker in page.text, marker
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        assert_error(await http.get("/nope"), 404, "not_found")
        resp = await http.post("/health")
        assert_error(resp, 405, "method_not_allowed")
        assert "GET" in resp.headers["allow"]
        doc = (await http.get("/openapi.json")).json()
        node = (await http.get("/cluster")).json()["nodes"][0]
    assert doc["openapi"].startswith("3.") and doc["servers"] == [{"url": "/"}]
    schema = doc["components"]["schemas"]["Node"]  # every field of /cluster's nodes described
    assert set(schema["required"]) <= set(node) <= set(schema["properties"]), sorted(node)
    assert {"/health", "/ready", "/cluster", "/metrics", "/events", "/state/{ns}/{key}",
            "/nodes/{name}/drain"} <= set(doc["paths"])
    outer = Starlette(routes=[Mount("/shoal", app=create_app(a, token=TOKEN))])
    transport = httpx2.ASGITransport(app=outer)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/shoal/health")).json()["node"] == "a"
        assert (await http.get("/shoal/openapi.json")).json()["servers"] == [{"url": "/shoal"}]
        put = await http.put("/shoal/state/cfg/k", json=1, headers=AUTH)
        assert put.status_code == 200


# -- shoal run ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_shoal_run_serves_the_api_until_it_stops(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sqlite = {"path": str(tmp_path / "s.db")}
    base = {"cluster": "http", "store": {"backend": "sqlite", "sqlite": sqlite},
            "timings": {"preset": "local"}, "reaper": {"enabled": False},
            "http": {"host": "127.0.0.1", "port": port, "token": TOKEN}}
    with ProcCluster(tmp_path, base) as procs:
        node = procs.spawn("a")
        url = node.wait_for(r"dashboard and HTTP API: (http://\S+)", timeout=20).group(1)
        assert url == f"http://127.0.0.1:{port}/"
        node.wait_for(r"started ticker", timeout=20)
        with httpx2.Client(base_url=url, timeout=5) as http:
            assert http.get("health").json()["node"] == "a"
            assert http.get("ready").status_code == 200
            assert 'shoal_nodes{node="a"} 1' in http.get("metrics").text
            assert 'id="nodes"' in http.get("").text
            resp = http.post("nodes/a/drain", headers=AUTH)
            assert resp.status_code == 202 and resp.json()["via"] == "local"
            # a quick drain revokes at once, without first publishing its draining flag
            node.wait_for(r"stopped ticker", timeout=10)
            assert http.get("ready").json()["reason"] == "draining"
        node.terminate()
        assert node.wait_exit() == 0
        assert "node a stopped" in node.output()
