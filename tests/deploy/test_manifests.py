"""The rendered manifests say what ADR 0044 promises (make deploy-check validates and lints them too)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import REPO, load
from strongroom_platform.events import TOPIC_SPECS
from strongroom_platform.settings import env_bool
from strongroom_servers import PrerequisiteMissing
from strongroom_servers.gotools import KUSTOMIZE, ensure_go_binary

check = load("check")
kafka_topics = load("kafka_topics")

OVERLAYS = ("dev", "production")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    try:
        kustomize = ensure_go_binary(KUSTOMIZE)
    except PrerequisiteMissing as exc:
        pytest.skip(f"kustomize cannot be built here: {exc}")
    return {name: check.render(REPO / "deploy" / "overlays" / name, kustomize) for name in OVERLAYS}


def _of(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_generated_topic_files_are_up_to_date() -> None:
    assert kafka_topics.check_all() == [], "run `make deploy-topics`"


def test_topics_follow_the_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    registry = sorted(p.stem for p in (REPO / "proto" / "topics").glob("*.yaml"))
    for overlay, (partitions, replicas, isr) in {"dev": (1, 1, 1), "production": (12, 3, 2)}.items():
        topics = _of(rendered[overlay], "KafkaTopic")
        names = sorted(t["spec"]["topicName"] for t in topics)
        assert names == sorted([*registry, *(f"{t}.dlq" for t in registry)])
        for topic in topics:
            assert topic["metadata"]["namespace"] == "kafka"
            assert (topic["spec"]["partitions"], topic["spec"]["replicas"]) == (partitions, replicas)
            assert topic["spec"]["config"]["min.insync.replicas"] == isr


def test_production_services_create_topics_as_the_topic_manifests_say(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The services' own Kafka settings in production agree with the KafkaTopics (ADR 0061): the
    producer is idempotent (``acks=all`` always), and no ``STRONGROOM_KAFKA_PARTITIONS`` override, so
    a topic a service creates gets the registry's 12 partitions, 3 replicas, min ISR 2."""
    objects = rendered["production"]
    environ = {k: str(v) for cm in _of(objects, "ConfigMap") for k, v in (cm.get("data") or {}).items()}
    for deployment in _of(objects, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            environ |= {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    assert env_bool(environ, "STRONGROOM_KAFKA_IDEMPOTENT", False) is True
    assert "STRONGROOM_KAFKA_PARTITIONS" not in environ
    assert {(s.partitions, s.replication_factor, s.min_insync_replicas) for s in TOPIC_SPECS.values()} == {(12, 3, 2)}


def test_min_insync_above_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match="--min-insync"):
        kafka_topics.render(REPO / "proto" / "topics", partitions=1, replicas=1, min_insync=2, cluster="c")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_is_restricted_and_no_secret_is_shipped(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    (namespace,) = _of(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Secrets are referenced, never part of the kustomization: an apply never overwrites them.
    assert _of(objects, "Secret") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_gets_the_master_key_and_the_s3_identity(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for workload in [*_of(rendered[overlay], "Deployment"), *_of(rendered[overlay], "Job")]:
        refs = {
            ref.get("secretRef", ref.get("configMapRef", {}))["name"]
            for c in workload["spec"]["template"]["spec"]["containers"]
            for ref in c.get("envFrom", [])
        }
        gateway = workload["metadata"]["name"] == "strongroom-gateway"
        assert ("strongroom-master-key" in refs) is gateway, workload["metadata"]["name"]
        assert ("strongroom-s3-gateway" in refs) is gateway, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_pod_is_locked_down_and_probed(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployments = _of(rendered[overlay], "Deployment")
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        f"strongroom-{s}" for s in ("api", "billing", "catalog", "gateway", "restore", "scheduler")
    ]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        if deployment["metadata"]["name"] == "strongroom-api":  # the REST edge speaks HTTPS (ADR 0055)
            healthz = {"port": "https", "path": "/healthz", "scheme": "HTTPS"}
            assert container["readinessProbe"]["httpGet"] == container["startupProbe"]["httpGet"] == healthz
            assert container["livenessProbe"]["tcpSocket"] == {"port": "https"}
        else:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert container[probe]["grpc"] == {"port": 8086}, (deployment["metadata"]["name"], probe)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/strongroom", "/tmp"} <= mounts and container["workingDir"] == "/var/lib/strongroom"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9464"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_two_replicas_and_a_drain_keeps_one(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Two replicas of each service (the gateway's come from its HPA), and a PDB per service that
    keeps one serving; the periodic loops are safe with two replicas (ADR 0050, session 4)."""
    replicas = {d["metadata"]["name"]: d["spec"].get("replicas") for d in _of(rendered[overlay], "Deployment")}
    assert replicas.pop("strongroom-gateway") is None  # the HPA owns the gateway's count
    assert set(replicas.values()) == {2}, replicas
    budgets = {b["metadata"]["name"]: b["spec"] for b in _of(rendered[overlay], "PodDisruptionBudget")}
    assert sorted(budgets) == [
        f"strongroom-{s}" for s in ("api", "billing", "catalog", "gateway", "restore", "scheduler")
    ]
    for name, spec in budgets.items():
        if overlay == "dev" and name == "strongroom-gateway":  # dev autoscales the gateway from 1
            assert spec["maxUnavailable"] == 1
        else:
            assert spec["minAvailable"] == 1, name


def test_internal_listeners_admit_only_the_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    policies = {p["metadata"]["name"]: p for p in _of(rendered["production"], "NetworkPolicy")}
    deny = policies["strongroom-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for name, internal in {"gateway": 50074, "scheduler": 50061, "catalog": 50062}.items():
        rules = policies[f"strongroom-{name}-ingress"]["spec"]["ingress"]
        for rule in rules:
            if any(p["port"] == internal for p in rule["ports"]):
                assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "strongroom"}}}]
    gateway_open = [r for r in policies["strongroom-gateway-ingress"]["spec"]["ingress"] if "from" not in r]
    assert [sorted(p["port"] for p in r["ports"]) for r in gateway_open] == [[50054, 50064]]


def test_validation_catches_an_unknown_field_and_a_bad_topic(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(_of(rendered["dev"], "Deployment")[0])
    assert check.validate(deployment) is None
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {"port": 1}
    assert check.validate(deployment) is not None
    topic = copy.deepcopy(_of(rendered["dev"], "KafkaTopic")[0])
    assert check.validate(topic) is None
    topic["spec"]["partitions"] = 0
    assert "partitions" in (check.validate(topic) or "")


def test_every_kustomization_under_deploy_is_found() -> None:
    found = {str(p.relative_to(REPO)) for p in check.kustomizations()}
    expected = {str(p.parent.relative_to(REPO)) for p in Path(REPO / "deploy").rglob("kustomization.yaml")}
    assert found == expected and {"deploy/base", "deploy/overlays/dev", "deploy/overlays/production"} <= found


def test_the_rest_edge_is_reachable_from_the_ingress_only_and_reaches_only_the_services(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["production"]
    policies = {p["metadata"]["name"]: p["spec"] for p in _of(objects, "NetworkPolicy")}
    ingress = policies["strongroom-api-ingress"]["ingress"]
    sources = {
        r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]: r["ports"] for r in ingress
    }
    assert sources == {
        "ingress-nginx": [{"protocol": "TCP", "port": 8443}],
        "monitoring": [{"protocol": "TCP", "port": 9464}],
    }
    egress = policies["strongroom-api-egress"]["egress"]
    service_ports = sorted(
        r["ports"][0]["port"]
        for r in egress
        if "to" in r and "podSelector" in r["to"][0] and "namespaceSelector" not in r["to"][0]
    )
    assert service_ports == [50051, 50052, 50053, 50054, 50055]
    # the platform's wide egress policy leaves the edge out
    general = policies["strongroom-egress"]["podSelector"]
    assert {"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["api"]} in general["matchExpressions"]
    budgets = {b["metadata"]["name"]: b["spec"] for b in _of(objects, "PodDisruptionBudget")}
    assert budgets["strongroom-api"]["minAvailable"] == 1
    (deployment,) = [d for d in _of(objects, "Deployment") if d["metadata"]["name"] == "strongroom-api"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["strongroom-api"]
    secrets = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert secrets == ["strongroom-pg-api"]  # its own database role, no service's secret
