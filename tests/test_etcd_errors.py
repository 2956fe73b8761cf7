"""Connectivity reasons told apart from grpc's details (shoal.store._etcd_errors)."""

from __future__ import annotations

import grpc
import pytest

from shoal.store._etcd_errors import short_reason


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
