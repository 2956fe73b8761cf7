"""``shoal demo``: a whole cluster on this machine, with nothing to install or start.

Starts N node processes (``shoal run shoal.cli.demo_app:app``, see
:mod:`shoal.cli.demo_app`) sharing a SQLite file in a temporary directory (or an
etcd cluster with ``--store etcd --endpoints ...``). Each serves its HTTP API
and live dashboard on its own port and announces that URL as its
``node.address`` (so ``shoal status --config`` finds it). The demo prints
every ownership change it sees and reads commands on stdin::

    kill N    crash node N (SIGKILL: its reaper frees its duties at once)
    stop N    stop node N gracefully (SIGTERM: it hands its duties over)
    start N   start node N again (same name, same port)
    status    the cluster table (as `shoal status`)
    quit      stop every node and exit (also Ctrl-C or SIGTERM)

End of input (no terminal, ``< /dev/null``) is ignored: the demo runs until a
signal, ``quit`` or ``--duration``. Every process it started — nodes and their
reapers — is ended by PID before it exits. Walk-through: ``docs/demo.md``.
"""

from __future__ import annotations

import queue
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click

from shoal.cli._demo_procs import DemoNode, free_ports, node_configs, pdeathsig, stdin_lines
from shoal.cli._files import private_dir
from shoal.cli.status import NodeApiError, fetch_view, render
from shoal.core.node_state import Phase
from shoal.errors import ConfigError

__all__ = ["Demo", "demo", "node_configs"]

START_TIMEOUT = 60.0  # a node must join within this
STOP_TIMEOUT = 20.0  # a node must drain and exit within this, else SIGKILL
HELP = "commands: kill N · stop N · start N · status · help · quit   (Ctrl-C stops everything)"


def _say(text: str) -> None:
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    click.echo(f"{stamp}  {text}")


def _owners(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in view.get("duties", [])}


@dataclass
class _Failover:
    node: str
    how: str  # "kill" or "stop"
    at: float  # wall clock
    duties: set[str]
    warned: bool = field(default=False)


class Demo:
    """The demo's run loop: start, watch, obey commands, stop everything."""

    def __init__(self, nodes: list[DemoNode], workdir: Path, store: str, duration: float) -> None:
        self.nodes = nodes
        self.workdir = workdir
        self.store = store
        self.by_key = {k: n for n in nodes for k in (str(n.index), n.name)}
        self.stop_requested = threading.Event()
        self.hurry = False
        self.lines: queue.Queue[str] = queue.Queue()
        self.preexec = pdeathsig()
        self.view: dict[str, Any] | None = None
        self.failovers: list[_Failover] = []
        self.deadline = time.monotonic() + duration if duration > 0 else None

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> int:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                self.hurry = True
            self.stop_requested.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = self._start_all()
            if code == 0 and not self.stop_requested.is_set():
                self._banner()
                self._wait_all_owned()
                threading.Thread(target=stdin_lines, args=(self.lines,), daemon=True,
                                 name="shoal-demo-stdin").start()
                self._loop()
            return code
        finally:
            self._shutdown()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _start_all(self) -> int:
        """Start every node and wait until each has joined. On a new SQLite file
        the first node starts alone: it creates the file (two processes creating
        it at once may find it locked)."""
        first = self.nodes[:1] if self.store == "sqlite" else []
        code = self._start_and_wait(first)
        return code or self._start_and_wait(self.nodes[len(first):])

    def _start_and_wait(self, nodes: list[DemoNode]) -> int:
        for node in nodes:
            node.start(self.preexec)
        deadline = time.monotonic() + START_TIMEOUT
        waiting = list(nodes)
        while waiting and not self.stop_requested.is_set():
            for node in list(waiting):
                if "joined cluster" in node.log():
                    waiting.remove(node)
                elif not node.alive:
                    tail = "\n".join(node.log().splitlines()[-15:])
                    click.echo(f"error: {node.name} exited with code {node.returncode} before "
                               f"joining; its log ends:\n{tail}", err=True)
                    return node.returncode or 1
            if time.monotonic() > deadline:
                click.echo(f"error: {', '.join(n.name for n in waiting)} did not join within "
                           f"{START_TIMEOUT:g} s (logs in {self.workdir})", err=True)
                return 1
            self.stop_requested.wait(0.1)
        return 0

    def _banner(self) -> None:
        cfg = self.nodes[0].config["store"]
        if self.store == "sqlite":
            where = f"sqlite file {cfg['sqlite']['path']}"
        elif self.store == "postgres":
            where = f"postgres {cfg['postgres']['dsn']} schema {cfg['postgres']['schema']}"
        else:
            where = f"etcd {','.join(cfg['etcd']['endpoints'])} prefix {cfg['etcd']['prefix']}"
        click.echo(f"\nShoal demo: {len(self.nodes)} nodes of shoal.cli.demo_app on {where}\n")
        for n in self.nodes:
            notes = [] if n.config["node"]["can_lead"] else ["cannot lead"]
            notes += [f"{d} disabled" for d in n.config["duties"]]
            click.echo(f"  {n.name}  pid {n.pid!s:<7}  {','.join(n.config['node']['roles']):<15}  "
                       f"dashboard {n.url}" + (f"   ({', '.join(notes)})" if notes else ""))
        click.echo(f"\nConfigs and logs in {self.workdir}. In another terminal:\n"
                   f"  shoal status --config {self.nodes[0].config_path} --watch\n")
        click.echo(HELP + "\n")

    def _wait_all_owned(self, timeout: float = 30.0, settle: float = 3.0) -> None:
        """Until every duty is owned and placement has settled (no move for
        ``settle`` s: the first node takes everything, then balancing moves some)."""
        started = time.monotonic()
        stable_since, last = started, None
        while not self.stop_requested.is_set():
            view = self._fetch()
            if view is not None:
                self.view = view
                duties = view.get("duties", [])
                owners = {d["name"]: d.get("owner") for d in duties}
                if owners != last:
                    stable_since, last = time.monotonic(), owners
                settled = time.monotonic() - stable_since >= settle
                if duties and all(owners.values()) and settled:
                    _say(f"all {len(duties)} duties owned and placed, leader {view.get('leader')} "
                         f"({time.monotonic() - started:.1f} s)")
                    click.echo(render(view) + "\n")
                    return
            if time.monotonic() - started > timeout:
                _say(f"warning: placement has not settled after {timeout:g} s")
                return
            self.stop_requested.wait(0.2)

    def _shutdown(self) -> None:
        live = [n for n in self.nodes if n.alive]
        if live:
            _say(f"stopping {len(live)} node(s): each hands its duties over, then exits")
        for node in live:
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in live:
            while not node.wait(0.1):
                if self.hurry or time.monotonic() > deadline:
                    node.signal(signal.SIGKILL)
                    node.wait(10)
                    break
        for node in self.nodes:
            node.note_reapers()
            node.end_reapers()
        if live:
            _say("every demo process has ended")

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        next_poll = 0.0
        while not self.stop_requested.is_set():
            if self.deadline is not None and time.monotonic() > self.deadline:
                _say("--duration reached")
                return
            while not self.lines.empty():
                self._command(self.lines.get_nowait())
                if self.stop_requested.is_set():
                    return
            self._check_exits()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 0.25
                view = self._fetch()
                if view is not None:
                    self._report(self.view, view)
                    self.view = view
            self.stop_requested.wait(0.05)

    def _fetch(self) -> dict[str, Any] | None:
        """The view of the first live node that is ACTIVE (a joining or draining
        node's view is partial), else of any node that answers."""
        live = sorted((n for n in self.nodes if n.alive), key=lambda n: (n.expected_exit, n.index))
        fallback = None
        for node in live:
            try:
                view = fetch_view(node.url, timeout=1.0)
            except NodeApiError:
                continue
            if view.get("phase") == Phase.ACTIVE and not view.get("draining"):
                return view
            fallback = fallback or view
        return fallback

    def _report(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if old is not None:
            before = {n["name"] for n in old.get("nodes", [])}
            after = {n["name"] for n in new.get("nodes", [])}
            size = f"{len(after)} node" + ("" if len(after) == 1 else "s")
            for name in sorted(after - before):
                _say(f"{name} joined the cluster ({size})")
            for name in sorted(before - after):
                _say(f"{name} left the cluster ({size})")
            was = _owners(old)
            for name, d in sorted(_owners(new).items()):
                prev = was.get(name, {})
                if (prev.get("owner"), prev.get("token")) != (d.get("owner"), d.get("token")):
                    token = f"  (token {d['token']})" if d.get("token") is not None else ""
                    _say(f"{name:<28} {prev.get('owner') or '-'} -> "
                         f"{d.get('owner') or 'UNOWNED'}{token}")
        owners = _owners(new)
        for fo in list(self.failovers):
            rows = [owners.get(d, {}) for d in fo.duties]
            if all(r.get("owner") not in (None, fo.node) for r in rows):
                took = max(float(r.get("since") or fo.at) for r in rows) - fo.at
                _say(f"failover: all {len(rows)} duties of {fo.node} owned again "
                     f"{max(took, 0.0):.2f} s after the {fo.how}")
                self.failovers.remove(fo)
            elif not fo.warned and time.time() - fo.at > 15:
                fo.warned = True
                stuck = sorted(d for d, r in zip(fo.duties, rows, strict=True)
                               if r.get("owner") in (None, fo.node))
                _say(f"still unowned after 15 s: {', '.join(stuck)} (no eligible live node?)")

    def _check_exits(self) -> None:
        for node in self.nodes:
            if node.proc is None or node.alive or node.exit_reported:
                continue
            node.exit_reported = True
            code = node.returncode
            if node.expected_exit:
                _say(f"{node.name} exited (code {code})")
            else:
                _say(f"{node.name} exited unexpectedly (code {code}); log: {node.log_path}")
            node.note_reapers()
            node.end_reapers()

    # -- commands -----------------------------------------------------------------------
    def _command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        verb, args = words[0].lower(), words[1:]
        if verb in ("quit", "exit", "q"):
            self.stop_requested.set()
            return
        if verb in ("help", "?", "h"):
            click.echo(HELP)
            return
        if verb == "status":
            view = self._fetch()
            click.echo(render(view) if view is not None else "no node answers")
            return
        if verb not in ("kill", "stop", "start") or len(args) != 1:
            click.echo(f"unknown command {line.strip()!r}; {HELP}")
            return
        node = self.by_key.get(args[0])
        if node is None:
            click.echo(f"no node {args[0]!r}: use 1..{len(self.nodes)} or a name like demo-1")
        elif verb == "start":
            self._start(node)
        elif not node.alive:
            click.echo(f"{node.name} is not running (start {node.index})")
        else:
            self._stop(node, kill=verb == "kill")

    def _start(self, node: DemoNode) -> None:
        if node.alive:
            view = self._fetch() or {}
            if any(n.get("name") == node.name for n in view.get("nodes", [])):
                click.echo(f"{node.name} is already running (pid {node.pid})")
                return
            _say(f"{node.name} runs but has left the cluster (drained): restarting it")
            node.signal(signal.SIGTERM)
            if not node.wait(STOP_TIMEOUT):
                node.signal(signal.SIGKILL)
                node.wait(10)
            node.end_reapers()
        node.start(self.preexec)
        _say(f"started {node.name} (pid {node.pid}); it joins in a "
             "moment and takes duties back after the rebalance delay")

    def _stop(self, node: DemoNode, *, kill: bool) -> None:
        view = self._fetch() or self.view or {}
        owned = {d["name"] for d in view.get("duties", []) if d.get("owner") == node.name}
        at = time.time()
        if kill:
            node.signal(signal.SIGKILL)
            node.wait(10)
            _say(f"killed {node.name} with SIGKILL; its reaper revokes its lease at once "
                 f"({len(owned)} duties to take over)")
        else:
            node.signal(signal.SIGTERM)
            _say(f"stopping {node.name} with SIGTERM: it hands over {len(owned)} duties")
        if owned:
            self.failovers.append(_Failover(node.name, "kill" if kill else "stop", at, owned))


@click.command("demo")
@click.option("--nodes", "count", type=click.IntRange(1, 9), default=3, show_default=True,
              help="How many node processes to start.")
@click.option("--store", type=click.Choice(["sqlite", "etcd", "postgres"]), default="sqlite",
              show_default=True,
              help="sqlite: a file in the demo's directory; etcd: --endpoints; postgres: --dsn.")
@click.option("--endpoints", default=None, metavar="URL[,URL...]",
              help="etcd client URLs for --store etcd (start some with `shoal etcd start`).")
@click.option("--dsn", default=None, metavar="DSN",
              help="PostgreSQL connection string or URI for --store postgres (the demo uses "
                   "a schema of its own in that database).")
@click.option("--base-port", type=click.IntRange(1, 65000), default=None,
              help="Node i serves its dashboard on BASE_PORT+i-1 (default: free ports).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep configs, logs and the sqlite file here (default: a temporary "
                   "directory, removed at the end).")
@click.option("--duration", type=click.FloatRange(0), default=0.0,
              help="Stop by itself after this many seconds (0: run until quit or Ctrl-C).")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True,
              help="Seconds between the sample duties' writes.")
def demo(count: int, store: str, endpoints: str | None, dsn: str | None, base_port: int | None,
         workdir: Path | None, duration: float, interval: float) -> None:
    """Run a cluster of sample-service nodes on this machine, each with a live
    dashboard; kill and restart nodes and watch their duties fail over.

    Reads commands on stdin: kill N, stop N, start N, status, help, quit.
    Ctrl-C, SIGTERM or quit stops every process it started.

    Exit codes: 0 stopped cleanly, 1 a node failed to start, 2 bad options,
    3 store unreachable.
    """
    urls = [e.strip() for e in (endpoints or "").split(",") if e.strip()]
    if store == "etcd" and not urls:
        raise ConfigError("--store etcd needs --endpoints http://HOST:PORT[,...] "
                          "(start a local etcd with `shoal etcd start`)")
    if store != "etcd" and urls:
        raise ConfigError("--endpoints is only for --store etcd")
    if store == "postgres" and not dsn:
        raise ConfigError("--store postgres needs --dsn, e.g. "
                          "--dsn 'host=127.0.0.1 dbname=app user=shoal password=...'")
    if store != "postgres" and dsn:
        raise ConfigError("--dsn is only for --store postgres")
    driver = {"etcd": "etcd3aio", "postgres": "psycopg"}.get(store)
    if driver is not None:
        import importlib.util

        from shoal.store.registry import get_backend

        if importlib.util.find_spec(driver) is None:
            raise ConfigError(f"--store {store}: {get_backend(store).install_hint}")
    temp = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="shoal-demo-")) if workdir is None else workdir
    private_dir(directory)  # the configs hold the HTTP token: owner only
    try:
        ports = free_ports(count, base_port)
        configs = node_configs(count, ports, directory, store=store, endpoints=urls,
                               dsn=dsn or "", interval=interval)
        nodes = [DemoNode(i + 1, cfg, directory) for i, cfg in enumerate(configs)]
        code = Demo(nodes, directory, store, duration).run()
    finally:
        if temp:
            shutil.rmtree(directory, ignore_errors=True)
    if code:
        raise click.exceptions.Exit(code)
