"""Input limits (issue #12 section 3): one nesting-depth limit on every path."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner, Result

from shoal.cli.main import main
from shoal.errors import InvalidDocument
from shoal.http.api import create_app
from shoal.runtime._state_model import MAX_DEPTH
from shoal.runtime.app import App
from shoal.runtime.context import DutyContext
from shoal.runtime.node import Node
from shoal.runtime.settings import NodeSettings
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SqliteStore
from shoal.testing.clock import FakeClock

TOKEN = "limits-token-0123456789-abcdefghijklmn"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.timeout(60)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def cli(*args: str, stdin: str | None = None) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.upper().startswith("SHOAL__")}
    return CliRunner().invoke(main, list(args), env=clean, input=stdin)


async def test_api_and_node_state_share_the_depth_limit() -> None:
    clock = FakeClock()
    node = Node(App("t"), NodeSettings(name="a", ttl=6), store=MemoryStore(clock), clock=clock)
    await node.start()
    try:
        app = create_app(node, token=TOKEN)
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                                      base_url="http://t") as http:
            ok = await http.put("/state/cfg/ok", json=nested(MAX_DEPTH), headers=AUTH)
            assert ok.status_code == 200, ok.text
            for depth in (MAX_DEPTH + 1, 950):
                body = b"[" * depth + b"1" + b"]" * depth
                resp = await http.put("/state/cfg/deep", content=body, headers=AUTH)
                assert resp.status_code == 400, resp.text
                assert resp.json()["error"]["code"] == "invalid_document"
                assert f"more than {MAX_DEPTH} levels deep" in resp.json()["error"]["message"]
            long_key = "k" * 60_000
            resp = await http.put(f"/state/cfg/{long_key}", json=1, headers=AUTH)
            assert resp.status_code == 400 and len(resp.text) < 600  # the echo is cut
        with pytest.raises(InvalidDocument, match="levels deep"):
            await node.state.put("cfg", "deep", nested(MAX_DEPTH + 1))
        assert node.state.get("cfg", "deep") is None
    finally:
        await node.aclose()


async def test_ctx_put_refuses_a_too_deep_document() -> None:
    clock = FakeClock()
    app = App("t")
    outcome: list[object] = []

    @app.duty("writer")
    async def writer(ctx: DutyContext) -> None:
        try:
            await ctx.put("state/cfg/deep", json.dumps(nested(MAX_DEPTH + 1)).encode())
        except InvalidDocument as exc:
            outcome.append(exc)
        outcome.append(await ctx.put("state/cfg/ok", json.dumps(nested(MAX_DEPTH)).encode()))
        await ctx.sleep(60)

    store = MemoryStore(clock)
    node = Node(app, NodeSettings(name="a", ttl=6), store=store, clock=clock)
    await node.start()
    try:
        for _ in range(100):
            if len(outcome) == 2:
                break
            await clock.run_for(0.1, step=0.1)
        assert isinstance(outcome[0], InvalidDocument) and isinstance(outcome[1], int)
        assert not (await store.range("state/cfg/deep")).kvs
    finally:
        await node.aclose()


def _snapshot(value: Any) -> str:
    from shoal.runtime._state_snapshot import Snapshot, render

    return render(Snapshot(("cfg",), (("cfg", "x", value),)))


async def _write_raw(db: Path, key: str, data: bytes) -> None:
    store = await SqliteStore.open(db)
    try:
        await store.put(key, data)
    finally:
        await store.aclose()


def test_state_set_and_get_share_the_depth_limit(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("store: {backend: sqlite, sqlite: {path: s.db}}\n")
    ok = tmp_path / "ok.json"
    ok.write_text(_snapshot(nested(MAX_DEPTH)))
    assert cli("state", "set", str(ok), "--config", str(config)).exit_code == 0
    got = cli("state", "get", "--config", str(config))  # a backup of accepted state works
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["documents"][0]["value"] == nested(MAX_DEPTH)

    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps({**json.loads(ok.read_text()),
                                "documents": [{"namespace": "cfg", "key": "x",
                                               "value": nested(MAX_DEPTH + 1)}]}))
    res = cli("state", "set", str(deep), "--config", str(config))
    assert res.exit_code == 2 and "levels deep" in res.stderr and "Traceback" not in res.output

    asyncio.run(_write_raw(tmp_path / "s.db", "state/cfg/raw", b"[" * 600 + b"]" * 600))
    res = cli("state", "get", "--config", str(config))
    assert res.exit_code == 2, res.output
    assert "state/cfg/raw: nested more than" in res.stderr and "Traceback" not in res.output
    assert res.stderr.count("\n") == 1


# -- YAML ---------------------------------------------------------------------------------------
_LOL = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(("text", "expected"), [
    (_LOL, "aliases expand to more than 100000 values"),
    ("params:\n  a: &a [*a]\n", ":2: refused YAML: an alias refers to a node that contains it"),
    ("params: {x: &m {k: *m}}\n", "recursive alias"),
    ("params:\n  x: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels deep"),
    ("params:\n  x: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
])
def test_yaml_aliases_and_nesting_are_bounded(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    res = cli("config", "check", str(path))
    assert res.exit_code == 2, res.output
    assert expected in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("params:\n  base: &b {x: 1}\n  more: {<<: *b, y: 2}\n  list: [*b, *b]\n")
    res = cli("config", "check", "--json", str(path))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["params"] == {"base": {"x": 1}, "more": {"x": 1, "y": 2},
                                                 "list": [{"x": 1}, {"x": 1}]}


# -- /events ------------------------------------------------------------------------------------
async def _open_events(
    app: Any, statuses: list[int], bye: asyncio.Event, all_in: asyncio.Event, n: int
) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/events", "raw_path": b"/events", "root_path": "",
             "query_string": b"", "headers": [(b"host", b"t")], "client": ("c", 1),
             "server": ("t", 80)}
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await bye.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
            if len(statuses) == n:
                all_in.set()

    await app(scope, receive, send)


async def test_the_events_stream_cap_holds_under_concurrent_opens() -> None:
    clock = FakeClock()
    node = Node(App("t"), NodeSettings(name="a", ttl=6), store=MemoryStore(clock), clock=clock)
    await node.start()
    app = create_app(node, max_streams=5, refresh=30.0)
    statuses: list[int] = []
    bye = asyncio.Event()
    try:
        all_in = asyncio.Event()
        tasks = [asyncio.create_task(_open_events(app, statuses, bye, all_in, 25))
                 for _ in range(25)]
        await asyncio.wait_for(all_in.wait(), 10)  # every request has its status line
        assert sorted(statuses) == [200] * 5 + [503] * 20
        assert app.state.shoal_events.open == 5
        bye.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert app.state.shoal_events.open == 0
    finally:
        bye.set()
        await node.aclose()


# -- slow clients -------------------------------------------------------------------------------
async def _closed_by_server(port: int, head: bytes) -> bool:
    """Send ``head`` and wait (bounded) for the server to close the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if head:
            writer.write(head)
            await writer.drain()
        try:
            async with asyncio.timeout(20):
                while await reader.read(1024):
                    pass
        except TimeoutError:
            return False
        return True
    finally:
        writer.close()


async def test_a_slowloris_connection_is_dropped(tmp_path: Path) -> None:
    from shoal.config import NodeConfig
    from shoal.http._serve import serve_http

    clock = FakeClock()
    node = Node(App("t"), NodeSettings(name="a", ttl=6), store=MemoryStore(clock), clock=clock)
    await node.start()
    server = await serve_http(node, NodeConfig(), 0, header_timeout=0.5)
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    try:
        silent, partial = await asyncio.gather(
            _closed_by_server(port, b""),
            _closed_by_server(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a"),
        )
        assert silent and partial
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a real request
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await server.aclose()
        await node.aclose()
