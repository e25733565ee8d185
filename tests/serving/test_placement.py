"""Which replica moves when a node joins (serving/placement.py): the choice, the move on Ray's multi-raylet test
cluster, and (under load, on namespaced nodes) tests/infra/test_cluster.py."""

import time

import pytest

from serving.placement import PlacementCheck, replica_to_move


def test_a_node_that_came_back_empty_gets_one_replica_from_the_fullest_node():
    move = replica_to_move([("r2", "node-a"), ("r1", "node-a")], ["node-a", "node-b"])
    assert move is not None
    assert (move.replica_id, move.from_node, move.to_node) == ("r1", "node-a", "node-b")
    assert move.counts == {"node-a": 2, "node-b": 0}
    assert "r1" in move.reason() and "node-a" in move.reason()


def test_counts_that_differ_by_one_or_less_stay_where_they_are():
    assert replica_to_move([("r1", "a"), ("r2", "b")], ["a", "b"]) is None
    assert replica_to_move([("r1", "a"), ("r2", "a"), ("r3", "b")], ["a", "b"]) is None
    assert replica_to_move([("r1", "a")], ["a", "b", "c"]) is None


def test_the_fullest_node_gives_up_its_first_replica_only_so_two_never_leave_at_once():
    running = [("r5", "a"), ("r3", "a"), ("r4", "a"), ("r1", "b"), ("r2", "b")]
    move = replica_to_move(running, ["a", "b", "c"])
    assert move is not None and (move.replica_id, move.from_node, move.to_node) == ("r3", "a", "c")


def test_one_node_or_replicas_on_nodes_they_do_not_fit_on_move_nothing():
    assert replica_to_move([("r1", "a"), ("r2", "a"), ("r3", "a")], ["a"]) is None
    # replicas on a node that is gone (or too small) are Serve's to replace, not this check's
    assert replica_to_move([("r1", "gone"), ("r2", "gone")], ["a", "b"]) is None


PROBE_CPUS = 0.5


def _placement(app: str) -> list[tuple[str, str, str]]:
    from ray.serve.context import _get_global_client

    found = _get_global_client().get_serve_details()["applications"][app]["deployments"]["Probe"]
    # a replica still starting has no node yet
    return [(r["replica_id"], r.get("node_id", ""), str(r["state"]).rsplit(".", 1)[-1]) for r in found["replicas"]]


@pytest.mark.slow
@pytest.mark.integration
def test_a_node_that_joins_gets_a_replica_from_the_node_holding_both_and_then_nothing_moves():
    """Ray's multi-raylet test cluster (a head with no CPUs, one worker node of 1 CPU): both replicas of half a
    CPU on it; a second node joins, and one replica, no more, moves there through the health check."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        first = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="ERROR")

        @serve.deployment(name="Probe", num_replicas=2, ray_actor_options={"num_cpus": PROBE_CPUS},
                          health_check_period_s=1)
        class Probe:
            def __init__(self) -> None:
                self.check = PlacementCheck(every_s=2, replica_cpus=PROBE_CPUS)

            async def check_health(self) -> None:
                await self.check()

            def __call__(self, request: object) -> str:
                return "ok"

        serve.run(Probe.bind(), name="probe", route_prefix="/probe")
        before = _placement("probe")
        while not all(state == "RUNNING" for _, _, state in before):
            time.sleep(0.5)
            before = _placement("probe")
        assert {node for _, node, _ in before} == {first.node_id}
        second = cluster.add_node(num_cpus=1)
        deadline, after = time.monotonic() + 90, before
        while time.monotonic() < deadline:
            after = _placement("probe")
            if sorted((node, state) for _, node, state in after) == sorted([(first.node_id, "RUNNING"),
                                                                             (second.node_id, "RUNNING")]):
                break  # the one that moved is gone, its replacement runs
            time.sleep(1)
        moved = sorted(after)
        assert sorted(node for _, node, _ in moved) == sorted([first.node_id, second.node_id]), moved
        # the first replica (by id) moved, the other stayed; and with one each, nothing moves again
        assert min(r for r, _, _ in before) not in {r for r, _, _ in moved}
        assert max(r for r, _, _ in before) in {r for r, _, _ in moved}
        time.sleep(8)
        assert sorted(_placement("probe")) == moved
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
