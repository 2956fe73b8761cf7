"""``shoal schedule list`` and ``shoal schedule run NAME``.

``list`` reads the schedules' records: through a node's HTTP API
(``--url``, ``GET /schedules``) or straight from the store of ``--config``.
``run`` asks through the management API (``POST /schedules/NAME/run``, bearer
token from ``--token``, ``SHOAL__HTTP__TOKEN`` or ``http.token`` of
``--config``): the schedule's owner runs it once.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from shoal.cli.status import NodeApiError, _age, _table, api_request, open_store_bounded
from shoal.config import NodeConfig, load_config
from shoal.core.schedule import describe
from shoal.errors import ConfigError
from shoal.primitives.ownership import DUTIES, Owner
from shoal.runtime._state_model import PREFIX, decode_value
from shoal.runtime.schedule import NAMESPACE

__all__ = ["schedule_group"]


@click.group("schedule")
def schedule_group() -> None:
    """Scheduled duties: list them, run one now."""


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else "http://" + url


def _token(token: str | None, config: NodeConfig | None) -> str | None:
    if token is None and config is not None and config.http.token is not None:
        return config.http.token.get_secret_value()
    return token


def _refused(url: str, status: int, body: Any, what: str) -> NodeApiError | ConfigError:
    message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
    if status == 401:
        return ConfigError(f"{url} refused {what} (401): give --token, set SHOAL__HTTP__TOKEN, "
                           "or --config with http.token")
    return NodeApiError(f"{url} refused {what} ({status}): {message or body!r}")


async def _from_store(config: NodeConfig) -> list[dict[str, Any]]:
    async with open_store_bounded(config) as store:
        records = await store.range(f"{PREFIX}{NAMESPACE}/")
        duties = await store.range(DUTIES)
    owners = {kv.key[len(DUTIES):]: Owner.decode(kv.key[len(DUTIES):], kv).node
              for kv in duties.kvs}
    rows = []
    now = time.time()
    for kv in records.kvs:
        name = kv.key[len(f"{PREFIX}{NAMESPACE}/"):]
        try:
            data = decode_value(kv.value)
        except ValueError:
            data = {}
        rows.append(describe(name, data if isinstance(data, dict) else {}, owners.get(name), now))
    return rows


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(rows: list[dict[str, Any]], now: float) -> str:
    """The schedules as a table (next run, last run, owner, lateness)."""
    if not rows:
        return "no schedules recorded yet (a schedule's record appears once a node owns it)"
    table = []
    for r in rows:
        last = r.get("last_run") or {}
        running = r.get("running")
        state = "running" if running else (last.get("outcome") or "-")
        nxt = r.get("next_run")
        table.append([
            r["name"], r.get("cron") or f"every {r.get('every'):g}s",
            _when(nxt) + (f" (in {_age(nxt - now)})" if nxt else ""),
            _when(last.get("start")), state, r.get("owner") or "-",
            f"{r.get('lateness', 0.0) * 1000:.0f} ms",
        ])
    heads = ["SCHEDULE", "WHEN", "NEXT RUN", "LAST RUN", "OUTCOME", "OWNER", "LATENESS"]
    return "\n".join(_table(heads, table))


@schedule_group.command("list")
@click.option("--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
              help="Node configuration naming the store (and http.token for --url).")
@click.option("--url", default=None, metavar="URL", help="Ask this node's HTTP API instead.")
@click.option("--token", envvar="SHOAL__HTTP__TOKEN", default=None, show_envvar=True,
              help="Bearer token for --url (default: http.token of --config).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def schedule_list(config_file: Path | None, url: str | None, token: str | None,
                  as_json: bool) -> None:
    """Show every schedule: next run, last run and its outcome, owner, lateness.

    Exit codes: 0 shown, 1 the node answered an error, 2 bad options or token
    refused, 3 store or node unreachable."""
    if url is None and config_file is None:
        raise ConfigError("say where the cluster is: --url http://HOST:PORT or --config FILE")
    config = load_config(config_file) if config_file is not None else None
    if url is not None:
        status, body = api_request("GET", f"{_base(url)}/schedules", token=_token(token, config))
        if status != 200 or not isinstance(body, dict):
            raise _refused(url, status, body, "the listing")
        rows = list(body.get("schedules", []))
    else:
        assert config is not None
        rows = asyncio.run(_from_store(config))
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
    else:
        click.echo(render(rows, time.time()))


@schedule_group.command("run")
@click.argument("name")
@click.option("--url", required=True, metavar="URL", help="Any node's HTTP API.")
@click.option("--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
              help="Node configuration holding http.token.")
@click.option("--token", envvar="SHOAL__HTTP__TOKEN", default=None, show_envvar=True,
              help="Bearer token (default: http.token of --config).")
def schedule_run(name: str, url: str, config_file: Path | None, token: str | None) -> None:
    """Run schedule NAME once now, on its owner (POST /schedules/NAME/run).

    One request runs once, even if the owner fails over meanwhile. Exit codes:
    0 requested, 1 no such schedule, 2 bad options or token refused, 3 node
    unreachable."""
    config = load_config(config_file) if config_file is not None else None
    status, body = api_request("POST", f"{_base(url)}/schedules/{name}/run",
                               token=_token(token, config))
    if status != 202 or not isinstance(body, dict):
        raise _refused(url, status, body, f"the run of {name!r}")
    click.echo(f"run of {name} requested (trigger {body.get('trigger')})")
