"""A Ray cluster of three nodes on this machine (`infra/cluster.sh`, what `make cluster-up` runs): each node a
network namespace with its own address on a bridge of the test's own and its own /tmp, joined with the token.

Training runs from the head with its two workers on the two worker nodes (gloo across the bridge) and reaches
what the same run reaches on one node; a worker node SIGKILLed mid-run (every process in its namespace) and
brought back, the run resumes from its last checkpoint with no epoch twice; and `down` leaves no namespace,
link or process. Everything the nodes share is the checkout (its data and a storage folder for checkpoints),
as machines share a network filesystem or a bucket; each node's /tmp is its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers.data import fetched
from helpers.paths import REPO

pytestmark = [pytest.mark.stack, pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")]

NET = "10.88.0"
HEAD = f"{NET}.10"
# The runner's parameter file of the cluster's deployment: JapaneseVowels from the checkout's test data, served
# on every node's address with HAProxy as the ingress, two replicas of half a CPU each.
CLUSTER_PARAMS = """
recipe: vowels-lstm
data: {{dataset: japanese_vowels}}
model: {{name: lstm}}
serve:
  host: 0.0.0.0
  port: 8000
  ingress: haproxy
  replicas: 2
  replica_cpus: 0.5
  replica_threads: 1
  follow_aliases_s: 0
paths: {{data_dir: "{data}", artifacts_dir: "{artifacts}"}}
"""


class Cluster:
    def __init__(self, name: str, run_dir: Path) -> None:
        self.name, self.run_dir = name, run_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "PREFECT_API"))} | {
            "CLUSTER_NAME": name, "CLUSTER_NET": NET, "MODELYARD_RUN_DIR": str(run_dir)}

    def script(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["infra/cluster.sh", *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert done.returncode == 0, f"cluster.sh {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def pipeline(self, shared: Path, *sets: str) -> list[str]:
        """`modelyard pipeline` run on the head node; its arguments."""
        return ["infra/cluster.sh", "exec", "0", str(REPO / ".venv/bin/modelyard"), "pipeline",
                *_run_settings(shared), *sets]


def _run_settings(shared: Path) -> list[str]:
    return ["--recipe", "vowels-lstm", "-S", f"paths.data_dir={REPO / 'tests' / '.data'}",
            "-S", f"paths.artifacts_dir={shared / 'artifacts'}", "-S", f"train.storage={shared / 'checkpoints'}",
            "-S", f"registry.tracking_uri=sqlite:///{shared / 'mlflow.db'}", "-S", "train.num_workers=2"]


def leftovers(name: str) -> list[str]:
    """Namespaces, links and processes of cluster `name` still there, after the kernel has had 10 s to remove
    the veth pairs of deleted namespaces (it does that in the background)."""
    for _ in range(20):
        found = _leftovers(name)
        if not found:
            return found
        time.sleep(0.5)
    return found


def _leftovers(name: str) -> list[str]:
    found = [f"netns {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith(f"{name}-")]
    found += [f"link {line.split(':')[1].strip()}" for line in
              subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
              if line.split(":")[1].strip().startswith(f"{name}-")]
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and f"{NET}." in cmd:
            found.append(f"process {proc.name}: {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def cluster():
    """Three nodes with the control plane on the head (PostgreSQL, MLflow, Prefect, a worker on node 1);
    removed afterwards, and checked to be gone."""
    name = f"t{uuid.uuid4().hex[:4]}"
    run_dir = REPO / "tests" / ".artifacts" / f"cluster-{name}"  # in the checkout: every node sees it
    cluster = Cluster(name, run_dir)
    fetched("japanese_vowels")  # into the checkout's test data, which every node reads (they have no internet)
    run_dir.mkdir(parents=True, exist_ok=True)
    params = run_dir / "params.yaml"
    params.write_text(CLUSTER_PARAMS.format(data=REPO / "tests" / ".data", artifacts=run_dir / "flow-artifacts"))
    cluster.env |= {"CLUSTER_CONTROL_PLANE": "1", "MODELYARD_PARAMS": str(params)}
    started = time.monotonic()
    try:
        up = cluster.script("up", "3", timeout=400)
        print(f"\ncluster of 3 nodes up in {time.monotonic() - started:.0f} s\n{up.stdout[-600:]}")
        yield cluster
    finally:
        cluster.script("down", timeout=300, check=False)
        left = leftovers(name)
        assert not left, f"left behind by cluster.sh down: {left}"


def _test_accuracy(shared: Path) -> float:
    metrics = next((shared / "artifacts").glob("japanese_vowels/lstm/metrics.json"))
    return json.loads(metrics.read_text())["test"]["accuracy"]


def test_training_with_workers_on_two_nodes_reaches_what_one_node_reaches(cluster, tmp_path):
    fetched("japanese_vowels")  # into the checkout's test data, which every node reads
    shared = cluster.run_dir / "two-nodes"
    started = time.monotonic()
    run = subprocess.run(cluster.pipeline(shared), cwd=REPO, env=cluster.env, capture_output=True, text=True,
                         timeout=900)
    across = time.monotonic() - started
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    nodes = set(re.findall(r"worker [12] of 2 on node (\S+)", run.stderr + run.stdout))
    assert nodes == {f"{NET}.11", f"{NET}.12"}, nodes  # one worker on each worker node, none on the head
    assert list((shared / "checkpoints").rglob("checkpoint_*")), "no checkpoint in the shared storage"

    alone = tmp_path / "one-node"  # a Ray of its own on this machine: one node, the same two workers and seed
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_", "PREFECT_API"))}
    started = time.monotonic()
    one = subprocess.run([sys.executable, "-m", "modelyard.cli", "pipeline", *_run_settings(alone)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=900)
    single = time.monotonic() - started
    assert one.returncode == 0, one.stderr[-5000:]
    two_nodes, one_node = _test_accuracy(shared), _test_accuracy(alone)
    print(f"\nvowels-lstm, 2 workers, seed 42: test accuracy {two_nodes:.4f} across two nodes ({across:.0f} s), "
          f"{one_node:.4f} on one node ({single:.0f} s)")
    assert two_nodes >= 0.95 and abs(two_nodes - one_node) <= 0.015  # 370 utterances: 0.015 is under 6 of them


def test_a_worker_node_killed_mid_run_the_training_resumes_from_its_checkpoint(cluster):
    """Every process of node 2 SIGKILLed once the run has checkpointed; the node comes back 5 s later (a
    machine restarting), and the run goes on from its last checkpoint: each epoch in the history once."""
    fetched("japanese_vowels")
    shared = cluster.run_dir / "node-lost"
    run = subprocess.Popen(cluster.pipeline(shared, "-S", "train.epochs=150", "-S", "train.max_failures=3"),
                           cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((shared / "checkpoints").rglob("checkpoint_manager_snapshot.json")):
            assert run.poll() is None and time.monotonic() < deadline, "the run never checkpointed"
            time.sleep(0.2)
        time.sleep(1.0)
        killed_at = time.monotonic()
        cluster.script("kill", "2")
        time.sleep(5)
        cluster.script("start", "2", timeout=300)
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-5000:]
    resumed = re.findall(r"resumed from the checkpoint of epoch (\d+)", output)
    assert resumed, output[-3000:]
    train = json.loads(next((shared / "artifacts").glob("japanese_vowels/lstm/train/train.json")).read_text())
    epochs = [row["epoch"] for row in train["history"]]
    assert epochs == list(range(1, 151)), epochs  # each epoch once, none missing
    assert train["resumed_after_epochs"][:1] == [int(resumed[0])]
    # Rank 0's TensorBoard events came through the checkpoints in the shared storage (each node's /tmp is its
    # own): every epoch once, across the restart.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((shared / "artifacts").glob("japanese_vowels/lstm/train/tensorboard"))))
    events.Reload()
    assert [e.step for e in events.Scalars("val/accuracy")] == list(range(1, 151))
    print(f"\nnode 2 SIGKILLed, back after 5 s: resumed after epoch {resumed[0]}, run done "
          f"{time.monotonic() - killed_at:.0f} s after the kill; test accuracy {_test_accuracy(shared):.4f}")


PLACEMENT = """
import json, ray
from ray.util.state import list_actors
ray.init(logging_level="ERROR")
ip = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
print(json.dumps(sorted(ip[a.node_id] for a in actors if a.class_name.startswith("ServeReplica:japanese"))))
"""


def replica_nodes(cluster: Cluster) -> list[str]:
    done = cluster.script("exec", "0", str(REPO / ".venv/bin/python"), "-c", PLACEMENT, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def champion(cluster):
    """The deployment run through Prefect's API with its auth string, as the UI's Run button does: executed by
    the worker on node 1, trained on the worker nodes, registered in MLflow on PostgreSQL. Returns the run."""
    import requests

    secrets = cluster.run_dir / "cluster" / cluster.name / "secrets"
    auth = ("modelyard", (secrets / "prefect_password").read_text())
    api = f"http://{HEAD}:4200/api"
    deployment = requests.get(f"{api}/deployments/name/training-pipeline/training-pipeline", auth=auth, timeout=10)
    assert deployment.ok, deployment.text
    started = time.monotonic()
    created = requests.post(f"{api}/deployments/{deployment.json()['id']}/create_flow_run", auth=auth, timeout=10,
                            json={"parameters": {"deploy": False}})
    assert created.ok, created.text
    while True:
        run = requests.get(f"{api}/flow_runs/{created.json()['id']}", auth=auth, timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() - started < 900, "the flow run did not finish in 15 min"
        time.sleep(3)
    logs = (cluster.run_dir / "cluster" / cluster.name / "logs" / "worker.log").read_text()
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{logs[-5000:]}"
    return {"run": run, "seconds": time.monotonic() - started, "auth": auth, "api": api, "deployment": deployment.json(),
            "mlflow": ("admin", (secrets / "mlflow_password").read_text()), "worker_log": logs}


def test_a_flow_run_from_the_api_with_the_auth_string_runs_on_the_worker_node_over_postgresql(cluster, champion):
    import requests

    run, api = champion["run"], champion["api"]
    assert run["work_pool_name"] == "modelyard" and run["name"] in champion["worker_log"]
    assert "Worker 'node-1'" in champion["worker_log"] or "node-1" in champion["worker_log"]
    # Without the auth string: 401, and no run is made.
    count = requests.post(f"{api}/flow_runs/count", json={}, auth=champion["auth"], timeout=10).json()
    refused = requests.post(f"{api}/deployments/{champion['deployment']['id']}/create_flow_run", json={}, timeout=10)
    assert refused.status_code == 401
    assert requests.post(f"{api}/flow_runs/count", json={}, auth=champion["auth"], timeout=10).json() == count
    # MLflow asks for its user too; with it, the champion the run promoted is there.
    alias = f"http://{HEAD}:5000/api/2.0/mlflow/registered-models/alias"
    query = {"name": "japanese-vowels-lstm", "alias": "champion"}
    assert requests.get(alias, params=query, timeout=10).status_code == 401
    found = requests.get(alias, params=query, auth=champion["mlflow"], timeout=10)
    assert found.ok, found.text
    # ... stored in PostgreSQL: the model version is a row of the mlflow database on the head.
    rows = cluster.script("exec", "0", "runuser", "-u", "postgres", "--", "psql", "-h",
                          str(cluster.run_dir / "cluster" / cluster.name / "postgres"), "-d", "mlflow", "-tAc",
                          "select count(*) from model_versions where name = 'japanese-vowels-lstm'").stdout
    assert int(rows.strip().splitlines()[-1]) >= 1
    print(f"\nflow run {run['name']} from the Prefect API: completed on the worker of node 1 in "
          f"{champion['seconds']:.0f} s; champion v{found.json()['model_version']['version']} in MLflow on PostgreSQL")


@pytest.fixture(scope="module")
def served(cluster, champion):
    """The champion served on every node, HAProxy the ingress, deployed from the head."""
    started = time.monotonic()
    deploy = subprocess.run(["infra/cluster.sh", "exec", "0", str(REPO / ".venv/bin/python"), "-m", "serving",
                             cluster.env["MODELYARD_PARAMS"]], cwd=REPO, env=cluster.env, capture_output=True,
                            text=True, timeout=900)
    assert deploy.returncode == 0, f"{deploy.stdout[-3000:]}\n{deploy.stderr[-5000:]}"
    print(f"\nserved on the cluster in {time.monotonic() - started:.0f} s")
    return deploy


class Load:
    """Clients posting real test utterances in turn through the given ingresses; each answer's status kept (0: a
    dropped connection)."""

    def __init__(self, urls: list[str], bodies: list[dict], clients: int) -> None:
        import threading

        self.urls, self.bodies, self.results = urls, bodies, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,)) for k in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def _client(self, k: int) -> None:
        import requests

        session, n = requests.Session(), k
        while not self._stop.is_set():
            try:
                status = session.post(self.urls[n % len(self.urls)], json=self.bodies[n % len(self.bodies)],
                                      timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.results.append(status)
            n += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    @property
    def failed(self) -> list[int]:
        return [s for s in self.results if s != 200]


def test_serving_spreads_over_the_nodes_and_a_node_lost_under_load_fails_almost_nothing(cluster, served):
    """Load through two nodes' ingresses (the head's and node 1's HAProxy); node 2, which holds a replica, is
    SIGKILLed 15 s in: at most 0.1% of the requests fail, and its replica comes back on the nodes left. Node 2
    then comes back and, still under load, gets a replica again (serving/placement.py)."""
    import requests

    from modelyard.data.dataset import load_split

    assert set(replica_nodes(cluster)) == {f"{NET}.11", f"{NET}.12"}  # spread: one replica on each worker node
    test = load_split(fetched("japanese_vowels"), "test")
    bodies = [{"series": test.series[i].tolist()} for i in range(0, len(test), 37)]
    urls = [f"http://{HEAD}:8000/japanese-vowels-lstm/predict", f"http://{NET}.11:8000/japanese-vowels-lstm/predict"]
    for url in urls:
        answer = requests.post(url, json=bodies[0], timeout=30)
        assert answer.status_code == 200 and answer.json()["model"]["name"] == "japanese-vowels-lstm", answer.text

    with Load(urls, bodies, clients=4) as load:
        time.sleep(15)
        killed_at, before_kill = time.monotonic(), len(load.results)
        cluster.script("kill", "2")
        time.sleep(45)
    share = len(load.failed) / len(load.results)
    deadline = time.monotonic() + 120
    while (nodes := replica_nodes(cluster)) != [f"{NET}.11", f"{NET}.11"] and time.monotonic() < deadline:
        time.sleep(3)
    print(f"\nnode 2 SIGKILLed under load (concurrency 4, through {NET}.10 and {NET}.11): {len(load.results)} "
          f"requests ({before_kill} before the kill), {len(load.failed)} failed ({share:.3%}: "
          f"{sorted(set(load.failed))}); replicas then on {nodes}, {time.monotonic() - killed_at:.0f} s after the kill")
    assert share <= 0.001, f"{len(load.failed)} of {len(load.results)} failed: {sorted(set(load.failed))}"
    assert nodes == [f"{NET}.11", f"{NET}.11"]  # both replicas on the worker node left

    with Load(urls, bodies, clients=2) as load:
        back_at = time.monotonic()
        cluster.script("start", "2", timeout=300)  # the machine back
        deadline = time.monotonic() + 180
        while (nodes := replica_nodes(cluster)) != [f"{NET}.11", f"{NET}.12"] and time.monotonic() < deadline:
            time.sleep(3)
        moved_in = time.monotonic() - back_at
        time.sleep(5)
    share = len(load.failed) / len(load.results)
    print(f"node 2 back: replicas on {nodes} {moved_in:.0f} s after it was started again; under load meanwhile "
          f"(concurrency 2) {len(load.results)} requests, {len(load.failed)} failed ({share:.3%})")
    assert nodes == [f"{NET}.11", f"{NET}.12"], "the node that came back got no replica"
    assert share <= 0.001, f"{len(load.failed)} of {len(load.results)} failed: {sorted(set(load.failed))}"
