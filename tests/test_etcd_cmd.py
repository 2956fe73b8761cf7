"""`shoal etcd start`: restart right after a stop, TLS, 5 members (issue #12 section 5)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.store.etcd import EtcdStore

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(240)]


class EtcdCmd:
    """One `shoal etcd start --json` process, stopped by PID."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL__")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.cli.main", "etcd", "start", "--json", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )

    def ready(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"^\{.*\}$", self.log.read_text(errors="replace"), re.M)
            if found:
                return json.loads(found.group(0))  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise AssertionError(f"not ready (exit {self.proc.poll()}):\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[EtcdCmd]]:
    procs: list[EtcdCmd] = []
    yield procs
    for p in procs:
        p.stop()


async def _round_trip(endpoints: list[str], tls: dict[str, str] | None = None) -> bytes:
    kw: dict[str, Any] = {}
    if tls:
        kw = {"ca_file": tls["ca"], "cert_file": tls["cert"], "key_file": tls["key"]}
    store = await EtcdStore.open(endpoints, prefix="/t", **kw)
    try:
        await store.put("k", b"v")
        return (await store.get("k")).value  # type: ignore[union-attr]
    finally:
        await store.aclose()


def test_restart_right_after_a_stop_with_the_same_data_dir(
    tmp_path: Path, started: list[EtcdCmd]
) -> None:
    data = tmp_path / "data"
    first = EtcdCmd(["--members", "3", "--data-dir", str(data)], tmp_path / "1.log")
    started.append(first)
    endpoints = first.ready()["endpoints"]
    assert asyncio.run(_round_trip(endpoints)) == b"v"
    assert first.stop() == 0
    again = EtcdCmd(["--members", "3", "--data-dir", str(data)], tmp_path / "2.log")
    started.append(again)
    assert again.ready()["endpoints"] == endpoints  # same ports, at once
    assert "already in use" not in again.log.read_text()


def test_tls_and_five_members(tmp_path: Path, started: list[EtcdCmd]) -> None:
    cmd = EtcdCmd(["--members", "5", "--tls"], tmp_path / "tls.log")
    started.append(cmd)
    info = cmd.ready(150)
    assert len(info["endpoints"]) == 5 and all(e.startswith("https://") for e in info["endpoints"])
    assert set(info["tls"]) == {"ca", "cert", "key"}
    assert asyncio.run(_round_trip(info["endpoints"], info["tls"])) == b"v"
