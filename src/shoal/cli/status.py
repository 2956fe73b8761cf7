"""``shoal status``: the cluster as one node sees it — nodes, leader, duties, store.

The view is ``GET /cluster`` of a node's HTTP API (the same data as the
dashboard), so ``shoal status --json`` prints exactly what ``/cluster``
answers. Which node: ``--url``, or found through the store named by
``--config``: every live node record whose ``node.address`` is an http(s) URL
is tried in turn. When no node serves HTTP, a smaller view is built from the
store itself (``"source": "store"``: membership and owners, no phases).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from shoal.config import NodeConfig, load_config
from shoal.errors import ConfigError, NodeApiError, StoreUnavailable
from shoal.store.protocol import Store

__all__ = [
    "NodeApiError",
    "api_request",
    "cluster_url",
    "discover_urls",
    "fetch_view",
    "get_view",
    "open_store_bounded",
    "render",
    "status",
]


def cluster_url(url: str) -> str:
    """``http://host:port/`` (a dashboard address) -> ``http://host:port/cluster``."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    url = url.rstrip("/")
    return url if url.endswith("/cluster") else url + "/cluster"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: it would carry the bearer token to another place."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def api_request(
    method: str, url: str, *, token: str | None = None, timeout: float = 3.0,
) -> tuple[int, Any]:
    """(HTTP status, parsed JSON body) of one request; NodeApiError when unreachable.
    A redirect is never followed (its 3xx status is returned)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "elsewhere")
            raise NodeApiError(
                f"{url} redirects ({exc.code}) to {where}; a redirect is never followed with "
                "the token — give the node's own URL"
            ) from None
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NodeApiError(f"cannot reach {url}: {reason}") from None
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        raise NodeApiError(f"{url} answered {status} with something that is not JSON") from None


def fetch_view(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """``GET /cluster`` of the node at ``url`` (a base or dashboard URL)."""
    target = cluster_url(url)
    status_code, body = api_request("GET", target, timeout=timeout)
    if status_code != 200 or not isinstance(body, dict) or "nodes" not in body:
        raise NodeApiError(f"{target} answered {status_code}, not a cluster view")
    return body


def open_store_bounded(config: NodeConfig) -> contextlib.AbstractAsyncContextManager[Store]:
    """The configured store, opened within a time bound; closed on exit. It
    must be shared with the nodes (never the memory store) and exist."""
    from shoal.store.factory import opened_store

    why = "it cannot be read from another process; use --url"
    return opened_store(config, require={"multi_process": why}, must_exist=True)



async def _members(store: Store) -> list[Any]:
    from shoal.primitives.membership import NODES, Member

    res = await store.range(NODES)
    return sorted((Member.decode(kv) for kv in res.kvs), key=lambda m: m.name)


async def discover_urls(config: NodeConfig) -> list[str]:
    """HTTP addresses announced by live nodes (``node.address``) in the configured store."""
    async with open_store_bounded(config) as store:
        members = await _members(store)
    return [m.address for m in members if m.address.startswith(("http://", "https://"))]


async def store_view(config: NodeConfig) -> dict[str, Any]:
    """A smaller cluster view read from the store (no node answered over HTTP),
    built by the same :func:`~shoal.http._view.cluster_json` as ``/cluster``."""
    from shoal.http._view import cluster_json
    from shoal.primitives.ownership import DUTIES, Owner

    async with open_store_bounded(config) as store:
        members = await _members(store)
        owned = await store.range(DUTIES)
        revision = await store.revision()
        lease_left = {m.name: await store.lease_ttl(m.lease) for m in members if m.lease}
    owners = {o.duty: o for o in (Owner.decode(kv.key[len(DUTIES):], kv) for kv in owned.kvs)}
    view: dict[str, Any] = {"source": "store", "node": None, "phase": None}
    view.update(cluster_json(
        {m.name: m for m in members}, owners,
        extra={m.name: {"lease_remaining": lease_left.get(m.name)} for m in members},
    ))
    view["store"] = {"connected": True, "revision": revision, "stale": False}
    view["time"] = time.time()
    return view


def get_view(
    url: str | None, config: NodeConfig | None, *, prefer: str | None = None
) -> tuple[dict[str, Any], str]:
    """(view, where it came from): ``url``, else the first node found through
    ``config`` that answers (``prefer``, a URL that answered before, first),
    else the store itself."""
    if url is not None:
        return fetch_view(url), cluster_url(url)
    if config is None:
        raise ConfigError("say where the cluster is: --url http://HOST:PORT or --config FILE")
    if prefer is not None:
        with contextlib.suppress(NodeApiError):
            return fetch_view(prefer), cluster_url(prefer)
    errors = []
    for address in asyncio.run(discover_urls(config)):
        try:
            return fetch_view(address), cluster_url(address)
        except NodeApiError as exc:
            errors.append(str(exc))
    view = asyncio.run(store_view(config))
    why = f" ({errors[-1]})" if errors else " (no node announces an http:// node.address)"
    return view, f"the store{why}"


# -- human output ------------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _lead(node: dict[str, Any]) -> str:
    if node.get("leader"):
        return "leader"
    return "-" if node.get("can_lead", True) else "never"


def render(view: dict[str, Any], source: str = "") -> str:
    """A readable summary of a cluster view (``/cluster`` or the store's)."""
    now = float(view.get("time") or time.time())
    duties = view.get("duties", [])
    unowned = [d["name"] for d in duties if not d.get("owner")]
    store = view.get("store", {})
    if view.get("source") == "store":
        head = f"Cluster read from {source or 'the store'}"
    else:
        ready = "ready" if view.get("ready") else f"not ready: {view.get('ready_reason')}"
        head = f"Cluster seen by {view.get('node')} ({view.get('phase')}, {ready})"
        head += f" at {source}" if source else ""
    if store.get("stale"):
        store_text = f"store UNREACHABLE (state stale for {store.get('stale_seconds', 0):.1f} s)"
    else:
        store_text = f"store connected, revision {store.get('revision')}"
        if "documents" in store:
            store_text += (f", {store['documents']} documents in "
                           f"{store.get('namespace_count', 0)} namespaces")
    owned_text = f"{len(unowned)} UNOWNED" if unowned else "all owned"
    if view.get("owners_known") is False:
        owned_text = "owners unknown: the node is not ACTIVE"
    out = [head, f"nodes {view.get('node_count')} · leader {view.get('leader') or 'NONE'} · "
                 f"duties {len(duties)} ({owned_text}) · {store_text}"]
    out += [f"WARNING: {line}" for line in view.get("warnings", [])]
    out.append("")
    rows = []
    lease_notes = []
    for n in view.get("nodes", []):
        name = n["name"] + (" *" if n.get("self") else "") + "".join(
            f" ({flag})" for flag in ("draining", "cordoned") if n.get(flag))
        rows.append([name, ",".join(n.get("roles", [])) or "-", n.get("zone") or "-", _lead(n),
                     n.get("app_version") or "-",
                     _age(now - n["started_at"]) if n.get("started_at") else "-",
                     str(len(n.get("duties", []))), n.get("address") or "-"])
        session = n.get("session")
        if session:
            lease_notes.append(
                f"(* answered; its lease {session['lease']}: keep-alive acknowledged "
                f"{session['last_ack_age']:.1f} s ago, {session['remaining']:.1f} s left of "
                f"{session['ttl']} s)")
        elif n.get("lease_remaining") is not None:
            lease_notes.append(f"{n['name']}: lease expires in {n['lease_remaining']} s "
                               "unless kept alive")
    out += _table(["NODE", "ROLES", "ZONE", "LEADER", "VERSION", "UP", "DUTIES", "ADDRESS"],
                  rows)
    out += [*lease_notes, ""]
    nobody = "UNOWNED" if view.get("owners_known") is not False else "unknown"
    drows = [[d["name"], d.get("owner") or nobody,
              "-" if d.get("token") is None else str(d["token"]),
              "-" if d.get("since") is None else _age(now - d["since"]) + " ago"]
             for d in duties]
    out += _table(["DUTY", "OWNER", "TOKEN", "SINCE"], drows)
    return "\n".join(out)


def _show(view: dict[str, Any], source: str, as_json: bool, watching: bool) -> None:
    if as_json:
        text = json.dumps(view, separators=(",", ":")) if watching else json.dumps(view, indent=2)
        click.echo(text)
        return
    if watching and sys.stdout.isatty():
        click.echo("\x1b[H\x1b[2J", nl=False)
    click.echo(render(view, source))
    if watching:
        click.echo(f"\n{time.strftime('%H:%M:%S')} — refreshing every second; Ctrl-C to stop")


@click.command("status")
@click.option("--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
              help="Node configuration naming the store; a node announcing an http:// "
                   "node.address there is asked.")
@click.option("--url", default=None, metavar="URL",
              help="A node's HTTP API, e.g. http://127.0.0.1:8080 (wins over --config).")
@click.option("--watch", "-w", is_flag=True, help="Refresh every second until Ctrl-C.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="With --watch: stop after this many refreshes.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the view as JSON: exactly what GET /cluster answers "
                   "(with --watch one line per refresh).")
def status(config_file: Path | None, url: str | None, watch: bool, count: int | None,
           as_json: bool) -> None:
    """Show the cluster: nodes (roles, zone, leader, app version, uptime,
    lease; draining or cordoned), each duty with its owner, fencing token and
    since-when, and the store's health.

    Exit codes: 0 ok, 1 no node answered, 2 bad options or configuration,
    3 store unreachable.
    """
    config = load_config(config_file) if url is None and config_file is not None else None
    if url is None and config is None:
        raise ConfigError("say where the cluster is: --url http://HOST:PORT or --config FILE")
    if not watch:
        view, source = get_view(url, config)
        _show(view, source, as_json, watching=False)
        return
    shown = 0
    last: str | None = None
    try:
        while count is None or shown < count:
            started = time.monotonic()
            try:
                view, source = get_view(url, config, prefer=last)
                last = source if source.startswith("http") else None
                _show(view, source, as_json, watching=True)
            except (NodeApiError, StoreUnavailable) as exc:
                click.echo(f"error: {exc} (retrying)", err=True)
            shown += 1
            if count is None or shown < count:
                time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    except KeyboardInterrupt:
        raise click.exceptions.Exit(0) from None
