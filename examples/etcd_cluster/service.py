"""The service of the etcd cluster example: frontend nodes and ingest nodes.

Like OpenCTI's frontend and ingestion nodes, one application, two kinds of node
told apart by ``node.roles`` in their configuration:

* ``frontend`` nodes serve the HTTP API, the dashboard and the shared sessions
  (``shoal run`` does that when ``http.port`` is set and ``auth.secret`` is in
  the environment); they may lead, so leader work runs there;
* ``ingest`` nodes run the importers (one per source, each on exactly one
  node), the search indexer and a pool of workers (two copies on every ingest
  node).

    shoal run examples/etcd_cluster/service.py:app --config examples/etcd_cluster/frontend.yaml

Walk-through with a local 3-member etcd: docs/demo.md.
"""

from __future__ import annotations

import json
import time

import shoal
from shoal.runtime.workers import WorkerContext

app = shoal.App("shop")


def _doc(ctx: shoal.DutyContext, **fields: object) -> bytes:
    return json.dumps({"node": ctx.node, "token": ctx.token, "at": time.time(), **fields}).encode()


@app.duty("import:{source}", for_each="sources", roles=["ingest"])
async def importer(ctx: shoal.DutyContext) -> None:
    """One importer per source (params.sources), on an ingest node."""
    batches = 0
    while True:
        batches += 1
        try:
            await ctx.put(f"state/imports/{ctx.item}", _doc(ctx, batches=batches))  # fenced
        except shoal.DutyLost:
            return
        if not await ctx.sleep(float(ctx.params.get("interval", 1.0))):
            return


@app.duty("search-indexer", roles=["ingest"])
async def search_indexer(ctx: shoal.DutyContext) -> None:
    while await ctx.sleep(float(ctx.params.get("interval", 1.0))):
        try:
            await ctx.put("state/search/indexer", _doc(ctx))
        except shoal.DutyLost:
            return


@app.workers("ingest-worker", per_node=2, roles=["ingest"])
async def ingest_worker(ctx: WorkerContext) -> None:
    """Not a singleton: two copies on EVERY ingest node (e.g. queue consumers)."""
    while await ctx.sleep(1.0):
        pass


@app.leader_duty("certificate-renewal")
async def certificate_renewal(ctx: shoal.DutyContext) -> None:
    """Leader work: only frontend nodes may lead here (can_lead: false on ingest)."""
    while await ctx.sleep(float(ctx.params.get("interval", 1.0)) * 5):
        pass
