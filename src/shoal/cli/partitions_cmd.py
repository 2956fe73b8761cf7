"""``shoal partitions list``, ``shoal partitions cutover OLD NEW`` and
``shoal partitions forget NAME``: the recorded partition counts, the cut-over
from one partitioned family to its successor (:mod:`shoal.runtime.cutover`),
and removing the count of a family no live node declares any more. They work
on the store of ``--config``."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import click

from shoal.cli._common import run_async
from shoal.cli.status import _table, open_store_bounded
from shoal.config import load_config
from shoal.errors import ConfigError

__all__ = ["partitions_group"]

CONFIG = click.option("--config", "-c", "config_file", type=click.Path(path_type=Path),
                      required=True, help="Node configuration naming the store.")


@click.group("partitions")
def partitions_group() -> None:
    """Partitioned duties: recorded counts, cut-over to a new family, forget a count."""


async def _rows(config_file: Path) -> list[dict[str, Any]]:
    from shoal.primitives.membership import NODES, Member
    from shoal.runtime._state_model import store_key
    from shoal.runtime.cutover import NAMESPACE
    from shoal.runtime.workers import META_PARTITIONS

    async with open_store_bounded(load_config(config_file)) as store:
        counts = (await store.range(META_PARTITIONS)).kvs
        members = [Member.decode(kv) for kv in (await store.range(NODES)).kvs]
        cutovers = (await store.range(store_key(NAMESPACE, ""))).kvs
    sealed: dict[str, int] = {}
    target: dict[str, str] = {}
    for kv in cutovers:
        name = kv.key[len(store_key(NAMESPACE, "")):]
        family, sep, _ = name.rpartition("/")
        if sep:
            sealed[family] = sealed.get(family, 0) + 1
        else:
            target[name] = str(json.loads(kv.value).get("to", "?"))
    rows = []
    for kv in counts:
        name = kv.key[len(META_PARTITIONS):]
        declared = sorted(m.name for m in members
                          if m.partitions is None or name in dict(m.partitions))
        count: int | str = kv.value.decode(errors="replace")
        with contextlib.suppress(ValueError):
            count = int(count)
        rows.append({"family": name, "partitions": count,
                     "declared_by": declared, "cutover_to": target.get(name),
                     "sealed": sealed.get(name, 0)})
    return rows


@partitions_group.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def partitions_list(config_file: Path, as_json: bool) -> None:
    """Show each recorded partition count, the live nodes whose app declares the
    family, and its cut-over (target family, old partitions sealed so far).

    Exit codes: 0 shown, 2 bad configuration, 3 store unreachable."""
    rows = run_async(_rows(config_file))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no partition count recorded yet")
        return
    table = [[r["family"], str(r["partitions"]), ", ".join(r["declared_by"]) or "-",
              (f"-> {r['cutover_to']} ({r['sealed']}/{r['partitions']} sealed)"
               if r["cutover_to"] else "-")] for r in rows]
    click.echo("\n".join(_table(["FAMILY", "PARTITIONS", "DECLARED BY", "CUT-OVER"], table)))


async def _cutover(config_file: Path, old: str, new: str) -> str:
    from shoal.runtime.cutover import Cutover
    from shoal.runtime.workers import META_PARTITIONS

    async with open_store_bounded(load_config(config_file)) as store:
        kv = await store.get(META_PARTITIONS + old)
        if kv is None:
            raise ConfigError(f"no partition count recorded for {old!r}: nothing to cut over "
                              "(see shoal partitions list)")
        try:
            count = int(kv.value.decode())
        except (UnicodeDecodeError, ValueError):
            raise ConfigError(f"the recorded partition count of {old!r} is not a number "
                              f"({kv.value!r}): fix meta/partitions/{old} first") from None
        written = await Cutover(old, count, new).request(store)
    return "requested" if written else "already requested"


@partitions_group.command("cutover")
@click.argument("old")
@click.argument("new")
@CONFIG
def partitions_cutover(old: str, new: str, config_file: Path) -> None:
    """Request the cut-over from family OLD to NEW: each partition of OLD seals
    itself at the last position it handled, NEW takes what comes after. Refused
    while a live node's app does not declare NEW.

    Exit codes: 0 requested (or already), 2 refused or bad input, 3 store unreachable."""
    click.echo(f"cut-over {old} -> {new}: {run_async(_cutover(config_file, old, new))}")


async def _forget(config_file: Path, name: str) -> bool:
    from shoal.runtime.workers import forget_partition_count

    async with open_store_bounded(load_config(config_file)) as store:
        return await forget_partition_count(store, name)


@partitions_group.command("forget")
@click.argument("name")
@CONFIG
def partitions_forget(name: str, config_file: Path) -> None:
    """Delete the recorded partition count of family NAME (store key
    meta/partitions/NAME). Refused while a live node's app declares NAME.

    Exit codes: 0 done, 2 refused, 3 store unreachable."""
    deleted = run_async(_forget(config_file, name))
    click.echo(f"partition count of {name}: " + ("forgotten" if deleted else "was not recorded"))
