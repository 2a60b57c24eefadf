"""docker compose and Kubernetes files: structure only (no Docker engine or cluster here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_DIR = REPO / "deploy" / "compose"
K8S_DIR = REPO / "deploy" / "k8s"
WORKER_ENV = {"PULSE_BROKER": "kafka://kafka:9092", "PULSE_DATA_DIR": "/data"}
API_VERSIONS = {
    "Namespace": "v1", "ConfigMap": "v1", "Service": "v1", "StatefulSet": "apps/v1",
    "Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1", "PersistentVolumeClaim": "v1",
    "PodMonitor": "monitoring.coreos.com/v1", "ServiceMonitor": "monitoring.coreos.com/v1",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "worker-1", "worker-2", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("zookeeper" in s for s in services)
    host_ports = []
    for name in ("worker-1", "worker-2"):
        w = services[name]
        assert w["command"] == ["community-pulse", "worker"]
        assert {k: w["environment"][k] for k in WORKER_ENV} == WORKER_ENV
        assert any(str(p).endswith(":9464") for p in w["ports"])
        host_ports += [str(p).split(":")[0] for p in w["ports"]]
        assert any(v.endswith(":/data") for v in w["volumes"])
    assert len(host_ports) == len(set(host_ports))
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3000:3000" in services["grafana"]["ports"]
    dockerfile = COMPOSE_DIR / services["worker-1"]["build"]["dockerfile"].split("/")[-1]
    assert dockerfile.exists()
    assert (COMPOSE_DIR / services["worker-1"]["build"]["context"]).resolve() == REPO


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path for the bind mounts (relative to deploy/compose)."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = (COMPOSE_DIR / host).resolve()
    return out


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    prom = _bind_mounts(compose["services"]["prometheus"])
    graf = _bind_mounts(compose["services"]["grafana"])
    for path in (*prom.values(), *graf.values()):
        assert path.exists(), path
    assert prom["/etc/prometheus/prometheus.yml"] == REPO / "deploy/prometheus/prometheus.yml"
    assert prom["/etc/prometheus/rules"] == REPO / "deploy/prometheus/rules"
    assert graf["/etc/grafana/provisioning"] == REPO / "grafana/provisioning"
    assert graf["/var/lib/grafana/dashboards/community-pulse"] == REPO / "grafana/dashboards"


def test_compose_prometheus_finds_rules_and_workers(compose: dict[str, Any]) -> None:
    cfg = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text(encoding="utf-8"))
    prom = _bind_mounts(compose["services"]["prometheus"])
    for rule_file in cfg["rule_files"]:
        container = f"/etc/prometheus/{rule_file}"
        host = next(h for c, h in prom.items() if container.startswith(c))
        assert (host / Path(container).relative_to(next(
            c for c in prom if container.startswith(c)))).exists() or host.is_file()
    sd_glob = cfg["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    targets_mount = next(c for c in prom if c.startswith("/etc/prometheus/targets/"))
    assert Path(targets_mount).match(f"/etc/prometheus/{sd_glob}")
    targets = yaml.safe_load(prom[targets_mount].read_text(encoding="utf-8"))[0]["targets"]
    workers = [s for s in compose["services"] if s.startswith("worker-")]
    assert sorted(targets) == sorted(f"{w}:9464" for w in workers)


def test_grafana_provisioning_paths_match_compose(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(
        (REPO / "grafana/provisioning/dashboards/community-pulse.yml").read_text("utf-8"))
    graf = _bind_mounts(compose["services"]["grafana"])
    assert provider["providers"][0]["options"]["path"] in graf
    ds = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/prometheus.yml").read_text("utf-8"))
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# ------------------------------------------------------------------------------ k8s


def _k8s() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _k8s() if d["kind"] == kind]
    return doc


def test_k8s_kinds_and_api_versions() -> None:
    docs = _k8s()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Service", "PodDisruptionBudget"} <= kinds
    assert kinds & {"StatefulSet", "Deployment"} and kinds & {"PodMonitor", "ServiceMonitor"}
    for d in docs:
        assert d["apiVersion"] == API_VERSIONS[d["kind"]], d["kind"]
        name = d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == _one("Namespace")["metadata"]["name"]


def test_k8s_workers_share_one_data_dir() -> None:
    """Closing files are per partition and the network view reads every worker's sketches,
    so the workers of a group write one history: a ReadWriteMany claim, not one per pod."""
    workload = next(d for d in _k8s() if d["kind"] in ("StatefulSet", "Deployment"))
    assert "volumeClaimTemplates" not in workload["spec"]
    (volume,) = workload["spec"]["template"]["spec"]["volumes"]
    claim = _one("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert kust["namespace"] == _one("Namespace")["metadata"]["name"]


def test_k8s_selectors_and_ports_agree() -> None:
    workload = next(d for d in _k8s() if d["kind"] in ("StatefulSet", "Deployment"))
    spec = workload["spec"]
    selector = spec["selector"]["matchLabels"]
    pod = spec["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["community-pulse", "worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9464
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9464"

    cm = _one("ConfigMap")
    assert {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e} == {
        cm["metadata"]["name"]}
    assert {k: cm["data"][k] for k in WORKER_ENV} == WORKER_ENV
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == cm["data"]["PULSE_DATA_DIR"]
    if workload["kind"] == "StatefulSet":
        assert spec["serviceName"] == _one("Service")["metadata"]["name"]
        assert "data" in {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert spec["replicas"] >= 2

    svc = _one("Service")["spec"]
    assert svc["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["targetPort"] for p in svc["ports"]}["metrics"] in ("metrics", 9464)

    pdb = _one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb.get("minAvailable", 0) < spec["replicas"]

    monitor = next(d for d in _k8s() if d["kind"] in ("PodMonitor", "ServiceMonitor"))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        pod["metadata"]["labels"].items())
    endpoints = monitor["spec"].get("podMetricsEndpoints") or monitor["spec"]["endpoints"]
    assert endpoints[0]["port"] == "metrics" and endpoints[0]["interval"] == "15s"
    relabel = endpoints[0]["relabelings"][0]
    assert (relabel["targetLabel"], relabel["replacement"]) == ("job", "community-pulse")


def test_probes_call_the_path_that_needs_no_auth() -> None:
    """With basic auth on, a probe of /metrics gets 401 and the pod never turns ready; the
    server answers OPEN_PATHS without auth (tests/test_metrics_access.py, over TLS too)."""
    from sinks.prometheus import OPEN_PATHS

    workload = next(d for d in _k8s() if d["kind"] in ("StatefulSet", "Deployment"))
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in OPEN_PATHS and get["port"] == "metrics", probe
        assert get["scheme"] in ("HTTP", "HTTPS")
    compose = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("worker-1", "worker-2"):
        check = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert any(f":9464{path}'" in check for path in OPEN_PATHS), check


def test_the_secrets_list_names_every_secret_the_product_reads() -> None:
    """Secrets come from the optional Secret `community-pulse-worker`, never the ConfigMap;
    the ConfigMap's header lists them all (the sketch key was missing)."""
    from sinks.prometheus import PASSWORD_ENV as METRICS_PASSWORD_ENV
    from streams.kafka_auth import KEY_PASSWORD_ENV, PASSWORD_ENV
    from streams.privacy import KEY_ENV, SKETCH_KEY_ENV

    secrets = {METRICS_PASSWORD_ENV, KEY_PASSWORD_ENV, PASSWORD_ENV, KEY_ENV, SKETCH_KEY_ENV}
    text = (K8S_DIR / "configmap.yaml").read_text(encoding="utf-8")
    header = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert {name for name in secrets if name in header} == secrets
    assert not secrets & set(_one("ConfigMap")["data"])
    workload = next(d for d in _k8s() if d["kind"] in ("StatefulSet", "Deployment"))
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    (secret,) = [e["secretRef"] for e in container["envFrom"] if "secretRef" in e]
    assert secret["name"] == "community-pulse-worker" and secret["optional"] is True
