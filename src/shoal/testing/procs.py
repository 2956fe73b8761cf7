"""Run ``shoal run`` nodes as real OS processes, for tests.

    with ProcCluster(tmp_path, base_config) as cluster:
        a = cluster.spawn("a")                      # writes a.yaml, starts the node
        a.wait_for(r"joined cluster")
        mark = b.mark()
        a.kill9()                                   # or sigstop() / sigcont() / terminate()
        b.wait_for(r"started ticker", since=mark)

Every node's stdout and stderr go to one log file (``<name>.log``; the reaper
writes there too). Every process is ended by PID at cleanup -- the node, and
its reaper (reported by the node as ``reaper pid N``, or found among its
children) -- and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from shoal.cli._procfs import children as _children
from shoal.cli._procfs import is_reaper as _is_reaper
from shoal.errors import ProcessError, StartTimeout

__all__ = ["DEFAULT_APP", "NodeProcess", "ProcCluster", "deep_merge"]

REPO = Path(__file__).resolve().parents[3]
DEFAULT_APP = f"{REPO / 'examples' / 'basic_app.py'}:app"


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, nested mappings merged (copies)."""
    out = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out




class NodeProcess:
    """One ``shoal run`` process with its config file and log file."""

    def __init__(
        self, name: str, config: Mapping[str, Any], workdir: Path, *, app: str = DEFAULT_APP,
        env: Mapping[str, str] | None = None, label: str | None = None,
    ) -> None:
        self.name = name
        self.label = label or name
        self.config = dict(config)
        self.app = app
        self.config_path = workdir / f"{self.label}.yaml"
        self.log_path = workdir / f"{self.label}.log"
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.reaper_pids: set[int] = set()

    # -- starting and observing ---------------------------------------------------------
    def start(self) -> NodeProcess:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "run", self.app,
                 "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(REPO), env=env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def output(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        for match in re.finditer(r"reaper pid (\d+)", text):
            self.reaper_pids.add(int(match.group(1)))
        return text

    def mark(self) -> int:
        """The current length of the output (for ``wait_for(..., since=mark)``)."""
        return len(self.output())

    def wait_for(
        self, pattern: str, *, since: int = 0, timeout: float = 15.0, poll: float = 0.01
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a regex, multiline) appears after offset ``since``."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output(), since)
            if match:
                return match
            if time.monotonic() > deadline:
                raise StartTimeout(
                    f"{self.label}: no {pattern!r} within {timeout:g} s; output tail:\n"
                    + self.output()[-3000:]
                )
            if not self.alive and not regex.search(self.output(), since):
                raise ProcessError(
                    f"{self.label} exited ({self.returncode}) before {pattern!r}; output:\n"
                    + self.output()[-3000:]
                )
            time.sleep(poll)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    # -- signals --------------------------------------------------------------------------
    def _signal(self, sig: signal.Signals) -> None:
        if self.alive:
            self._note_reapers()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _note_reapers(self) -> None:
        self.output()
        if self.proc is not None:
            self.reaper_pids.update(p for p in _children(self.proc.pid) if _is_reaper(p))

    def kill9(self) -> None:
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def sigstop(self) -> None:
        self._signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        self._signal(signal.SIGCONT)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def stop(self, timeout: float = 5.0) -> None:
        """End the node and its reaper by PID (SIGKILL after ``timeout``)."""
        if self.proc is not None and self.proc.poll() is None:
            self._note_reapers()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.output()
        deadline = time.monotonic() + 2.0  # a reaper revokes, then exits by itself
        for pid in sorted(self.reaper_pids):
            while _is_reaper(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _is_reaper(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class ProcCluster:
    """Node processes sharing ``base_config``; all stopped by PID on exit."""

    def __init__(
        self, workdir: Path, base_config: Mapping[str, Any], *, app: str = DEFAULT_APP
    ) -> None:
        self.workdir = Path(workdir)
        self.base_config = dict(base_config)
        self.app = app
        self.nodes: list[NodeProcess] = []

    def node(self, name: str, **overrides: Any) -> NodeProcess:
        """A node named ``name`` (``node.name``), not yet started; ``overrides``
        are merged into the config (``reaper={"enabled": False}``)."""
        config = deep_merge(self.base_config, {"node": {"name": name}})
        config = deep_merge(config, overrides)
        label = name
        while any(n.label == label for n in self.nodes):
            label += "_"
        proc = NodeProcess(name, config, self.workdir, app=self.app, label=label)
        self.nodes.append(proc)
        return proc

    def spawn(self, name: str, **overrides: Any) -> NodeProcess:
        return self.node(name, **overrides).start()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ProcCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
