"""/metrics: listen address, TLS (prometheus_client's own TLS context) and basic auth, and
a real Prometheus scraping it with the shipped deploy/prometheus/prometheus-tls.yml."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.devcerts import DevCerts
from devkit.devkafka import free_port
from sinks import prometheus
from sinks.prometheus import MetricsAccess, WorkerMetrics
from streams.config import ConfigError, RuntimeConfig
from streams.pipeline import TopicStats
from tests.workers import wait_for

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "scrape-password-for-tests"


@pytest.fixture
def secured_metrics(certs: DevCerts, tmp_path: Path) -> Iterator[tuple[int, DevCerts]]:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    runtime = RuntimeConfig(metrics_tls_certfile=str(certs.broker_keystore),
                            metrics_tls_keyfile=str(certs.broker_keystore),
                            metrics_basic_auth_user="prometheus",
                            metrics_basic_auth_password_file=tmp_path / "password")
    port = free_port()
    metrics = WorkerMetrics({"community.posts": TopicStats(consumed=42)}, 5)
    server = metrics.serve(port, "127.0.0.1", MetricsAccess.from_runtime(runtime))
    yield port, certs
    server.shutdown()
    server.server_close()


def _get(url: str, cafile: Path | None = None, user: str = "", password: str = "",
         timeout: float = 5) -> int:
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_tls_and_basic_auth_guard_metrics(secured_metrics: tuple[int, DevCerts]) -> None:
    port, certs = secured_metrics
    url = f"https://127.0.0.1:{port}/metrics"
    assert _get(url, certs.cafile, "prometheus", PASSWORD) == 200
    assert _get(url, certs.cafile) == 401
    assert _get(url, certs.cafile, "prometheus", "wrong") == 401
    with pytest.raises(urllib.error.URLError):  # not trusted without the CA
        _get(url)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain http
        _get(f"http://127.0.0.1:{port}/metrics")
    # The probes' path answers without auth (a yes/no, no data), over TLS too.
    assert _get(f"https://127.0.0.1:{port}/healthz", certs.cafile) == 200


def _secured_server(certs: DevCerts) -> tuple[int, Any]:
    runtime = RuntimeConfig(metrics_tls_certfile=str(certs.broker_keystore),
                            metrics_tls_keyfile=str(certs.broker_keystore))
    port = free_port()
    metrics = WorkerMetrics({"community.posts": TopicStats(consumed=42)}, 5)
    return port, metrics.serve(port, "127.0.0.1", MetricsAccess.from_runtime(runtime))


def _still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed this connection (no EOF waiting on it)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def test_an_idle_connection_does_not_hold_up_scrapes_over_tls(
        certs: DevCerts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS handshake used to run in the accept loop: a client that connected and sent
    nothing stalled /metrics and /healthz until it went away (liveness probes failed)."""
    monkeypatch.setattr(prometheus, "REQUEST_TIMEOUT_S", 300.0)  # the idle one stays
    port, server = _secured_server(certs)
    try:
        with socket.create_connection(("127.0.0.1", port)) as idle:
            for path in ("/metrics", "/healthz", "/metrics"):
                assert _get(f"https://127.0.0.1:{port}{path}", certs.cafile, timeout=60) == 200
            assert _still_open(idle)  # the scrapes did not wait for it to go
    finally:
        server.shutdown()
        server.server_close()


def test_a_connection_that_sends_nothing_is_dropped(
        certs: DevCerts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus, "REQUEST_TIMEOUT_S", 0.5)
    port, server = _secured_server(certs)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as idle:
            assert idle.recv(1) == b""  # closed by the server (else recv times out: fails)
        tls = ssl.create_default_context(cafile=str(certs.cafile))
        with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
                tls.wrap_socket(raw, server_hostname="127.0.0.1") as quiet:
            assert quiet.recv(1) == b""  # after the handshake, no request: closed too
    finally:
        server.shutdown()
        server.server_close()


def test_listen_address_defaults_to_loopback() -> None:
    metrics = WorkerMetrics({}, 5)
    loopback = metrics.serve(free_port(), RuntimeConfig().metrics_host)
    anywhere = metrics.serve(free_port(), "0.0.0.0")
    try:
        assert loopback.server_address[0] == "127.0.0.1"
        assert anywhere.server_address[0] == "0.0.0.0"
    finally:
        for server in (loopback, anywhere):
            server.shutdown()
            server.server_close()


def test_half_configured_access_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULSE_METRICS_BASIC_AUTH_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="metrics_tls_keyfile"):
        MetricsAccess.from_runtime(RuntimeConfig(metrics_tls_certfile="/x.pem"))
    with pytest.raises(ConfigError, match="PULSE_METRICS_BASIC_AUTH_PASSWORD"):
        MetricsAccess.from_runtime(RuntimeConfig(metrics_basic_auth_user="prometheus"))
    monkeypatch.setenv("PULSE_METRICS_BASIC_AUTH_PASSWORD", PASSWORD)
    access = MetricsAccess.from_runtime(RuntimeConfig(metrics_basic_auth_user="prometheus"))
    assert access.allows("Basic " + base64.b64encode(b"prometheus:" + PASSWORD.encode()).decode())
    assert PASSWORD not in repr(access)


def test_real_prometheus_scrapes_with_the_shipped_tls_config(
        secured_metrics: tuple[int, DevCerts], tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not on PATH (make setup installs it)"
    port, certs = secured_metrics
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus-tls.yml").read_text())
    config["rule_files"] = []
    job = config["scrape_configs"][0]
    job["scrape_interval"] = "1s"
    (tmp_path / "secrets").mkdir()
    shutil.copy(certs.cafile, tmp_path / job["tls_config"]["ca_file"])
    (tmp_path / job["basic_auth"]["password_file"]).write_text(PASSWORD + "\n")
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "local.yml").write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{port}"]}]))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        prometheus = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        def consumed() -> list | None:
            query = "community_pulse_events_consumed_total"
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)["data"]["result"] or None

        result = wait_for(consumed, 60, "Prometheus to scrape /metrics over TLS")
        assert result[0]["value"][1] == "42"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def test_container_images_listen_on_all_interfaces() -> None:
    dockerfile = (REPO / "deploy/compose/Dockerfile").read_text()
    assert "PULSE_METRICS_HOST=0.0.0.0" in dockerfile
    with socket.socket() as probe:  # (the default stays loopback outside containers)
        probe.bind((RuntimeConfig().metrics_host, 0))
