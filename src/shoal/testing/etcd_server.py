"""Start and stop real etcd processes (re-exported from :mod:`shoal.cli._etcd_server`).

The launcher lives with the command line, because ``shoal etcd start`` uses it
in production; tests and benchmarks import it from here::

    from shoal.testing.etcd_server import EtcdCluster

    with EtcdCluster(members=3) as cluster:
        store = await EtcdStore.open(cluster.endpoints)
"""

from shoal.cli._etcd_server import EtcdCluster, EtcdServerError, etcd_version, find_etcd_binary

__all__ = ["EtcdCluster", "EtcdServerError", "etcd_version", "find_etcd_binary", "member_view"]


async def member_view(endpoint: str, prefix: str, under: str) -> dict[str, int]:
    """Key -> mod revision under ``under``, as ONE member has it: read from that member
    alone, linearizably (so from its own copy, caught up). Members that disagree have
    diverged (see :func:`shoal.testing.chaos_report.disagreeing`)."""
    from shoal.store.etcd import EtcdStore  # lazily: no gRPC for the launcher's users

    member = await EtcdStore.open([endpoint], prefix=prefix, timeout=3.0)
    try:
        return {kv.key: kv.mod_revision for kv in (await member.range(under)).kvs}
    finally:
        await member.aclose()
