"""``shoal node drain NAME``: ask a live node to hand its duties over and leave.
``shoal node cordon NAME`` / ``uncordon NAME``: stop / resume giving it new duties.

Two ways to reach it:

* ``--url URL`` — ``POST {URL}/nodes/{NAME}/drain`` on any node's HTTP API,
  with ``Authorization: Bearer <http.token>`` (``--token``, the
  ``SHOAL__HTTP__TOKEN`` variable, or ``http.token`` of ``--config``);
* ``--config FILE`` alone — the request is written straight into the store
  (``control/drain/NAME``, on the node's lease; see
  :mod:`shoal.runtime.control`): store access is the credential.

The node stops its duties (each handed over within ``drain_timeout``) and
revokes its lease; its process keeps running (and serving HTTP) until it is
stopped. By default the command waits until the node has left the cluster.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from shoal.cli.status import NodeApiError, api_request, fetch_view, open_store_bounded
from shoal.config import NodeConfig, load_config
from shoal.core.node_state import Phase
from shoal.errors import ConfigError, ShoalError

__all__ = ["node_group"]


@click.group("node")
def node_group() -> None:
    """Act on one node of the cluster."""


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url[: -len("/cluster")] if url.endswith("/cluster") else url


def _drain_http(url: str, name: str, token: str | None) -> str:
    status_code, body = api_request("POST", f"{_base(url)}/nodes/{name}/drain", token=token)
    if status_code == 202 and isinstance(body, dict):
        return f"{body.get('status', 'requested')} (via {body.get('via', 'http')} at {url})"
    message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
    if status_code == 401:
        raise ConfigError(
            f"{url} refused the drain (401): give --token, set SHOAL__HTTP__TOKEN, or "
            "--config with http.token"
        )
    if status_code == 404:
        raise NodeApiError(f"no live node named {name!r} ({message or 'not found'})")
    raise NodeApiError(f"{url} refused the drain ({status_code}): {message or body!r}")


async def _drain_store(config: NodeConfig, name: str) -> str:
    from shoal.primitives.membership import NODES
    from shoal.runtime.control import NodeNotLive, request_drain

    async with open_store_bounded(config) as store:
        kv = await store.get(NODES + name)
        if kv is None:
            raise NodeNotLive(f"no live node named {name!r} in the configured store")
        revision = await request_drain(store, name, kv.lease, by="shoal node drain",
                                       reason="shoal node drain (CLI)")
    return f"requested (control key written at revision {revision})"


async def _present_in_store(config: NodeConfig, name: str) -> bool:
    from shoal.primitives.membership import NODES

    async with open_store_bounded(config) as store:
        return await store.get(NODES + name) is not None


def _present_via_http(url: str, name: str) -> bool:
    view = fetch_view(url)
    if view.get("node") == name and view.get("phase") == Phase.STOPPED:
        return False
    return any(n.get("name") == name for n in view.get("nodes", []))


@node_group.command("drain")
@click.argument("name")
@click.option("--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
              help="Node configuration naming the store (and http.token for --url).")
@click.option("--url", default=None, metavar="URL",
              help="Ask through this node's HTTP API instead of writing into the store.")
@click.option("--token", envvar="SHOAL__HTTP__TOKEN", default=None, show_envvar=True,
              help="Bearer token for --url (default: http.token of --config).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the node has left the cluster.")
@click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds to wait with --wait.")
def node_drain(name: str, config_file: Path | None, url: str | None, token: str | None,
               wait: bool, timeout: float) -> None:
    """Ask node NAME to hand its duties over and leave the cluster.

    With --url the request goes through that node's HTTP API (POST
    /nodes/NAME/drain, bearer token); with only --config it is written into
    the store as control/drain/NAME. The node's process keeps running until
    it is stopped.

    Exit codes: 0 done, 1 no such live node / not left in time, 2 bad
    options or configuration or token refused, 3 store unreachable.
    """
    if url is None and config_file is None:
        raise ConfigError("say where the cluster is: --url http://HOST:PORT or --config FILE")
    config = load_config(config_file) if config_file is not None else None
    if url is not None:
        if token is None and config is not None and config.http.token is not None:
            token = config.http.token.get_secret_value()
        outcome = _drain_http(url, name, token)
    else:
        assert config is not None
        outcome = asyncio.run(_drain_store(config, name))
    click.echo(f"drain of {name}: {outcome}")
    if not wait:
        return
    started = time.monotonic()
    while True:
        try:
            if url is not None:
                present = _present_via_http(url, name)
            else:
                assert config is not None
                present = asyncio.run(_present_in_store(config, name))
        except NodeApiError:
            present = True  # the answering node may be the one going away: keep asking
        if not present:
            click.echo(f"{name} left the cluster after {time.monotonic() - started:.1f} s")
            return
        if time.monotonic() - started > timeout:
            raise ShoalError(f"{name} is still in the cluster after {timeout:g} s")
        time.sleep(0.2)


async def _cordon_store(config: NodeConfig, name: str, cordon: bool) -> str:
    from shoal.primitives.membership import NODES
    from shoal.runtime.control import NodeNotLive, request_cordon, request_uncordon

    async with open_store_bounded(config) as store:
        kv = await store.get(NODES + name)
        if kv is None:
            raise NodeNotLive(f"no live node named {name!r} in the configured store")
        if not cordon:
            done = await request_uncordon(store, name)
            return "done" if done else "it was not cordoned"
        revision = await request_cordon(store, name, kv.lease, by="shoal node cordon",
                                        reason="shoal node cordon (CLI)")
    return f"done (control key written at revision {revision})"


_CONFIG = click.option("--config", "-c", "config_file", type=click.Path(path_type=Path),
                       required=True, help="Node configuration naming the store.")


@node_group.command("cordon")
@click.argument("name")
@_CONFIG
def node_cordon(name: str, config_file: Path) -> None:
    """Keep node NAME serving and running its duties, but give it no new ones.

    Writes control/cordon/NAME into the store (on the node's lease: a restart
    clears it). Undo with `shoal node uncordon NAME`.

    Exit codes: 0 done, 1 no such live node, 2 bad configuration, 3 store
    unreachable.
    """
    outcome = asyncio.run(_cordon_store(load_config(config_file), name, True))
    click.echo(f"cordon of {name}: {outcome}")


@node_group.command("uncordon")
@click.argument("name")
@_CONFIG
def node_uncordon(name: str, config_file: Path) -> None:
    """Let node NAME take new duties again (undoes `shoal node cordon NAME`).

    Exit codes: 0 done, 1 no such live node, 2 bad configuration, 3 store
    unreachable.
    """
    outcome = asyncio.run(_cordon_store(load_config(config_file), name, False))
    click.echo(f"uncordon of {name}: {outcome}")
