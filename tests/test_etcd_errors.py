"""Connectivity reasons told apart from grpc's details (shoal.store._etcd_errors)."""

from __future__ import annotations

import grpc
import pytest

from shoal.errors import OutcomeUnknown, StoreError, StoreUnavailable
from shoal.store._etcd_errors import is_transient, short_reason, translate


def _rpc(details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> BaseException:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


LAST = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
SSL = "Ssl handshake failed: SSL_ERROR_SSL: error:10000412:SSL routines:OPENSSL_internal:"


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        (LAST + "Failed to connect to remote host: Connection refused", "connection refused"),
        (LAST + SSL + "CERTIFICATE_VERIFY_FAILED", "server certificate is not trusted"),
        (LAST + SSL + "SSLV3_ALERT_BAD_CERTIFICATE", "refused the client certificate"),
        # etcd 3.4 (TLS 1.3): the refusal arrives after the client's side of the handshake
        (LAST + "Unwrap failed (TSI_DATA_CORRUPTED)", "refused the client certificate"),
    ],
)
def test_short_reason_names_the_tls_cause(details: str, reason: str) -> None:
    assert reason in short_reason(_rpc(details))


def test_a_call_that_failed_inside_grpc_is_a_transport_failure() -> None:
    """grpc's asyncio client reports a stream whose connection broke while it was sending
    as INTERNAL "Internal error from Core" (seen when an etcd member is killed under a
    watch): it is retried like UNAVAILABLE, and a write's outcome is unknown. An INTERNAL
    status sent by a server is not."""
    core = _rpc("Internal error from Core", grpc.StatusCode.INTERNAL)
    assert is_transient(core)
    assert isinstance(translate(core, "watch", timeout=1.0), StoreUnavailable)
    written = translate(core, "txn", timeout=1.0, write=True)
    assert isinstance(written, OutcomeUnknown)
    assert "the connection failed during the call" in str(written)
    served = _rpc("etcdserver: something broke", grpc.StatusCode.INTERNAL)
    assert not is_transient(served)
    err = translate(served, "txn", timeout=1.0, write=True)
    assert type(err) is StoreError
    assert "INTERNAL" in str(err)
