"""``GET /schedules`` and ``POST /schedules/{name}/run`` (see docs/http.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shoal.http._common import error
from shoal.runtime.schedule import request_run
from shoal.runtime.schedule_view import schedule_rows

if TYPE_CHECKING:
    from shoal.runtime.node import Node

__all__ = ["SCHEDULE_METRICS", "schedule_routes", "schedule_samples"]

Handler = Callable[[Request], Awaitable[Response]]


def schedule_routes(node: Node, guard: Callable[..., Handler]) -> list[Route]:
    """The schedule endpoints; ``guard`` is the API's credential check (running a
    schedule is a management call; listing is a read)."""

    async def listing(request: Request) -> Response:
        return JSONResponse({"schedules": schedule_rows(node)})

    async def run(request: Request) -> Response:
        name = request.path_params["name"]
        if not any(d.name == name and d.schedule is not None for d in node.duties):
            return error(404, "schedule_not_found", f"no schedule named {name!r}")
        who = getattr(request.state, "caller", "?")
        trigger = await request_run(node.state, name, by=f"HTTP API on {node.name} ({who})")
        return JSONResponse({"schedule": name, "trigger": trigger, "status": "requested"}, 202)

    return [
        Route("/schedules", guard(listing, manage=False), methods=["GET"]),
        Route("/schedules/{name:path}/run", guard(run), methods=["POST"]),
    ]


# name -> (type, help); exported by the node that owns the schedule
SCHEDULE_METRICS: dict[str, tuple[str, str]] = {
    "shoal_schedule_runs_total": (
        "counter", "Finished runs of a schedule by outcome (ok, failed, timeout, interrupted)."
    ),
    "shoal_schedule_failures_total": ("counter", "Runs of a schedule that failed or timed out."),
    "shoal_schedule_skipped_total": ("counter", "Slots of a schedule skipped (missed)."),
    "shoal_schedule_lateness_seconds": (
        "gauge", "How late the last run of a schedule started after its slot."
    ),
    "shoal_schedule_next_run_timestamp_seconds": ("gauge", "Next slot of a schedule (epoch)."),
}


def schedule_samples(
    rows: Sequence[Mapping[str, Any]], me: str
) -> list[tuple[str, float, dict[str, str]]]:
    """(metric, value, labels) for the schedules node ``me`` owns. The counts are
    the cluster's (kept in the replicated record), so they survive failovers."""
    out: list[tuple[str, float, dict[str, str]]] = []
    for row in rows:
        if row["owner"] != me:
            continue
        name = row["name"]
        counts = row["counts"]
        for outcome in ("ok", "failed", "timeout", "interrupted"):
            out.append(("shoal_schedule_runs_total", counts.get(outcome, 0),
                        {"schedule": name, "outcome": outcome}))
        failures = counts.get("failed", 0) + counts.get("timeout", 0)
        out.append(("shoal_schedule_failures_total", failures, {"schedule": name}))
        out.append(("shoal_schedule_skipped_total", counts.get("skipped", 0), {"schedule": name}))
        out.append(("shoal_schedule_lateness_seconds", row["lateness"], {"schedule": name}))
        if row["next_run"] is not None:
            out.append(("shoal_schedule_next_run_timestamp_seconds", row["next_run"],
                        {"schedule": name}))
    return out
