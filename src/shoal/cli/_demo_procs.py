"""Nodes of ``shoal demo``: their configurations, and one ``shoal run`` process per
node, ended by PID with its reaper.

Nodes run in their own session (a terminal's Ctrl-C reaches only the demo,
which then stops them in order) and, on Linux, get SIGTERM if the demo itself
dies (``PR_SET_PDEATHSIG``), so no node outlives it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shoal.cli._files import write_private
from shoal.cli._procfs import children as _children
from shoal.cli._procfs import is_reaper as _is_reaper
from shoal.errors import ConfigError

__all__ = [
    "APP", "ENGINES", "RESTRICTED_DUTY", "DemoNode", "free_ports", "node_configs", "pdeathsig",
    "stdin_lines",
]

APP = "shoal.cli.demo_app:app"
ENGINES = ["engine-a", "engine-b"]
RESTRICTED_DUTY = "rule-engine"


def pdeathsig() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child if the demo dies (even by kill -9)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG




class DemoNode:
    """One ``shoal run`` process of the demo: config, log file, PIDs."""

    def __init__(self, index: int, config: dict[str, Any], workdir: Path) -> None:
        self.index = index
        self.name = str(config["node"]["name"])
        self.config = config
        self.url = str(config["node"]["address"]) + "/"
        self.config_path = workdir / f"{self.name}.yaml"
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.reapers: set[int] = set()
        self.expected_exit = False  # we signalled it: its exit is no surprise
        self.exit_reported = False
        write_private(self.config_path, yaml.safe_dump(config, sort_keys=False).encode())

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, preexec: Callable[[], None] | None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env = {k: v for k, v in env.items() if not k.startswith("SHOAL__")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "run", APP,
                 "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=preexec,
            )
        self.expected_exit = False
        self.exit_reported = False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def note_reapers(self) -> None:
        for line in self.log().splitlines():
            if "reaper pid " in line:
                with contextlib.suppress(ValueError, IndexError):
                    self.reapers.add(int(line.split("reaper pid ")[1].split()[0].strip(",)")))
        if self.proc is not None:
            self.reapers.update(p for p in _children(self.proc.pid) if _is_reaper(p))

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.alive:
            self.note_reapers()
            self.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def end_reapers(self, timeout: float = 2.0) -> None:
        """A reaper revokes and exits by itself; kill any left after ``timeout``."""
        deadline = time.monotonic() + timeout
        for pid in sorted(self.reapers):
            while _is_reaper(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _is_reaper(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.reapers = {p for p in self.reapers if _is_reaper(p)}


def node_configs(
    count: int, ports: list[int], workdir: Path, *, store: str, endpoints: list[str],
    dsn: str = "", interval: float = 1.0,
) -> list[dict[str, Any]]:
    """The demo's node configurations. With several nodes the last one may not
    lead, has the rule engine disabled and only the ``ingest`` role."""
    token = secrets.token_urlsafe(24)
    if store == "sqlite":
        store_cfg: dict[str, Any] = {"backend": "sqlite",
                                     "sqlite": {"path": str(workdir / "shoal.db")}}
    elif store == "postgres":
        store_cfg = {"backend": "postgres", "postgres": _postgres_section(dsn)}
    else:
        prefix = f"/shoal-demo/{uuid.uuid4().hex[:8]}"
        store_cfg = {"backend": "etcd", "etcd": {"endpoints": endpoints, "prefix": prefix}}
    out = []
    for i in range(count):
        restricted = count > 1 and i == count - 1
        out.append({
            "cluster": "demo",
            "node": {"name": f"demo-{i + 1}",
                     "roles": ["ingest"] if restricted else ["frontend", "ingest"],
                     "zone": f"zone-{'abc'[i % 3]}", "address": f"http://127.0.0.1:{ports[i]}",
                     "can_lead": not restricted},
            "store": store_cfg,
            "timings": {"preset": "local"},
            "duties": {RESTRICTED_DUTY: {"enabled": False}} if restricted else {},
            "params": {"engines": ENGINES, "interval": interval},
            "reaper": {"enabled": True},
            "http": {"host": "127.0.0.1", "port": ports[i], "token": token},
        })
    return out


def _postgres_section(dsn: str) -> dict[str, Any]:
    """``store.postgres`` for a DSN: its password moves to the (masked) password key
    and the demo gets a schema of its own."""
    from shoal.store.postgres import parse_dsn

    try:
        fields = parse_dsn(dsn)
    except ValueError as exc:
        raise ConfigError(f"--dsn: {exc}") from None
    password = fields.pop("password", None)
    quoted = (f"{k}='{v.replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
              for k, v in fields.items())
    section: dict[str, Any] = {"dsn": " ".join(quoted),
                               "schema": f"shoal_demo_{uuid.uuid4().hex[:8]}"}
    if password is not None:
        section["password"] = password
    return section


def free_ports(count: int, base: int | None) -> list[int]:
    if base is not None:
        ports = [base + i for i in range(count)]
        for port in ports:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    raise ConfigError(f"--base-port: port {port} is in use; choose another "
                                      "--base-port or leave it out (free ports)") from None
        return ports
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def stdin_lines(lines: queue.Queue[str]) -> None:
    """Feed stdin's lines to ``lines`` (a daemon thread); end of input ends it quietly."""
    stream = sys.stdin
    try:
        if stream is None or stream.closed:
            return
        if stream.isatty() and os.tcgetpgrp(stream.fileno()) != os.getpgrp():
            return  # a background job: reading would stop the whole demo (SIGTTIN)
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        return
