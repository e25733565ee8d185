"""infra/kuberay/rayservice.yaml, checked with the schemas that can be had offline.

- `serveConfigV2` with Ray's own `ServeDeploySchema` (what the Serve controller validates it with), and each
  application's builder and args with Serve's own builder call, against the code in this checkout.
- The head and worker pod templates with Kubernetes' PodTemplate schema (kubernetes-validate, strict).
- The RayService itself with KubeRay's CRD schema only when `$KUBERAY_CRD` names the CRD file of the
  operator you install (`ray.io_rayservices.yaml`): that schema is published on GitHub, not on a package
  registry this project's CI can reach.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from helpers.paths import REPO
from modelyard.config import ServeConfig
from modelyard.recipes import RECIPE_NAMES

MANIFEST = REPO / "infra" / "kuberay" / "rayservice.yaml"
JOB = REPO / "infra" / "kuberay" / "rayjob.yaml"
POLICY = REPO / "infra" / "kuberay" / "networkpolicy.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(manifest):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))


def _cluster(manifest: dict) -> dict:
    return manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]


def _pod_templates(manifest: dict) -> list[tuple[str, dict]]:
    cluster = _cluster(manifest)
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    return [(name, group["template"]) for name, group in groups]


def test_the_serve_config_passes_rays_schema_with_one_app_per_task_and_the_index(serve_config):
    apps = {app.name: app for app in serve_config.applications}
    assert apps["index"].route_prefix == "/"
    tasks = [name for name in apps if name != "index"]
    assert len(tasks) >= 3
    for name in tasks:
        # the same route `deploy` gives the task locally, so clients and the index agree everywhere
        assert apps[name].route_prefix == ServeConfig().route(name)
        assert apps[name].args["model_name"] == name
    listed = apps["index"].args["apps"]
    assert [(a["task"], a["route"]) for a in listed] == [(t, apps[t].route_prefix) for t in tasks]


def test_every_task_is_one_a_recipe_registers(serve_config):
    """Registered names are <dataset>-<family> (fashion-mnist-transfer, rt-polarity-bert): an application
    named otherwise would wait for a champion no run ever registers."""
    from modelyard.config import load_config

    names = {load_config(REPO / "params.yaml", {"recipe": r}).task_name for r in RECIPE_NAMES}
    served = {app.name for app in serve_config.applications} - {"index"}
    assert served <= names, f"not a model any recipe registers: {served - names}"
    assert {"fashion-mnist-cnn", "fashion-mnist-transfer", "rt-polarity-bert"} <= served  # images and texts


def test_each_application_builds_from_its_args_with_serves_own_builder_call(serve_config, monkeypatch):
    """The builders are called as the controller calls them; only the registry lookup is skipped (no MLflow
    here), so the bound replica options are the ones the manifest's args give."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.utils import import_attr

    import serving.deploy as deploy
    from modelyard.registry import versions
    from serving.app import ModelServer
    from serving.index import Index

    class Champion:
        version = "7"

    asked = []

    def get_version(uri, name, alias):
        asked.append((name, alias))
        return Champion()

    monkeypatch.setattr(versions, "get_version", get_version)
    for app in serve_config.applications:
        builder = import_attr(app.import_path)
        built = call_user_app_builder_with_args_if_necessary(builder, app.args)
        deployment = built._bound_deployment
        if app.name == "index":
            assert deployment.name == Index.name == "Index"
            assert deployment._deployment_config.user_config["apps"] == app.args["apps"]
            continue
        assert deployment.name == ModelServer.name == "ModelServer"
        settings = deployment.init_args[0]
        assert settings.model_name == app.name and (app.name, "champion") in asked
        assert settings.serve.backend == app.args["serve"]["backend"]
        assert settings.serve.max_batch_size == app.args["serve"]["max_batch_size"]
        assert settings.threads == app.args["serve"]["replica_threads"]
        assert deployment._deployment_config.user_config["model_version"] == "7"
        overridden = {d.name for d in app.deployments}
        assert overridden == {deployment.name}, "a `deployments` entry names no deployment of the app"
    with pytest.raises(ValueError, match="model_nam"):
        call_user_app_builder_with_args_if_necessary(deploy.task_app, {"model_nam": "typo"})
    with pytest.raises(ValueError, match="tasks"):
        call_user_app_builder_with_args_if_necessary(deploy.index_app, {"tasks": []})
    monkeypatch.setattr(versions, "get_version", lambda uri, name, alias: None)  # nothing promoted yet
    with pytest.raises(LookupError, match="no 'champion' version of 'fashion-mnist-cnn'"):
        call_user_app_builder_with_args_if_necessary(deploy.task_app, {"model_name": "fashion-mnist-cnn"})


def test_autoscaling_and_the_haproxy_ingress_are_set_on_every_node(manifest, serve_config):
    for app in serve_config.applications:
        for d in app.deployments:
            scaling = d.autoscaling_config
            assert scaling and 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, template in _pod_templates(manifest):
        env = {e["name"]: e.get("value") for c in template["spec"]["containers"] for e in c.get("env", [])}
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", name
        assert env.get("RAY_USAGE_STATS_ENABLED") == "0" and env.get("ORT_DISABLE_TELEMETRY") == "1", name
        assert "MLFLOW_TRACKING_URI" in env, name


def test_the_pod_templates_pass_the_kubernetes_schema(manifest):
    import kubernetes_validate

    job = yaml.safe_load(JOB.read_text())
    for name, template in _pod_templates(manifest) + _pod_templates(job):
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                        "template": template}
        kubernetes_validate.validate(pod_template, "1.30.0", strict=True)
    broken = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
              "template": {"spec": {"containers": [{"name": "x", "image": "i",
                                                    "ports": [{"containerPort": "8000"}]}]}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


@pytest.mark.skipif(not os.environ.get("KUBERAY_CRD"),
                    reason="set KUBERAY_CRD to the operator's ray.io_rayservices.yaml")
def test_the_rayservice_passes_the_kuberay_crd_schema(manifest):
    import jsonschema

    crd = yaml.safe_load(Path(os.environ["KUBERAY_CRD"]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == manifest["apiVersion"].split("/")[1])
    jsonschema.validate(manifest, version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("path", [MANIFEST, JOB], ids=["rayservice", "rayjob"])
def test_the_ray_token_comes_from_a_required_secret_and_no_pod_runs_as_root(path):
    doc = yaml.safe_load(path.read_text())
    assert _cluster(doc)["authOptions"] == {"mode": "token", "secretName": "modelyard-ray-token"}
    for name, template in _pod_templates(doc):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            for env in container.get("env", []):  # a secret that is there or the pod does not start
                assert not env.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"), (name, env["name"])
    assert "USER 1000:1000" in (REPO / "infra" / "kuberay" / "Dockerfile").read_text()


def test_the_serving_token_is_required_by_the_rayservice(manifest):
    for _, template in _pod_templates(manifest):
        env = {e["name"]: e for c in template["spec"]["containers"] for e in c.get("env", [])}
        assert env["MODELYARD_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "modelyard", "key": "serve-token"}


def test_the_network_policy_passes_the_kubernetes_schema_and_opens_only_the_serve_port_to_all():
    import kubernetes_validate

    policy = yaml.safe_load(POLICY.read_text())
    kubernetes_validate.validate(policy, "1.30.0", strict=True)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "modelyard"}
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [p["port"] for rule in open_to_all for p in rule["ports"]] == [8000]
    for path in (MANIFEST, JOB):  # every pod the policy is meant for carries its label
        for name, template in _pod_templates(yaml.safe_load(path.read_text())):
            assert template["metadata"]["labels"]["app.kubernetes.io/name"] == "modelyard", (path.name, name)


def test_the_rayjob_runs_a_pipeline_the_cli_accepts():
    """The entrypoint is `modelyard pipeline` with a recipe and -S settings that the config accepts."""
    import shlex

    from modelyard.config import load_config

    job = yaml.safe_load(JOB.read_text())
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["modelyard", "pipeline"] and words[2] == "--recipe"
    sets = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-S")
    overrides: dict = {"recipe": words[3]}
    for key, value in sets.items():
        section, field = key.split(".", 1)
        overrides.setdefault(section, {})[field] = yaml.safe_load(value)
    cfg = load_config(REPO / "params.yaml", overrides)
    assert cfg.train.num_workers == 4 and cfg.train.storage.startswith("s3://")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
