"""Session secrets that do not match across the cluster, made visible.

Every node announces the key ids (:func:`shoal.config._secrets.key_id`: a short keyed
hash, never the secret) of its ``auth.secret`` and ``auth.previous_secrets``,
current first, in its node record. A node whose CURRENT secret is not among
the key ids another node accepts signs sessions that node refuses: a warning
in the node's log, in ``/cluster`` (``warnings``), ``shoal status`` and the
dashboard.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shoal.primitives.membership import Member

__all__ = ["secret_warnings", "warn_about_keys"]

log = logging.getLogger("shoal.node")


def secret_warnings(members: Mapping[str, Member]) -> list[str]:
    """One line per node whose current session secret another node does not accept."""
    out = []
    for name, member in sorted(members.items()):
        if not member.keys:
            continue
        current = member.keys[0]
        refusing = sorted(o for o, m in members.items()
                          if o != name and m.keys and current not in m.keys)
        if refusing:
            who = ", ".join(refusing)
            out.append(
                f"node {name} signs sessions with key {current}, which {who} "
                f"{'does' if len(refusing) == 1 else 'do'} not accept — give every node the "
                "same auth.secret (list the old one in auth.previous_secrets while rotating)"
            )
    return out


def warn_about_keys(
    members: Mapping[str, Member], logged: frozenset[str], me: str
) -> frozenset[str]:
    """Log the warnings not logged yet (by node ``me``); returns the current set."""
    now = frozenset(secret_warnings(members))
    for line in sorted(now - logged):
        log.warning("node %s: %s", me, line)
    return now
