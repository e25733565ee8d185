"""The stack of `make up`, started the way a newcomer's machine starts it, and used the way users use it.

`infra/stack.sh up` runs with HOME pointed at an empty directory and every port moved off its default, so
the test leans on nothing a developer's machine may have (a Ray token in ~/.ray, a Prefect profile) and
cannot collide with a stack that is running. Then: the `training-pipeline` deployment is run through the
Prefect REST API exactly as the UI's Run button does; the model it trains is served and classifies real
images; a Custom run is made in a real browser; and `infra/stack.sh down` leaves no process and no listener.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from helpers.config import small_config, write_params
from helpers.paths import REPO
from helpers.ports import free_port
from modelyard.paths import TaskPaths

pytestmark = [pytest.mark.stack, pytest.mark.integration, pytest.mark.slow]

DEPLOYMENT = "training-pipeline/training-pipeline"
ARTIFACTS_DIR = REPO / "tests" / ".artifacts"  # screenshots kept for a person to look at (git-ignored)
STACK_ENV_DROP = ("MPLCONFIGDIR", "RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH",
                  "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")


@dataclass
class Stack:
    env: dict[str, str]
    home: Path
    run_dir: Path
    ports: dict[str, int]
    cfg: object  # the PipelineConfig the deployment is prefilled with

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['PREFECT_PORT']}/api"

    @property
    def prefect_auth(self) -> str:
        """The string Prefect's API asks for (HTTP basic auth), which `up` made in the run directory."""
        return (self.run_dir / "prefect" / "auth_string").read_text()

    @property
    def prefect(self) -> requests.Session:
        """A session that presents the auth string, as the stack's own clients do."""
        session = requests.Session()
        session.auth = tuple(self.prefect_auth.split(":", 1))
        return session

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['SERVE_PORT']}"

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["infra/stack.sh", *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.run_dir / "logs").glob("*.log")))


@pytest.fixture(scope="module")
def stack(fashion_mnist_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    home = tmp / "home"
    home.mkdir()
    ports = {name: free_port() for name in ("PREFECT_PORT", "MLFLOW_PORT", "RAY_PORT", "RAY_DASHBOARD_PORT",
                                            "RAY_CLIENT_PORT", "RAY_DASHBOARD_AGENT_PORT", "SERVE_PORT")}
    # A small run: 4,000 real training images, two epochs; the registry is the stack's MLflow server. The
    # monitor's run below asks for no retraining (tests/pipelines/test_retraining.py runs that), which would
    # train beside the other tests here.
    cfg = small_config(tmp, data={"train_limit": 4000, "test_limit": 1000}, train={"epochs": 2},
                       registry={"tracking_uri": None, "experiment": "stack-test"},
                       serve={"port": ports["SERVE_PORT"]}, monitor={"retrain": {"on_drift": False}})
    params = write_params(cfg, tmp / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in STACK_ENV_DROP}
    env |= {"HOME": str(home), "MODELYARD_RUN_DIR": str(tmp / "run"), "MLFLOW_STORE_DIR": str(tmp / "mlflow"),
            "MODELYARD_PARAMS": str(params)} | {k: str(v) for k, v in ports.items()}
    stack = Stack(env=env, home=home, run_dir=tmp / "run", ports=ports, cfg=cfg)
    started = time.monotonic()
    up = stack.script("up")
    try:
        assert up.returncode == 0, f"stack.sh up failed:\n{up.stdout}\n{up.stderr}\n{stack.logs()}"
        print(f"stack up in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.script("down", timeout=120)


def run_deployment_as_the_ui_does(stack: Stack, parameters: dict | None = None) -> str:
    """POST /deployments/{id}/create_flow_run: what the UI's Run button sends. Returns the flow run id."""
    api, session = stack.prefect_api, stack.prefect
    deployment = session.get(f"{api}/deployments/name/{DEPLOYMENT}", timeout=10)
    deployment.raise_for_status()
    body = {"parameters": parameters} if parameters else {}
    run = session.post(f"{api}/deployments/{deployment.json()['id']}/create_flow_run", json=body, timeout=10)
    run.raise_for_status()
    return run.json()["id"]


def wait_for_flow_run(stack: Stack, flow_run_id: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = stack.prefect.get(f"{stack.prefect_api}/flow_runs/{flow_run_id}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(3)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s:.0f} s\n{stack.logs()}")


def test_the_deployment_run_from_the_api_trains_registers_and_serves(stack, image_bytes, class_names):
    started = time.monotonic()
    flow_run_id = run_deployment_as_the_ui_does(stack)
    run = wait_for_flow_run(stack, flow_run_id)
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{stack.logs()}"
    print(f"deployment run completed in {time.monotonic() - started:.0f} s")

    # The registry is the stack's MLflow server, and the champion is what is being served.
    mlflow_api = f"http://127.0.0.1:{stack.ports['MLFLOW_PORT']}/api/2.0/mlflow"
    champion = requests.get(f"{mlflow_api}/registered-models/alias",
                            params={"name": stack.cfg.task_name, "alias": "champion"}, timeout=10)
    assert champion.ok, champion.text
    version = champion.json()["model_version"]["version"]
    run = requests.get(f"{mlflow_api}/runs/get", params={"run_id": champion.json()["model_version"]["run_id"]},
                       timeout=10).json()["run"]
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert run["info"]["status"] == "FINISHED" and metrics["test/accuracy"] > 0.60  # chance is 0.10
    # GET / lists the served tasks; each has its own route.
    index = requests.get(f"{stack.serve_url}/", timeout=10).json()
    assert {"task": stack.cfg.task_name, "version": version} in [
        {"task": a["task"], "version": a["version"]} for a in index["apps"]], index
    route = next(a["route"] for a in index["apps"] if a["task"] == stack.cfg.task_name)
    correct = 0
    for stem, data in image_bytes.items():
        resp = requests.post(f"{stack.serve_url}{route}/predict", files={"file": (f"{stem}.png", data, "image/png")},
                             timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == {"name": stack.cfg.task_name, "version": version}
        assert body["label"] == class_names[body["index"]]
        correct += body["label"].lower().replace("/", "-").replace(" ", "-") == stem
    assert correct >= 4, f"{correct}/10 real test images right after two epochs on 4,000 images"

    # Nothing was put in the (empty) HOME: the Ray token, Prefect's home and caches live in the run directory.
    assert (stack.run_dir / "ray" / "auth_token").stat().st_mode & 0o077 == 0  # readable by the owner only
    assert (stack.run_dir / "prefect" / "auth_string").stat().st_mode & 0o077 == 0
    assert not list(stack.home.iterdir()), [str(p) for p in stack.home.rglob("*")]


def test_the_search_deployment_is_served_with_its_form(stack):
    """hyperparameter-search beside the others (tests/tuning runs the flow itself): its form has the recipe
    select, the search space and the search's settings, and a bad space fails the run before anything runs."""
    search = stack.prefect.get(f"{stack.prefect_api}/deployments/name/hyperparameter-search/hyperparameter-search",
                               timeout=10)
    assert search.status_code == 200, search.text
    properties = search.json()["parameter_openapi_schema"]["properties"]
    assert {"recipe", "space", "search", "train", "data", "register_winner"} <= set(properties)
    created = stack.prefect.post(f"{stack.prefect_api}/deployments/{search.json()['id']}/create_flow_run",
                                 json={"parameters": {"space": {"train.seed": {"int": [1, 5]}}}}, timeout=10)
    created.raise_for_status()
    run = wait_for_flow_run(stack, created.json()["id"])
    assert run["state_type"] == "FAILED", run["state_name"]
    deadline = time.monotonic() + 30  # the runner ships a run's log lines in batches, after its state at times
    while True:
        logs = stack.prefect.post(f"{stack.prefect_api}/logs/filter", json={
            "logs": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=10).json()
        if any("train.seed is set by the search itself" in entry["message"] for entry in logs):
            break
        assert time.monotonic() < deadline, [entry["message"][:300] for entry in logs[-3:]]
        time.sleep(2)


def test_the_batch_predict_deployment_writes_a_row_per_file_and_refuses_paths_outside_the_roots(stack, image_bytes):
    """batch-predict through the API (after the first test registered a champion): real test PNGs and a broken
    file in the runner's data root, a Parquet row each under its artifact root; a path leading out is refused."""
    import pandas as pd

    photos = Path(stack.cfg.paths.data_dir) / "batch-photos"
    photos.mkdir(parents=True)
    for stem, data in image_bytes.items():
        (photos / f"{stem}.png").write_bytes(data)
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    batch = stack.prefect.get(f"{stack.prefect_api}/deployments/name/batch-predict/batch-predict", timeout=10).json()

    def run(parameters: dict) -> dict:
        created = stack.prefect.post(f"{stack.prefect_api}/deployments/{batch['id']}/create_flow_run",
                                     json={"parameters": parameters}, timeout=10)
        created.raise_for_status()
        return wait_for_flow_run(stack, created.json()["id"])

    started = time.monotonic()
    done = run({"task": stack.cfg.task_name, "input_path": "batch-photos", "output_path": "photos-1"})
    assert done["state_type"] == "COMPLETED", f"{done['state_name']}\n{stack.logs()}"
    rows = pd.read_parquet(Path(stack.cfg.paths.artifacts_dir) / "predictions" / "photos-1")
    assert len(rows) == len(image_bytes) + 1
    assert rows["error"].notna().sum() == 1 and rows[rows["error"].notna()]["path"].str.endswith("broken.png").all()
    assert (rows["model_name"] == stack.cfg.task_name).all() and rows["model_version"].nunique() == 1
    print(f"\nbatch-predict run from the API: {len(rows)} rows in {time.monotonic() - started:.0f} s")

    escaped = run({"task": stack.cfg.task_name, "input_path": "../../../../etc", "output_path": "../../escape"})
    assert escaped["state_type"] == "FAILED"
    assert not (Path(stack.cfg.paths.artifacts_dir) / "escape").exists()


def test_the_monitor_deployment_runs_on_its_schedule_and_reads_the_served_traffic(stack):
    """monitor beside the others, every 15 min: run once through the API after the first tests' requests, it
    reads the champion's traffic from the stack's traffic log and publishes its report."""
    monitor = stack.prefect.get(f"{stack.prefect_api}/deployments/name/monitor/monitor", timeout=10)
    assert monitor.status_code == 200, monitor.text
    assert [s["schedule"]["interval"] for s in monitor.json()["schedules"]] == [900.0]
    created = stack.prefect.post(f"{stack.prefect_api}/deployments/{monitor.json()['id']}/create_flow_run",
                                 json={"parameters": {"tasks": [stack.cfg.task_name], "min_requests": 1}},
                                 timeout=10)
    created.raise_for_status()
    run = wait_for_flow_run(stack, created.json()["id"])
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{stack.logs()}"
    logged = list((Path(stack.cfg.paths.artifacts_dir) / "traffic" / f"task={stack.cfg.task_name}").rglob("*.parquet"))
    assert logged, "the served app logged no traffic"
    report = stack.prefect.get(f"{stack.prefect_api}/artifacts/drift-{stack.cfg.task_name}/latest", timeout=10)
    assert report.status_code == 200 and report.json()["data"].startswith(f"# Drift of {stack.cfg.task_name} v")
    # the training deployment carries the trigger that retrains a task on the monitor's events
    training = stack.prefect.get(f"{stack.prefect_api}/deployments/name/{DEPLOYMENT}", timeout=10).json()
    automations = stack.prefect.get(f"{stack.prefect_api}/automations/related-to/prefect.deployment.{training['id']}",
                                    timeout=10)
    [trigger] = automations.json()
    assert trigger["trigger"]["expect"] and set(trigger["trigger"]["expect"]) == {
        "modelyard.drift.detected", "modelyard.feedback.ready", "modelyard.accuracy.dropped"}
    assert "event.id" in json.dumps(trigger["actions"][0]["parameters"]["cause"])


def test_the_prefect_api_refuses_a_caller_without_the_auth_string(stack):
    """The audit's way in (one create_flow_run call from anyone who reaches the port) is closed: without the
    string, or with another, every API call is 401 and no run is made; health probes stay open."""
    api = stack.prefect_api
    deployment = stack.prefect.get(f"{api}/deployments/name/{DEPLOYMENT}", timeout=10).json()
    count = stack.prefect.post(f"{api}/flow_runs/count", json={}, timeout=10).json()
    for auth in (None, ("modelyard", "not-the-string"), ("admin", "pass")):
        assert requests.get(f"{api}/deployments/name/{DEPLOYMENT}", auth=auth, timeout=10).status_code == 401
        create = requests.post(f"{api}/deployments/{deployment['id']}/create_flow_run", auth=auth, timeout=10,
                               json={"parameters": {"train": {"epochs": 1}}})
        assert create.status_code == 401, create.text
    assert stack.prefect.post(f"{api}/flow_runs/count", json={}, timeout=10).json() == count  # none was made
    assert requests.get(f"{api}/health", timeout=10).status_code == 200


def test_a_custom_run_made_in_the_prefect_ui_with_another_family_completes_with_the_form_values(stack):
    """The form as a person fills it: the `mlp` family picked from the model toggles (the prefilled family is
    `cnn`), its `Hidden` field changed, fewer epochs; the run trains that model with that field."""
    from playwright.sync_api import sync_playwright

    from helpers.prefect_ui import custom_run_from_ui

    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS_DIR / "prefect-custom-run-form.png"
    epochs = 1 if stack.cfg.train.epochs != 1 else 2  # not the prefilled value, and short
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            flow_run_id = custom_run_from_ui(page, f"http://127.0.0.1:{stack.ports['PREFECT_PORT']}", epochs,
                                             screenshot, family="mlp", family_fields={"Hidden": 64},
                                             auth_string=stack.prefect_auth)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000  # the filled form, for a person to look at
    run = wait_for_flow_run(stack, flow_run_id)
    assert run["state_type"] == "COMPLETED", f"{run['state_name']}\n{stack.logs()}"
    assert run["parameters"]["train"]["epochs"] == epochs
    assert run["parameters"]["model"] == {"name": "mlp", "hidden": 64, "depth": 2, "dropout": 0.2}
    assert run["deployment_id"]  # a run of the deployment, not an ad-hoc flow
    # What trained is what the form said: the MLP's saved spec, under its own task.
    mlp = TaskPaths.of(stack.cfg.with_overrides({"model": {"name": "mlp"}}))
    spec = json.loads((mlp.model_dir / "model.json").read_text())
    assert spec["family"] == "mlp" and spec["args"]["hidden"] == 64
    assert len(json.loads((mlp.train_dir / "history.json").read_text())) == epochs


def chromium() -> str:
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(candidate).is_file():
            return candidate
    raise AssertionError("Debian's chromium is not installed: run `make browser` (make test does)")


@pytest.mark.reliability
def test_two_runs_of_the_deployment_at_once_both_finish_each_with_its_own_outputs_and_mlflow_run(stack):
    from modelyard.runs import run_config

    """Two runs with different parameters (another cut of the data, other epochs and learning rate) started
    together: both complete, each in its own run directory with its own MLflow run, and the stable paths hold
    whichever published last, whole."""
    mlflow_api = f"http://127.0.0.1:{stack.ports['MLFLOW_PORT']}/api/2.0/mlflow"
    dump = stack.cfg.model_dump(mode="json", by_alias=True)
    wanted = {
        "short": {"data": dump["data"] | {"train_limit": 3000, "test_limit": 800}, "train": dump["train"] | {"epochs": 1}},
        "long": {"train": dump["train"] | {"epochs": 2, "learning_rate": 0.05}},
    }
    started = time.monotonic()
    ids = {name: run_deployment_as_the_ui_does(stack, params) for name, params in wanted.items()}
    runs = {name: wait_for_flow_run(stack, flow_run_id, timeout_s=900) for name, flow_run_id in ids.items()}
    took = ", ".join(f"{n} {r['total_run_time']:.0f} s" for n, r in runs.items())
    print(f"\ntwo deployment runs at once: both done in {time.monotonic() - started:.0f} s ({took})")
    assert all(r["state_type"] == "COMPLETED" for r in runs.values()), (
        {n: r["state_name"] for n, r in runs.items()}, stack.logs())
    short, long = runs["short"], runs["long"]
    assert short["start_time"] < long["end_time"] and long["start_time"] < short["end_time"]  # they overlapped

    root = TaskPaths.of(stack.cfg).runs_root
    run_dirs = {n: next(root.glob(f"*Z-{r['name']}")) for n, r in runs.items()}
    train_info = {}
    for name, run_dir in run_dirs.items():
        doc = json.loads((run_dir / "run.json").read_text())
        assert doc["status"] == "succeeded", doc
        in_run = TaskPaths.of(run_config(stack.cfg, run_dir))
        limits = (in_run.dataset_dir / "limits.txt").read_text()
        assert limits == ("train_limit=3000\ntest_limit=800\n" if name == "short" else "train_limit=4000\ntest_limit=1000\n")
        history = json.loads((in_run.train_dir / "history.json").read_text())
        assert len(history) == (1 if name == "short" else 2)
        assert (in_run.model_dir / "model.pt").is_file() and (in_run.register_dir / "report.md").is_file()
        train_info[name] = json.loads((in_run.train_dir / "train.json").read_text())
        run = requests.get(f"{mlflow_api}/runs/get", params={"run_id": train_info[name]["run_id"]},
                           timeout=10).json()["run"]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        assert params["data.train_limit"] == str(wanted[name].get("data", dump["data"])["train_limit"])
        assert params["train.epochs"] == str(wanted[name]["train"]["epochs"])
        assert tags["modelyard.outputs"] == str(in_run.task_dir.resolve())
        train_info[name]["dataset_md5"] = tags["dvc.md5.dataset"]  # the lineage of the data it trained on
    assert train_info["short"]["run_id"] != train_info["long"]["run_id"]
    assert train_info["short"]["dataset_md5"] != train_info["long"]["dataset_md5"]  # each read its own cut

    latest = (root / "latest").resolve()
    assert latest in {d.resolve() for d in run_dirs.values()}
    published = json.loads((TaskPaths.of(stack.cfg).train_dir / "train.json").read_text())
    assert published == json.loads((TaskPaths.of(run_config(stack.cfg, latest)).train_dir / "train.json").read_text())
    overlap = min(r["end_time"] for r in runs.values()), max(r["start_time"] for r in runs.values())
    own = "; ".join(f"{n}: {d.name}, MLflow run {train_info[n]['run_id'][:8]}" for n, d in run_dirs.items())
    print(f"overlapping from {overlap[1]} to {overlap[0]}; {own}; published last, at the stable paths: {latest.name}")
    stable_limits = (TaskPaths.of(stack.cfg).dataset_dir / "limits.txt").read_text()
    assert stable_limits == (TaskPaths.of(run_config(stack.cfg, latest)).dataset_dir / "limits.txt").read_text()


@pytest.mark.reliability
def test_a_restart_keeps_models_aliases_runs_deployments_and_history_and_serving_comes_back(stack, image_bytes):
    """`down` then `up` (what `make down; make up` run): the registry, MLflow runs, the Prefect deployment and
    its flow-run history are all still there, and the champion is served again with the same version."""
    api, mlflow_api = stack.prefect_api, f"http://127.0.0.1:{stack.ports['MLFLOW_PORT']}/api/2.0/mlflow"

    monitor = stack.prefect.get(f"{api}/deployments/name/monitor/monitor", timeout=10).json()["id"]

    def flow_runs() -> dict[str, str]:
        """Every flow run but the monitor's: its schedule makes new ones (and starts them) on its own."""
        runs = stack.prefect.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=10).json()
        return {r["id"]: r["state_type"] for r in runs if r["deployment_id"] != monitor}

    if "COMPLETED" not in flow_runs().values():  # run alone (`make reliability`): make the state to keep
        assert wait_for_flow_run(stack, run_deployment_as_the_ui_does(stack))["state_type"] == "COMPLETED"

    def state() -> dict:
        deployment = stack.prefect.get(f"{api}/deployments/name/{DEPLOYMENT}", timeout=10).json()
        models = requests.get(f"{mlflow_api}/registered-models/search", params={"max_results": 100}, timeout=10)
        experiment = requests.get(f"{mlflow_api}/experiments/get-by-name", params={"experiment_name": "stack-test"},
                                  timeout=10).json()["experiment"]
        runs = requests.post(f"{mlflow_api}/runs/search", json={"experiment_ids": [experiment["experiment_id"]],
                                                                 "max_results": 1000}, timeout=10).json()["runs"]
        return {
            "deployment": deployment["id"],
            "flow_runs": flow_runs(),
            "models": {m["name"]: sorted((a["alias"], a["version"]) for a in m.get("aliases", []))
                       for m in models.json()["registered_models"]},
            "mlflow_runs": {r["info"]["run_id"]: r["info"]["status"] for r in runs},
        }

    before = state()
    route = stack.cfg.serve.route(stack.cfg.task_name)
    champion = dict(before["models"][stack.cfg.task_name])["champion"]
    started = time.monotonic()
    down = stack.script("down", timeout=180)
    assert down.returncode == 0, down.stderr
    up = stack.script("up", timeout=600)
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}\n{stack.logs()}"
    after = state()
    answer = requests.post(f"{stack.serve_url}{route}/predict", timeout=30,
                           files={"file": ("shirt.png", image_bytes["shirt"], "image/png")})
    print(f"\nrestart (down + up, serving included) in {time.monotonic() - started:.0f} s: "
          f"{len(after['flow_runs'])} flow runs, {len(after['mlflow_runs'])} MLflow runs, models {after['models']}")
    assert after == before
    assert answer.status_code == 200 and answer.json()["model"]["version"] == champion
    assert "registered champion(s)" in up.stdout


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, command) of every TCP socket in LISTEN that one of `pids` holds, read from
    /proc/<pid>/fd (socket inodes) and /proc/net/tcp, tcp6."""
    import ipaddress

    owner: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word of the address in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            address = ipaddress.ip_address(packed)
            address = address.ipv4_mapped or address if address.version == 6 else address
            cmd = Path(f"/proc/{owner[inode]}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            found.append((str(address), int(hex_port, 16), owner[inode], cmd))
    return found


def test_nothing_of_the_stack_listens_beyond_loopback_but_what_the_readme_names(stack):
    """Every listening socket of the stack's processes: on 127.0.0.1, except Ray Serve's replicas'
    inter-deployment gRPC servers (Ray 2.60 binds them to [::]:0; they ask for the Ray token), which README's
    "What listens where" names. A new listener on another address fails here until it is named there."""
    import ipaddress

    readme = (REPO / "README.md").read_text()
    sockets = listening_sockets(set(stack_processes(stack)))
    assert len(sockets) >= 6, sockets  # Prefect, MLflow, Ray's GCS and dashboard, Serve's ingress, at least
    outside = [(a, p, cmd) for a, p, _, cmd in sockets if not ipaddress.ip_address(a).is_loopback]
    named = {"ray::ServeReplica": "inter-deployment gRPC server"}
    unnamed = [s for s in outside if not any(s[2].startswith(prefix) for prefix in named)]
    assert not unnamed, f"listening beyond loopback, not named in README's What listens where: {unnamed}"
    # HAProxy, the default ingress: Serve's port, its stats page and its Prometheus exporter, all on loopback
    # (Ray's template binds the last two to every interface; infra/haproxy-bound rebinds them)
    haproxy = {(a, p) for a, p, _, cmd in sockets if cmd.endswith("/haproxy")}
    assert {p for _, p in haproxy} >= {8404, 9101, stack.ports["SERVE_PORT"]}, haproxy
    assert all(ipaddress.ip_address(a).is_loopback for a, _ in haproxy), haproxy
    for what in named.values():
        assert what in readme
    print(f"\n{len(sockets)} listening sockets, {len(outside)} beyond loopback: "
          f"{sorted({cmd for _, _, cmd in outside})}")


def test_down_leaves_no_process_and_no_listener(stack):
    before = stack_processes(stack)
    assert before, "no stack process found before `down`"
    down = stack.script("down", timeout=180)
    assert down.returncode == 0, down.stderr
    time.sleep(1)
    left = {pid: cmd for pid, cmd in stack_processes(stack).items()} | {
        pid: cmd for pid, cmd in before.items() if alive(pid)}
    assert not left, f"still running after down: {left}"
    listening = [name for name, port in stack.ports.items() if listens(port)]
    assert not listening, f"still listening after down: {listening}"
    assert not list(stack.run_dir.glob("*.pid"))


def stack_processes(stack: Stack) -> dict[int, str]:
    """Every live process of this stack: the sessions `up` recorded, and any process naming its ports or dirs."""
    sessions = set()
    for pid_file in stack.run_dir.glob("*.pid"):
        try:
            sessions.add(os.getsid(int(pid_file.read_text())))
        except (ProcessLookupError, ValueError):
            pass
    needles = [str(stack.run_dir), f"127.0.0.1:{stack.ports['RAY_PORT']}", stack.env["MLFLOW_STORE_DIR"]]
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        pid = int(proc.name)
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            in_session = os.getsid(pid) in sessions
        except (OSError, ProcessLookupError):
            continue
        if alive(pid) and (in_session or any(n in cmd for n in needles)):
            found[pid] = cmd[:160]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status  # a zombie has exited; only its parent's bookkeeping remains


def listens(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
