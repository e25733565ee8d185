"""Replicas back onto a node that joins: Ray Serve places a replica when it starts and never moves it, so
after a node is lost and comes back (or a new one joins) its replicas stay packed on the nodes that were
left. Each replica checks its deployment's placement from its health check; when one node holds at least two
replicas more than another node they fit on, the first replica of the fullest node fails its health check
with the reason, and keeps failing it (Serve stops a replica after three failed checks in a row). Serve then
stops it gracefully (requests in flight finish) and starts a replacement, which
Ray's SPREAD scheduling puts on a node with room: while the old replica still holds its CPUs, the emptier node.
One replica moves at a time (only a deployment whose replicas are all running and at target is looked at),
so the deployment never drops below its size minus one, and the check repeats until the counts are even.

Only replicas that reserve CPUs (`serve.replica_cpus` > 0) move: a replica of 0 CPUs fits on any node,
the head included, and Ray's placement of it says nothing about load.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    replica_id: str
    from_node: str
    to_node: str
    counts: dict[str, int]  # replicas per node the deployment fits on, before the move

    def reason(self) -> str:
        shown = ", ".join(f"{node[:8]}: {n}" for node, n in sorted(self.counts.items()))
        return (f"replica {self.replica_id} moves from node {self.from_node[:8]} to a less loaded one "
                f"(replicas per node: {shown})")


def replica_to_move(running: list[tuple[str, str]], nodes: list[str]) -> Move | None:
    """The replica to move, if any.

    `running`: (replica id, node id) of every running replica of one deployment; `nodes`: the alive nodes a
    replica of it fits on. The fullest node gives up its first replica (by id, so two replicas never both
    decide to go) when it holds at least two more than the emptiest node.
    """
    counts = Counter({node: 0 for node in nodes})
    counts.update(node for _, node in running if node in counts)
    if len(counts) < 2:
        return None
    fullest = max(counts, key=lambda n: (counts[n], n))
    emptiest = min(counts, key=lambda n: (counts[n], n))
    if counts[fullest] - counts[emptiest] < 2:
        return None
    first = min(replica for replica, node in running if node == fullest)
    return Move(first, fullest, emptiest, dict(counts))


def check_placement(app_name: str, deployment: str, replica_cpus: float) -> Move | None:
    """This deployment's move now, from Serve's controller and Ray's node table (blocking: call it off the
    event loop)."""
    import ray
    from ray.serve.context import _get_global_client

    if replica_cpus <= 0:
        return None
    details: dict[str, Any] = _get_global_client().get_serve_details()
    found = details.get("applications", {}).get(app_name, {}).get("deployments", {}).get(deployment)
    if not found or found.get("status") != "HEALTHY":
        return None
    replicas = found.get("replicas", [])
    if len(replicas) != found.get("target_num_replicas") or any(r.get("state") != "RUNNING" for r in replicas):
        return None  # starting, stopping or scaling: let it settle first
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= replica_cpus]
    return replica_to_move([(r["replica_id"], r["node_id"]) for r in replicas], nodes)


class PlacementCheck:
    """A replica's side of it: call from the deployment's `check_health`; raises once this replica is to move,
    and on every check after that."""

    def __init__(self, every_s: float, replica_cpus: float) -> None:
        import time

        self.every_s, self.replica_cpus = every_s, replica_cpus
        self._checked = time.monotonic()  # the first check one period after the replica started
        self._leaving: str | None = None

    async def __call__(self) -> None:
        import asyncio
        import time

        from ray import serve

        if self._leaving:
            raise RuntimeError(self._leaving)
        if not self.every_s or self.replica_cpus <= 0 or time.monotonic() - self._checked < self.every_s:
            return
        self._checked = time.monotonic()
        ctx = serve.get_replica_context()
        try:
            move = await asyncio.to_thread(check_placement, ctx.app_name, ctx.deployment, self.replica_cpus)
        except Exception:  # the check is a convenience; a replica that cannot make it keeps serving
            log.exception("could not check the placement of %s's replicas", ctx.app_name)
            return
        if move is not None and move.replica_id == ctx.replica_id.unique_id:
            self._leaving = move.reason()
            log.warning("%s", self._leaving)
            raise RuntimeError(self._leaving)
