"""modelyard.registry.lock: the promotion lock lives in the registry itself, so promotions from processes
that reach one store by different URIs (its sqlite file, its HTTP server) still take turns, and an alias
moves only if it points where it was read. Real MLflow: a sqlite store and an `mlflow server` over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from helpers.ports import free_port
from modelyard.registry import lock, versions
from modelyard.registry.store import client

pytestmark = pytest.mark.integration

PROMOTE = """
import json, sys
from modelyard.registry.promotion import promote_if_better
uri, name, version, value = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
d = promote_if_better(uri, name, version, metric="test.accuracy", value=value, test_set_hash="same")
print(json.dumps(d.to_dict()))
"""


@pytest.fixture
def store(tmp_path):
    """(sqlite URI, HTTP URI) of one store: an `mlflow server` in front of the sqlite file."""
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client(db).search_registered_models()  # creates the schema before the server and the writers race for it
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", db, "--default-artifact-root", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    http = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{http}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer in 60 s")
        yield db, http
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def _bare_versions(uri: str, name: str, n: int) -> list[str]:
    """Registered versions with no files: promotion on one test set reads only their recorded scores."""
    registry = client(uri)
    registry.create_registered_model(name)
    return [str(registry.create_model_version(name, source=f"file:///nowhere/{i}").version) for i in range(n)]


def test_promotions_through_two_uris_of_one_store_take_turns(store):
    """Eight processes promote at once, half through the sqlite file and half through the HTTP server. Taken
    in turns, each promoted version replaced the one promoted just before it, and the best one ends champion.
    Without a lock in the store (a file lock keyed by the URI's text, as before) two of them read the same
    champion and the chain breaks."""
    db, http = store
    scores = [0.61, 0.83, 0.72, 0.90, 0.55, 0.88, 0.79, 0.91]
    names = _bare_versions(db, "raced", len(scores))
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTE, (db, http)[i % 2], "raced", v, str(s)],
                              stdout=subprocess.PIPE, text=True)
             for i, (v, s) in enumerate(zip(names, scores))]
    decisions = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)

    promoted = [d for d in decisions if d["promoted"]]
    replaced = [d["champion_version"] for d in promoted]
    assert len(set(replaced)) == len(replaced), f"two promotions replaced the same champion: {replaced}"
    # The promotions form one chain: None -> a -> b -> ..., each replacing the one before it.
    chain, current = [], None
    by_replaced = {d["champion_version"]: d for d in promoted}
    while current in by_replaced:
        current = by_replaced[current]["version"]
        chain.append(current)
    assert len(chain) == len(promoted)
    best = names[scores.index(max(scores))]
    assert chain[-1] == best == versions.get_version(db, "raced", alias="champion").version
    for d in decisions:
        if not d["promoted"]:
            assert d["challenger_value"] < d["champion_value"]
    assert not [m.name for m in client(db).search_registered_models() if m.name.endswith(lock.LOCK_SUFFIX)]


def test_a_lock_left_by_a_dead_holder_is_taken_over_once_its_lease_ran_out(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = _bare_versions(uri, "m", 1)
    client(uri).create_registered_model("m" + lock.LOCK_SUFFIX, tags={lock.OWNER_TAG: "gone:1:x",
                                                                     lock.EXPIRES_TAG: str(time.time() - 1)})
    with lock.registry_lock(uri, "m", wait_s=5) as owner:
        held = client(uri).get_registered_model("m" + lock.LOCK_SUFFIX).tags[lock.OWNER_TAG]
        assert held == owner != "gone:1:x"
    # A live holder's lock is waited for, then the waiter gives up naming the holder.
    client(uri).create_registered_model("m" + lock.LOCK_SUFFIX, tags={lock.OWNER_TAG: "alive:2:y",
                                                                     lock.EXPIRES_TAG: str(time.time() + 600)})
    with pytest.raises(lock.RegistryLockTimeout, match="held by alive:2:y"), lock.registry_lock(uri, "m", wait_s=1):
        pass
    assert names == ["1"]


def test_an_alias_moves_only_if_it_points_where_it_was_read(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    v1, v2, v3 = _bare_versions(uri, "m", 3)
    lock.compare_and_set_alias(uri, "m", "champion", v1, expected=None)
    with pytest.raises(lock.AliasMovedError, match=r"'m@champion' points at v1, not v2 as read"):
        lock.compare_and_set_alias(uri, "m", "champion", v3, expected=v2)
    assert versions.get_version(uri, "m", alias="champion").version == v1
    lock.compare_and_set_alias(uri, "m", "champion", v3, expected=v1)
    assert versions.get_version(uri, "m", alias="champion").version == v3
