"""``shoal run MODULE:APP --config FILE``: run one node of an application.

Imports the :class:`~shoal.App` object, loads the configuration (file plus
``SHOAL__SECTION__KEY`` variables), joins the cluster and prints one status
line on stdout for every membership, leader, phase or duty change::

    12:00:01.234 started ticker (token 17) | ACTIVE | leader n1 | members n1,n2 | runs leader,ticker

(``runs``: a family with more than 3 duties running here is one item,
``p/*(250)``; at most 24 items, then ``+N``.)

On SIGTERM or SIGINT it drains (hands its duties over) and exits 0; a second
signal during the drain exits at once (code 1).

Exit codes: 0 after a graceful stop; 2 for a bad ``MODULE:APP``, an invalid
configuration or a node name already held by a live node (NameTaken); 3 when
the store cannot be reached; 1 for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shoal.core.node_state import Phase
from shoal.errors import AppImportError, NameTaken, StoreUnavailable

if TYPE_CHECKING:
    from shoal.config import NodeConfig
    from shoal.runtime.app import App
    from shoal.runtime.fanout import Subscription
    from shoal.runtime.node import ClusterEvent, Node

__all__ = ["AppImportError", "import_app", "run"]

EXIT_BAD_INPUT = 2


def import_app(spec: str) -> App:
    """The App named by ``module.path:attr`` or ``path/to/file.py:attr``.

    The current directory is importable, as with ``python -m``."""
    from shoal.runtime.app import App

    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise AppImportError(f"bad app {spec!r}: use MODULE:APP, e.g. myservice.cluster:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None or not path.is_file():
                raise AppImportError(f"bad app {spec!r}: file {module_name} not found")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except AppImportError:
        raise
    except ModuleNotFoundError as exc:
        raise AppImportError(f"bad app {spec!r}: cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise AppImportError(
            f"bad app {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AppImportError(f"bad app {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise AppImportError(
            f"bad app {spec!r}: {attr!r} is a {type(obj).__name__}, not a shoal App"
        )
    return obj


def _fail(message: str, code: int) -> click.exceptions.Exit:
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


@click.command("run")
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--config", "-c", "config_file", type=click.Path(path_type=Path), default=None,
    help="Node configuration (YAML). SHOAL__SECTION__KEY variables override it.",
)
@click.option(
    "--log-level", default="info", show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--http-port", type=click.IntRange(0, 65535), default=None,
    help="Serve the HTTP API and dashboard on this port (overrides http.port; 0 = any free "
         "port). Without it they are served when http.port > 0.",
)
def run(app_spec: str, config_file: Path | None, log_level: str, http_port: int | None) -> None:
    """Run one node of the App MODULE:APP until SIGTERM or SIGINT, then drain.

    With http.port (or --http-port) it also serves the HTTP API and the live
    dashboard on http.host (see docs/http.md).

    Exit codes: 0 graceful stop, 2 bad MODULE:APP / configuration / node name
    already taken (NameTaken), 3 store unreachable, 1 other failure.
    """
    from shoal.config import load_config

    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        app = import_app(app_spec)
    except AppImportError as exc:
        raise _fail(str(exc), EXIT_BAD_INPUT) from None
    config = load_config(config_file)  # ConfigError -> exit 2 (by the group)
    app.check_config(config)  # a duties: key naming no duty is an error, not a no-op
    try:
        code = _run_loop(_serve(app, config, http_port))
    except NameTaken as exc:
        raise _fail(f"NameTaken: {exc}", EXIT_BAD_INPUT) from None
    _exit_leaving_stuck_threads(code)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Like asyncio.run, without waiting for executor threads at the end (a sync
    duty that ignores its stop signal must not keep the process alive)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _exit_leaving_stuck_threads(code: int) -> None:
    """Exit with ``code`` even if a sync duty's thread ignores its stop signal."""
    sys.stdout.flush()
    sys.stderr.flush()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon for t in others):
        time.sleep(0.2)
        if any(t.is_alive() and not t.daemon for t in others):
            click.echo("warning: duty threads still running after drain; exiting anyway", err=True)
            sys.stderr.flush()
            os._exit(code)
    raise click.exceptions.Exit(code)


def _status(node: Node, ev: ClusterEvent | None) -> str:
    return _status_lines(node, [ev])


def _status_lines(node: Node, burst: Sequence[ClusterEvent | None]) -> str:
    """One status line per event of ``burst`` (None: a plain ``status`` line), with one
    tail for the whole burst. The tail reads the node's cheap views (phase, leader,
    member names, running duties), not :meth:`Node.status`: that snapshot copies every
    owner and declared duty, and in a mass failover the lines are printed while the
    survivors still acquire (they share the CPU)."""
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    phase = node.phase
    leader = node.leader if phase == Phase.ACTIVE else None  # as status(): known when active
    members = ",".join(sorted(node.members)) or "-"
    runs = _runs(sorted(node.runners))
    tail = f"| {phase} | leader {leader or '-'} | members {members} | runs {runs}"
    lines = []
    for ev in burst:
        what = "status"
        if ev is not None:
            what = f"{ev.kind} {ev.name or '-'}" + (f" ({ev.detail})" if ev.detail else "")
        lines.append(f"{stamp} {what} {tail}")
    return "\n".join(lines)


RUNS_SHOWN = 24  # items of the ``runs`` field at most, then ``+N``
FAMILY_SHOWN = 3  # a family with more running duties is one item: ``p/*(250)``


def _runs(running: Sequence[str]) -> str:
    """The ``runs`` field: duty names, but a family with many running members
    (partitions ``p/0``..., ``for_each`` duties ``import:x``...) as one item, so
    that a line stays short on a node running 250 partitions (it is printed for
    every event: a mass failover starts hundreds of duties)."""
    groups: dict[str, list[str]] = {}
    for name in running:
        head, sep, tail = name.rpartition("/")
        if not (sep and tail.isdigit()):
            head, sep, _ = name.partition(":")
        groups.setdefault(f"{head}{sep}*" if sep else name, []).append(name)
    items: list[str] = []
    for key, names in groups.items():
        items.extend([f"{key}({len(names)})"] if len(names) > FAMILY_SHOWN else names)
    if len(items) > RUNS_SHOWN:
        items = [*items[:RUNS_SHOWN], f"+{len(items) - RUNS_SHOWN}"]
    return ",".join(items) or "-"


def _burst(events: Subscription[ClusterEvent], first: ClusterEvent) -> list[ClusterEvent]:
    """``first`` and every event already queued behind it (no waiting)."""
    burst = [first]
    while (more := events.get_nowait()) is not None:
        burst.append(more)
    return burst


async def _open_node(app: App, config: NodeConfig) -> Node:
    from shoal.runtime.node import Node
    from shoal.store.factory import open_timeout

    limit = open_timeout(config)
    try:
        async with asyncio.timeout(limit):
            return await Node.from_config(app, config)
    except TimeoutError:
        raise StoreUnavailable(f"store did not answer within {limit:g} s") from None


async def _serve(app: App, config: NodeConfig, http_port: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[str] = []
    first_at = [0.0]

    def on_signal(sig: signal.Signals) -> None:
        if signals and time.monotonic() - first_at[0] < 1.0:
            return  # the same signal forwarded twice (a wrapper and the terminal)
        signals.append(sig.name)
        first_at[0] = first_at[0] or time.monotonic()
        if len(signals) > 1:
            click.echo(f"{sig.name} again: exiting without draining", err=True)
            sys.stderr.flush()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    node = await _open_node(app, config)
    http = None  # served from before joining: /health answers, /ready says 503 until ACTIVE
    if http_port is not None or config.http.port > 0:
        from shoal.http._serve import serve_http

        try:
            http = await serve_http(node, config, http_port)
        except BaseException:
            await node.store.aclose()
            raise
        click.echo(f"dashboard and HTTP API: {http.url}")
        if not node.settings.address and config.http.host not in ("0.0.0.0", "::", ""):
            # announce where this node's API answers (shoal status finds nodes by it)
            node.announce(http.url.rstrip("/"))
    try:
        return await _lifetime(node, config, stop, signals)
    finally:
        if http is not None:
            await http.aclose()


async def _lifetime(node: Node, config: NodeConfig, stop: asyncio.Event, signals: list[str]) -> int:
    """Join, report every change until a signal, drain."""
    starting = asyncio.create_task(node.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await node.store.aclose()
        click.echo(f"{signals[0]} during start: not joined")
        return 0
    if starting.exception() is not None:
        await node.store.aclose()
        starting.result()  # raises the start error
    gc.freeze()  # what start-up made (modules, app, config) is never scanned again
    reaper = f", reaper pid {node.reaper.pid}" if node.reaper is not None else ", no reaper"
    click.echo(f"node {node.name} joined cluster {config.cluster!r} "
               f"({config.store.backend} store{reaper})")
    click.echo(_status(node, None))
    events = node.subscribe()

    async def report() -> None:
        with contextlib.suppress(OSError):  # stdout closed: stop reporting, keep running
            async for ev in events:
                click.echo(_status_lines(node, _burst(events, ev)))

    async with asyncio.TaskGroup() as group:  # owns the reporter: it ends with the node
        reporter = group.create_task(report())
        giving_up = group.create_task(node.gave_up.wait())
        await asyncio.wait({stopper, giving_up}, return_when=asyncio.FIRST_COMPLETED)
        giving_up.cancel()
        if node.fatal is not None:
            click.echo(f"node {node.name} gave up: {node.fatal}", err=True)
        else:
            click.echo(f"{signals[0]}: draining")
        try:
            await node.aclose()  # the HTTP API keeps answering (/ready: 503) while draining
        finally:
            reporter.cancel()
    if node.fatal is not None:
        raise node.fatal  # NameTaken -> exit 2
    click.echo(f"node {node.name} stopped")
    return 0

