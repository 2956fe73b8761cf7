"""``shoal state get`` / ``shoal state set``: back up, restore and migrate replicated state.

Both talk to the configured store directly (no node needs to run)::

    shoal state get --config sqlite.yaml > backup.json
    shoal state set backup.json --config etcd.yaml --dry-run
    shoal state set backup.json --config etcd.yaml

File format and restore rules: ``docs/state.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from shoal.cli._common import EXIT_BAD_INPUT, report_error, run_async
from shoal.cli._files import write_private
from shoal.config import NodeConfig, load_config
from shoal.errors import (
    ConfigError,
    InvalidDocument,
    InvalidSnapshot,
    StoreUnavailable,
)
from shoal.runtime._state_model import DEFAULT_MAX_DOC_BYTES, MAX_DEPTH
from shoal.runtime._state_snapshot import (
    Diff,
    Restored,
    Snapshot,
    parse,
    read_current,
    render,
    restore,
    take,
)
from shoal.store.protocol import Store

__all__ = ["state_group"]

P = ParamSpec("P")
T = TypeVar("T")

_config_option = click.option(
    "--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
    help="Node configuration (YAML) naming the store. SHOAL__SECTION__KEY variables override it.",
)


def _bad_input(func: Callable[P, T]) -> Callable[P, T]:
    """A bad file, name or value: one ``error:`` line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (InvalidSnapshot, InvalidDocument) as exc:
            report_error(exc)
            raise click.exceptions.Exit(EXIT_BAD_INPUT) from None

    return wrapper


@click.group("state")
def state_group() -> None:
    """Back up, restore and migrate replicated state (no running node needed)."""


def describe(config: NodeConfig) -> dict[str, Any]:
    """Where the state comes from, for the snapshot header."""
    from shoal.store.factory import identity

    return {**identity(config), "cluster": config.cluster}


def _name(source: dict[str, Any]) -> str:
    """``cluster 'billing' (etcd prefix /billing)``: a backup's or a store's identity."""
    where = str(source.get("backend", "store"))
    parts = [f"{k} {v}" for k, v in source.items() if k not in _NOT_IDENTITY]
    where += " " + ", ".join(parts) if parts else ""
    cluster = source.get("cluster")
    return f"cluster {cluster!r} ({where})" if cluster else where


_NOT_IDENTITY = frozenset({"backend", "cluster", "endpoints"})  # endpoints may differ


def foreign_source(source: dict[str, Any] | None, target: dict[str, Any]) -> bool:
    """Whether a backup taken at ``source`` belongs to another cluster than
    ``target``: another cluster name, or the same backend at another place (sqlite
    path, etcd prefix, postgres database and schema). A different backend alone is
    a migration, not foreign."""
    if not source:
        return False
    if source.get("cluster") and source["cluster"] != target.get("cluster"):
        return True
    if source.get("backend") != target.get("backend"):
        return False
    keys = (set(source) | set(target)) - _NOT_IDENTITY
    return any(source.get(k) != target.get(k) for k in keys)


def _require_file(config: NodeConfig) -> None:
    """Reading a store that plainly holds no cluster (a sqlite file that does
    not exist, which opening would create): refuse."""
    from shoal.store.factory import store_section

    section = store_section(config)
    why = section.descriptor.missing(section.selected)
    if why is not None:
        raise ConfigError(f"{why} — there is no state to read")


@contextlib.asynccontextmanager
async def _opened(config: NodeConfig, *, read_only: bool = False) -> AsyncIterator[Store]:
    """The configured store; ``read_only``: a sqlite file is opened for reading only
    (a read-only file can be backed up)."""
    from shoal.store.factory import open_timeout, opened_store, store_section

    section = store_section(config)
    if not (read_only and section.descriptor.name == "sqlite"):
        async with opened_store(config) as store:
            yield store
        return
    from shoal.store.sqlite import SqliteStore

    limit = open_timeout(config)
    try:
        async with asyncio.timeout(limit):
            store = await SqliteStore.open(section.selected.path, read_only=True)
    except TimeoutError:
        raise StoreUnavailable(f"the store did not answer within {limit:g} s") from None
    try:
        yield store
    finally:
        await store.aclose()


# -- get --------------------------------------------------------------------------------
@state_group.command("get")
@click.option("--namespace", "-n", "namespaces", multiple=True,
              help="Only this namespace (repeatable). Default: every namespace.")
@click.option("--documents-only", is_flag=True,
              help="Leave out source, revision and created_at: the same documents then give "
                   "byte-identical output on any store.")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the snapshot to this file (mode 0600, a new directory 0700; written "
                   "whole or not at all) instead of stdout.")
@_config_option
@_bad_input
def state_get(
    namespaces: tuple[str, ...], documents_only: bool, output: Path | None,
    config_file: Path | None,
) -> None:
    """Print a snapshot of the replicated state as JSON on stdout (or --output).

    The output is stable (documents sorted, object keys sorted) and restorable
    with `shoal state set`. Keys under state/ that are not valid documents are
    skipped with a warning on stderr. A sqlite store is opened read-only.
    """
    config = load_config(config_file)
    _require_file(config)
    snap, skipped = run_async(_get(config, namespaces or None))
    for line in skipped:
        click.echo(f"warning: skipped {line}", err=True)
    text = render(snap, documents_only=documents_only)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_private(output, text.encode("utf-8"))


async def _get(
    config: NodeConfig, namespaces: tuple[str, ...] | None
) -> tuple[Snapshot, list[str]]:
    async with _opened(config, read_only=True) as store:
        cur = await read_current(store)
    if cur.too_deep:
        more = f" and {len(cur.too_deep) - 1} more" if len(cur.too_deep) > 1 else ""
        raise InvalidDocument(
            f"{cur.too_deep[0]}{more}: nested more than {MAX_DEPTH} levels deep, which no "
            "node accepts — rewrite or delete it, then back up again"
        )
    chosen, docs = take(cur, namespaces)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    snap = Snapshot(chosen, tuple(docs), describe(config), cur.revision, now)
    return snap, cur.skipped


# -- set --------------------------------------------------------------------------------
@state_group.command("set")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")
@click.option("--merge", is_flag=True,
              help="Only add and overwrite documents; never remove any. Default: REPLACE every "
                   "namespace listed in the file.")
@click.option("--max-txn-ops", type=click.IntRange(min=1), default=None,
              help="Largest transaction the store accepts (default: 128 on etcd, its "
                   "--max-txn-ops; unlimited on sqlite). Bigger restores are chunked and NOT "
                   "atomic.")
@click.option("--max-doc-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_DOC_BYTES,
              show_default=True, help="Refuse documents larger than this (encoded JSON).")
@click.option("--force", is_flag=True,
              help="Restore even though the backup was taken from another cluster (another "
                   "cluster name, sqlite path or etcd prefix) and the restore would change or "
                   "remove documents here.")
@_config_option
@_bad_input
def state_set(
    file: Path, dry_run: bool, merge: bool, max_txn_ops: int | None, max_doc_bytes: int,
    force: bool, config_file: Path | None,
) -> None:
    """Restore the replicated state from FILE (a `shoal state get` snapshot; - for stdin).

    The whole file is checked first; any problem is one error line, exit 2, and
    nothing is written. By default every namespace listed in the file is
    REPLACED: its documents become exactly those of the file (others are
    removed); namespaces not in the file are untouched. --merge only adds and
    overwrites. The restore is one atomic transaction when it fits, otherwise
    it is written in chunks (progress on stderr) and is not atomic. A backup
    from another cluster is refused (exit 2) when it would change or remove
    documents here, unless --force.
    """
    name = "<stdin>" if str(file) == "-" else str(file)
    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        raise InvalidSnapshot(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    snap = parse(data, name, max_doc_bytes=max_doc_bytes)
    config = load_config(config_file)
    backend = config.store.descriptor
    if not backend.features.multi_process:
        click.echo(f"warning: the {backend.name} store lives only in this process; "
                   "nothing persists", err=True)
    if dry_run:
        _require_file(config)
    ops = max_txn_ops or backend.max_txn_ops or sys.maxsize
    size = backend.max_txn_bytes or sys.maxsize
    foreign = not force and foreign_source(snap.source, describe(config))
    with _progress() as progress:
        d, done = run_async(_set(config, snap, merge, dry_run, ops, size, progress, foreign))
    mode = "merge" if merge else "replace"
    where = ", ".join(snap.namespaces) or "none"
    if dry_run:
        click.echo(f"dry run ({mode}; namespaces: {where}): {_counts(d)}; nothing written")
        for label, keys in (("added", d.added), ("changed", d.changed), ("removed", d.removed)):
            for ns, key in keys:
                click.echo(f"  {label:<8} {ns}/{key}")
        return
    assert done is not None
    if done.transactions == 0:
        click.echo(f"nothing to do ({mode}; namespaces: {where}): {_counts(d)}")
        return
    how = ("in one transaction (atomic)" if done.atomic
           else f"in {done.transactions} transactions (NOT atomic)")
    click.echo(f"restored ({mode}; namespaces: {where}): {_counts(d)}; written {how} "
               f"up to revision {done.revision}")


def _counts(d: Diff) -> str:
    return (f"{len(d.added)} added, {len(d.changed)} changed, {len(d.removed)} removed, "
            f"{d.unchanged} unchanged")


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr, shown only once a restore turns out to need chunks."""
    bars: list[Any] = []
    with contextlib.ExitStack() as stack:

        def update(done: int, total: int) -> None:
            if not bars:
                bar = click.progressbar(length=total, label="restoring (chunked, not atomic)",
                                        file=sys.stderr)
                bars.append(stack.enter_context(bar))
                bars.append(0)
            bars[0].update(done - bars[1] if done >= bars[1] else done)  # re-planned: anew
            bars[1] = done

        yield update


async def _set(
    config: NodeConfig, snap: Snapshot, merge: bool, dry_run: bool, max_ops: int,
    max_bytes: int, progress: Callable[[int, int], None], foreign: bool = False,
) -> tuple[Diff, Restored | None]:
    from shoal.runtime._state_snapshot import diff

    async with _opened(config) as store:
        if foreign:
            planned = diff(snap, await read_current(store), merge=merge)
            if planned.changed or planned.removed:
                assert snap.source is not None
                raise InvalidSnapshot(
                    f"the backup was taken from {_name(snap.source)}, not from "
                    f"{_name(describe(config))}, whose state the restore would change "
                    f"({len(planned.changed)} changed, {len(planned.removed)} removed) — "
                    "check --config, or add --force to restore anyway"
                )
        if dry_run:
            return diff(snap, await read_current(store), merge=merge), None
        done = await restore(store, snap, merge=merge, max_ops=max_ops, max_bytes=max_bytes,
                             progress=progress)
        return done.diff, done
