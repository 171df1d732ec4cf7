"""deploy/kubernetes against the code and docker-compose.yml: kinds and API versions,
selectors and pod labels, probes on routes the code serves, every env var a documented
setting, KEDA capped at EVENTS_PARTITIONS on the right group and topic, the compose
file's image and commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.worker.health import ROUTES as WORKER_ROUTES
from producers.gateway.app import ROUTE_TEMPLATES as GATEWAY_ROUTES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"

EXPECTED = {
    ("Namespace", "event-pipeline"): "v1",
    ("ConfigMap", "pipeline-config"): "v1",
    ("ConfigMap", "gateway-config"): "v1",
    ("Secret", "pipeline-secrets"): "v1",
    ("Job", "pipeline-migrate"): "batch/v1",
    ("Deployment", "pipeline-worker"): "apps/v1",
    ("PodDisruptionBudget", "pipeline-worker"): "policy/v1",
    ("ScaledObject", "pipeline-worker"): "keda.sh/v1alpha1",
    ("Deployment", "pipeline-gateway"): "apps/v1",
    ("Service", "pipeline-gateway"): "v1",
}


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in docs, f"{key} defined twice"
            docs[key] = doc
    return docs


DOCS = documents()
CONFIG = DOCS[("ConfigMap", "pipeline-config")]["data"]
GATEWAY_CONFIG = DOCS[("ConfigMap", "gateway-config")]["data"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = DOCS[(kind, name)]["spec"]["template"]
    return spec


def container(kind: str, name: str) -> dict[str, Any]:
    (only,) = pod(kind, name)["spec"]["containers"]
    c: dict[str, Any] = only
    return c


def documented_variables() -> set[str]:
    """Names in the README's configuration table and docs/gateway.md's."""
    names: set[str] = set()
    for path in (ROOT / "README.md", ROOT / "docs" / "gateway.md"):
        section = path.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
        for line in section.splitlines():
            if line.startswith("| `"):
                names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0]))
    return names


def test_every_manifest_parses_with_the_expected_kinds() -> None:
    assert {k: d["apiVersion"] for k, d in DOCS.items()} == EXPECTED
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    namespace = kustomization["namespace"]
    assert ("Namespace", namespace) in DOCS


@pytest.mark.parametrize("name", ["pipeline-worker", "pipeline-gateway"], ids=["worker", "gateway"])
def test_selectors_match_the_pod_labels(name: str) -> None:
    labels = pod("Deployment", name)["metadata"]["labels"]
    selector = DOCS[("Deployment", name)]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    others = [n for n in ("pipeline-worker", "pipeline-gateway") if n != name]
    for other in others:  # a selector picks its own pods only
        assert not selector.items() <= pod("Deployment", other)["metadata"]["labels"].items()


def test_the_budget_keda_and_the_service_point_at_their_pods() -> None:
    pdb = DOCS[("PodDisruptionBudget", "pipeline-worker")]["spec"]
    assert (
        pdb["selector"]["matchLabels"].items()
        <= pod("Deployment", "pipeline-worker")["metadata"]["labels"].items()
    )
    scaled = DOCS[("ScaledObject", "pipeline-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "pipeline-worker"
    service = DOCS[("Service", "pipeline-gateway")]["spec"]
    gateway_pod = pod("Deployment", "pipeline-gateway")
    assert service["selector"].items() <= gateway_pod["metadata"]["labels"].items()
    ports = {p["name"] for p in container("Deployment", "pipeline-gateway")["ports"]}
    assert {p["targetPort"] for p in service["ports"]} <= ports


def _port(c: dict[str, Any], ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == ref]
    return int(port)


def test_worker_probes_and_scraping_use_the_health_server_routes() -> None:
    c = container("Deployment", "pipeline-worker")
    port = int(CONFIG["WORKER_WEB_PORT"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in WORKER_ROUTES
        assert _port(c, c[probe]["httpGet"]["port"]) == port
    annotations = pod("Deployment", "pipeline-worker")["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in WORKER_ROUTES
    assert int(annotations["prometheus.io/port"]) == port
    assert CONFIG["WORKER_WEB_HOST"] == "0.0.0.0"  # reachable from the kubelet
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert CONFIG["WORKER_DATA_DIR"] in mounts  # writable with a read-only root


def test_gateway_probes_and_scraping_use_the_gateway_routes() -> None:
    c = container("Deployment", "pipeline-gateway")
    port = int(GATEWAY_CONFIG["GATEWAY_PORT"])
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] in GATEWAY_ROUTES
        assert _port(c, c[probe]["httpGet"]["port"]) == port
    annotations = pod("Deployment", "pipeline-gateway")["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/prometheus" in GATEWAY_ROUTES
    assert int(annotations["prometheus.io/port"]) == port
    assert GATEWAY_CONFIG["GATEWAY_HOST"] == "0.0.0.0"


def _env_names() -> dict[str, set[str]]:
    """Every variable name a manifest sets, by where it is set."""
    found: dict[str, set[str]] = {
        "pipeline-config": set(CONFIG),
        "gateway-config": set(GATEWAY_CONFIG),
        "pipeline-secrets": set(DOCS[("Secret", "pipeline-secrets")]["stringData"]),
    }
    for (kind, name), doc in DOCS.items():
        if kind in ("Deployment", "Job"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                found[f"{name} env"] = {e["name"] for e in c.get("env", [])}
                for source in c.get("envFrom", []):
                    ref = source.get("configMapRef") or source.get("secretRef")
                    assert ref["name"] in found, f"{name} reads {ref['name']}, defined nowhere"
                for e in c.get("env", []):
                    if "valueFrom" in e:
                        key = e["valueFrom"]["secretKeyRef"]
                        assert key["key"] in found[key["name"]], e
    return found


def test_every_variable_is_a_documented_setting() -> None:
    documented = documented_variables()
    assert {"DATABASE_URL", "WORKER_WEB_PORT", "GATEWAY_PORT", "API_KEYS"} <= documented
    for where, names in _env_names().items():
        unknown = names - documented
        assert not unknown, f"{where} sets {sorted(unknown)}: not in the configuration tables"


def test_keda_scales_the_group_on_its_topic_up_to_the_partition_count() -> None:
    scaled = DOCS[("ScaledObject", "pipeline-worker")]["spec"]
    assert scaled["maxReplicaCount"] == int(CONFIG["EVENTS_PARTITIONS"])
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == CONFIG["PIPELINE_APP_ID"]
    assert meta["topic"] == CONFIG["EVENTS_TOPIC"]
    assert meta["bootstrapServers"] == CONFIG["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert "replicas" not in DOCS[("Deployment", "pipeline-worker")]["spec"]  # KEDA owns it


def test_images_and_commands_are_the_compose_files() -> None:
    services = compose()["services"]
    image = services["worker"]["image"]
    pairs = {
        "worker": container("Deployment", "pipeline-worker"),
        "gateway": container("Deployment", "pipeline-gateway"),
        "migrate": container("Job", "pipeline-migrate"),
    }
    for service, c in pairs.items():
        assert services[service]["image"] == image
        assert c["image"] == image, service
        assert c["command"] == services[service]["command"], service
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]


def test_graceful_stops_get_their_time() -> None:
    worker = pod("Deployment", "pipeline-worker")["spec"]
    compose_grace = int(compose()["services"]["worker"]["stop_grace_period"].rstrip("s"))
    assert worker["terminationGracePeriodSeconds"] >= compose_grace
    gateway = pod("Deployment", "pipeline-gateway")["spec"]
    (c,) = gateway["containers"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(GATEWAY_CONFIG["GATEWAY_SHUTDOWN_GRACE_SECONDS"])
    assert gateway["terminationGracePeriodSeconds"] > pre_stop + grace
    job = DOCS[("Job", "pipeline-migrate")]["spec"]
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
