"""Start and stop real etcd processes (re-exported from :mod:`shoal.cli._etcd_server`).

The launcher lives with the command line, because ``shoal etcd start`` uses it
in production; tests and benchmarks import it from here::

    from shoal.testing.etcd_server import EtcdCluster

    with EtcdCluster(members=3) as cluster:
        store = await EtcdStore.open(cluster.endpoints)
"""

from shoal.cli._etcd_server import EtcdCluster, EtcdServerError, etcd_version, find_etcd_binary

__all__ = ["EtcdCluster", "EtcdServerError", "etcd_version", "find_etcd_binary"]
