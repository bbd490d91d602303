"""The deployment files are valid before anyone deploys them: the Dockerfile passes hadolint, the
compose file its JSON schema, the Kubernetes manifests the Kubernetes API schemas (offline, strict: an
unknown or misspelt field fails) and the ScaledObject the KEDA CRD's fields; and they agree with each
other and with inferd (ports, probe paths, drain times, secret keys, settings names)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from inferd.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KEDA_SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "keda-scaledobject-v1alpha1.json"
KUBERNETES_VERSION = "1.30"
SETTINGS = {f"INFERD_{name.upper()}" for name in Settings.model_fields}


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' installs it")
    return path


# -- Dockerfile ---------------------------------------------------------------------------------------


def run_tool(name: str, *args: str) -> None:
    result = subprocess.run(
        [tool(name), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    run_tool("hadolint", "--failure-threshold", "info", "Dockerfile")


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_models_volume() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    runtime = text.split("\nFROM ")[-1]
    assert re.search(r"^USER\s+10001", runtime, flags=re.MULTILINE), "the runtime stage runs as uid 10001"
    assert "HEALTHCHECK" in runtime and "/livez" in runtime
    assert re.search(r'^VOLUME\s+\[.*"/models"', runtime, flags=re.MULTILINE)
    assert re.search(r'^ENTRYPOINT\s+\["inferd"\]', runtime, flags=re.MULTILINE)
    for name in re.findall(r"\b(INFERD_[A-Z_]+)=", runtime):
        assert name in SETTINGS or name == "INFERD_HEALTHCHECK_URL", f"{name} is not an inferd setting"
    # Everything the build copies is let through by .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text()
    for source in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+?)\s+\S+$", text, flags=re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
            assert f"!{path.rstrip('/')}" in ignore.replace("/\n", "\n"), f".dockerignore excludes {path}"


# -- compose ------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "deploy/compose.yaml")


def test_compose_services_fit_together() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert services["api"]["deploy"]["replicas"] >= 2
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["INFERD_STORE"].startswith("postgresql://"), name
        assert set(env) - {"INFERD_HEALTHCHECK_URL"} <= SETTINGS, name
    # The Redis service is what the API replicas share their tenant rate limits through.
    assert services["api"]["environment"]["INFERD_REDIS_URL"].startswith("redis://redis:")
    assert "redis" in services["api"]["depends_on"]
    worker = services["worker"]
    assert "--metrics-port" in worker["command"] and "0.0.0.0" in worker["command"]
    assert worker["environment"]["INFERD_HEALTHCHECK_URL"].endswith(":9100/livez")
    # compose waits at least the drain before killing: shutdown_grace_s plus uvicorn's 10 s.
    grace = float(services["api"]["environment"]["INFERD_SHUTDOWN_GRACE_S"])
    assert int(services["api"]["stop_grace_period"].rstrip("s")) >= grace + 10


# -- Kubernetes ---------------------------------------------------------------------------------------


def kustomize_build() -> list[dict[str, Any]]:
    """What `kustomize build deploy/kubernetes` renders: the listed resources with the image override.
    The base uses only `resources` and `images`, so this is the whole rendering (checked here)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images"}, set(kustomization)
    images = {image["name"]: image for image in kustomization.get("images", [])}
    documents: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            doc = copy.deepcopy(doc)
            for container in _containers(doc):
                image = images.get(container["image"])
                if image:
                    container["image"] = f"{image.get('newName', container['image'])}:{image['newTag']}"
            documents.append(doc)
    listed = {(K8S / r).resolve() for r in kustomization["resources"]}
    unlisted = {p.resolve() for p in K8S.glob("*.yaml")} - listed - {(K8S / "kustomization.yaml").resolve()}
    assert not unlisted, f"manifests not in kustomization.yaml: {unlisted}"
    return documents


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") != "Deployment":
        return []
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return containers


def by_kind_and_name() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in kustomize_build()}


def test_manifests_match_the_kubernetes_schemas() -> None:
    for doc in kustomize_build():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_scaled_object_matches_the_keda_crd_schema() -> None:
    schema = json.loads(KEDA_SCHEMA.read_text())
    scaled = by_kind_and_name()[("ScaledObject", "inferd-worker")]
    jsonschema.validate(scaled, schema)
    # The schema is strict enough to catch the classic mistakes.
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 40
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(scaled)
    broken["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_scaled_object_counts_the_queue_once_and_targets_the_workers() -> None:
    docs = by_kind_and_name()
    scaled = docs[("ScaledObject", "inferd-worker")]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "inferd-worker"
    assert ("Deployment", "inferd-worker") in docs
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    query = " ".join(trigger["metadata"]["query"].split())
    # Every process exports the same store-wide value: max per series first, never a bare sum.
    assert query == "sum(max by (model, version) (job_queue_depth))", query


def test_workloads_probe_drain_and_read_keys_from_the_secret() -> None:
    docs = by_kind_and_name()
    config = docs[("ConfigMap", "inferd-config")]["data"]
    assert set(config) <= SETTINGS, set(config) - SETTINGS
    grace = float(config["INFERD_SHUTDOWN_GRACE_S"])
    api = docs[("Deployment", "inferd-api")]
    worker = docs[("Deployment", "inferd-worker")]
    for deployment, port, args in ((api, 8000, ["serve", "--no-worker"]), (worker, 9100, ["worker"])):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"][: len(args)] == args
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port in ports.values()
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert ports[container["readinessProbe"]["httpGet"]["port"]] == port
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["INFERD_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "inferd", "key": "store"}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[config["INFERD_MODELS"]]["readOnly"] is True
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
    api_env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert api_env["INFERD_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "inferd", "key": "api-keys"}
    # Kubernetes kills after terminationGracePeriodSeconds: it must cover the drain (worker: the jobs'
    # grace; API: the preStop sleep plus uvicorn's grace + 10 s for requests in flight).
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace
    api_pod = api["spec"]["template"]["spec"]
    pre_stop = int(api_pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert api_pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 10
    service = docs[("Service", "inferd-api")]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()


def test_disruption_budgets_and_autoscalers_select_the_workloads() -> None:
    docs = by_kind_and_name()
    for name in ("inferd-api", "inferd-worker"):
        pdb = docs[("PodDisruptionBudget", name)]
        labels = docs[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs[("HorizontalPodAutoscaler", "inferd-api")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "inferd-api",
    }
    assert (
        hpa["spec"]["minReplicas"] >= docs[("PodDisruptionBudget", "inferd-api")]["spec"]["minAvailable"] + 1
    )
