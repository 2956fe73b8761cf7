"""The public API: every name in shoal.__all__ resolves; light imports stay light."""

from __future__ import annotations

import subprocess
import sys

import shoal


def test_every_public_name_resolves() -> None:
    for name in shoal.__all__:
        assert getattr(shoal, name) is not None, name


def test_importing_shoal_loads_nothing_heavy() -> None:
    code = (
        "import sys, shoal; heavy = [m for m in ('grpc', 'pydantic', 'etcd3aio', 'yaml') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
