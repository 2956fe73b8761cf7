"""Endpoints, TLS material and the gRPC channel of the etcd backend."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import grpc.aio

from shoal.errors import ConfigError, StoreUnavailable

ENDPOINTS_KEY = "store.etcd.endpoints"


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # as configured
    tls: bool
    host: str  # hostname or IPv4 literal, as configured
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    root: bytes | None  # PEM roots; None = the system's
    key: bytes | None
    chain: bytes | None
    server_name: str | None


def parse_endpoints(endpoints: Sequence[str]) -> list[Endpoint]:
    """Validate ``http://host:port`` / ``https://host:port`` endpoints."""
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not endpoints:
        raise ConfigError(f"{ENDPOINTS_KEY} is empty: list at least one http(s)://host:port")
    parsed: list[Endpoint] = []
    for raw in endpoints:
        fix = f"{ENDPOINTS_KEY}: {raw!r} is not an etcd endpoint; use http://HOST:PORT or https://HOST:PORT"
        if not isinstance(raw, str):
            raise ConfigError(fix)
        try:
            parts = urlsplit(raw.strip())
            port = parts.port
        except ValueError:
            raise ConfigError(f"{fix} (PORT is 1-65535)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise ConfigError(fix)
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ConfigError(fix)
        if ":" in parts.hostname:
            raise ConfigError(f"{fix} (IPv6 is not supported; use IPv4 or a hostname)")
        if port == 0:
            raise ConfigError(f"{fix} (PORT is 1-65535)")
        parsed.append(Endpoint(raw, parts.scheme == "https", parts.hostname, port))
    if len({e.tls for e in parsed}) > 1:
        raise ConfigError(f"{ENDPOINTS_KEY}: mixes http:// and https:// — use one scheme for all")
    return parsed


async def resolve(endpoints: Sequence[Endpoint], wait: float) -> list[str]:
    """``ip:port`` for every endpoint (the gRPC ``ipv4:`` target needs IP literals)."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    for ep in endpoints:
        if ep.is_ip:
            out.append(f"{ep.host}:{ep.port}")
            continue
        try:
            async with asyncio.timeout(wait):
                infos = await loop.getaddrinfo(
                    ep.host, ep.port, family=socket.AF_INET, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"etcd endpoint {ep.url}: cannot resolve {ep.host!r} ({exc or 'timeout'}); "
                f"check {ENDPOINTS_KEY}"
            ) from None
        out.append(f"{infos[0][4][0]}:{ep.port}")
    return out


def read_file(path: str | Path | None, key: str) -> bytes | None:
    if path is None or str(path) == "":
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


async def fetch_server_certs(
    endpoints: Sequence[Endpoint],
    addrs: Sequence[str],
    cert_file: str | Path | None,
    key_file: str | Path | None,
    wait: float,
) -> tuple[bytes, str | None]:
    """skip_verify: fetch each reachable member's certificate without verifying it.

    Returns the PEM certificates (to pin as roots: BoringSSL accepts a pinned leaf) and a
    name present in every one of them (for the target-name override).
    """
    pems: list[str] = []
    names: list[list[str]] = []
    last_error: BaseException | None = None
    for ep, addr in zip(endpoints, addrs, strict=True):
        host, port = addr.rsplit(":", 1)
        try:
            async with asyncio.timeout(wait):
                der = await _peer_cert(host, int(port), ep.host, cert_file, key_file, None)
                pem = ssl.DER_cert_to_PEM_cert(der)
                info = await _peer_cert(host, int(port), ep.host, cert_file, key_file, pem)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            last_error = exc
            continue
        pems.append(pem)
        names.append(_cert_names(info))
    if not pems:
        raise StoreUnavailable(
            f"etcd not reachable at {', '.join(e.url for e in endpoints)} within {wait}s "
            f"(could not fetch the server certificate for skip_verify: {last_error or 'timeout'})"
        )
    common = [n for n in names[0] if all(n in other for other in names[1:])]
    preferred = [n for n in common if n == endpoints[0].host]
    candidates = preferred or common or names[0]
    server_name = candidates[0] if candidates else None
    return "".join(pems).encode(), server_name


async def _peer_cert(
    host: str,
    port: int,
    server_hostname: str,
    cert_file: str | Path | None,
    key_file: str | Path | None,
    trusted_pem: str | None,
) -> Any:
    """DER of the peer certificate (``trusted_pem`` None), else its decoded fields."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if trusted_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=trusted_pem)
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.open_connection(
        host, port, ssl=ctx, server_hostname=server_hostname
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        return sslobj.getpeercert(binary_form=trusted_pem is None)
    finally:
        writer.close()


def _cert_names(info: Any) -> list[str]:
    names: list[str] = []
    if isinstance(info, dict):
        for kind, value in info.get("subjectAltName", ()):
            if kind in ("DNS", "IP Address"):
                names.append(str(value))
        for rdn in info.get("subject", ()):
            for attr, value in rdn:
                if attr == "commonName":
                    names.append(str(value))
    return names


def make_channel(addrs: Sequence[str], tls: TlsMaterial | None) -> Any:
    """A round-robin gRPC channel over every member (fails over to the live ones)."""
    target = "ipv4:" + ",".join(addrs)
    options: list[tuple[str, Any]] = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        # etcd refuses keepalive pings without an active stream (too_many_pings).
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.max_receive_message_length", 2**31 - 1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.root, private_key=tls.key, certificate_chain=tls.chain
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(target, creds, options=options)
