"""`community-pulse grafana push` against a local emulation of the Grafana HTTP API.

No real Grafana runs here: the server below implements only the endpoints the push uses,
with Grafana's status codes and a few of its normalisations (ids, versions, Go durations).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devkit.devcerts import DevCerts
from sinks import grafana as push_mod

TOKEN = "s3cr3t-test-token"


class FakeGrafana:
    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.groups: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.status_override: int | None = None

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] != "GET"]

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        if self.status_override:
            return self.status_override, {"message": "permissions needed"}
        if m := re.fullmatch(r"/api/folders/([^/]+)", path):
            uid = m.group(1)
            if uid not in self.folders:
                return 404, {"message": "folder not found"}
            if method == "PUT":
                self.folders[uid]["title"] = body["title"]
            return 200, self.folders[uid]
        if path == "/api/folders" and method == "POST":
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "id": 7}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            stored = self.dashboards.get(m.group(1))
            return (200, stored) if stored else (404, {"message": "Dashboard not found"})
        if path == "/api/dashboards/db" and method == "POST":
            dash = dict(body["dashboard"])
            old = self.dashboards.get(dash["uid"])
            dash["id"] = 100 + len(self.dashboards)
            dash["version"] = old["dashboard"]["version"] + 1 if old else 1
            dash.setdefault("weekStart", "")  # Grafana adds fields of its own
            self.dashboards[dash["uid"]] = {
                "dashboard": dash, "meta": {"folderUid": body.get("folderUid"), "slug": "x"}}
            return 200, {"status": "success", "uid": dash["uid"], "version": dash["version"]}
        if path == "/api/v1/provisioning/alert-rules":
            if method == "GET":
                return 200, list(self.rules.values())
            return 201, self._store_rule(body)
        if m := re.fullmatch(r"/api/v1/provisioning/alert-rules/([^/]+)", path):
            if m.group(1) not in self.rules:
                return 404, {"message": "rule not found"}
            return 200, self._store_rule(body)
        if m := re.fullmatch(r"/api/v1/provisioning/folder/([^/]+)/rule-groups/([^/]+)", path):
            key = (m.group(1), m.group(2))
            if method == "PUT":
                self.groups[key] = body["interval"]
            rules = [r for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == key]
            return 200, {"title": key[1], "folderUid": key[0], "interval": self.groups[key],
                         "rules": rules}
        return 404, {"message": "not found"}

    def _store_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        rule = json.loads(json.dumps(body))
        secs = push_mod._seconds(rule["for"])
        rule["for"] = f"{int(secs // 60)}m{int(secs % 60)}s"  # Go duration, e.g. "30m0s"
        rule.update(id=len(self.rules) + 1, updated="2024-01-01T00:00:00Z", provenance="api")
        for d in rule["data"]:
            d["model"].setdefault("intervalMs", 1000)
        self.rules[rule["uid"]] = rule
        self.groups.setdefault((rule["folderUID"], rule["ruleGroup"]), 10)  # Grafana default
        return rule


def _serve(fake: FakeGrafana, tls: ssl.SSLContext | None = None
           ) -> Iterator[tuple[FakeGrafana, str]]:

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, payload = 401, {"message": "invalid API key"}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, payload = fake.handle(self.command, self.path.split("?")[0], body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    yield from _serve(FakeGrafana())


@pytest.fixture
def grafana_https(certs: DevCerts) -> Iterator[tuple[FakeGrafana, str]]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(certs.broker_keystore)  # a certificate for 127.0.0.1 from the test CA
    yield from _serve(FakeGrafana(), tls)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.delenv("GRAFANA_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = push_mod.main(["push", *argv])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "Traceback" not in out + err
    return code, out, err


def test_first_push_creates_second_changes_nothing(grafana, capsys) -> None:
    fake, url = grafana
    code, out, _ = run(capsys, "--url", url)
    assert code == 0, out
    assert set(fake.folders) == {"community-pulse"}
    assert set(fake.dashboards) == {"community-pulse-overview", "community-pulse-community",
                                    "community-pulse-pipeline"}
    assert all(d["meta"]["folderUid"] == "community-pulse" for d in fake.dashboards.values())
    assert {r["title"] for r in fake.rules.values()} >= {
        "CommunityStagnating", "CommunitySustainabilityDrop", "CommunityTierDowngrade",
        "CommunityUnansweredPosts", "PipelineEventTimeLagHigh", "PipelineDeadLetters",
        "PipelineSnapshotsStale", "PipelineSinkErrors"}
    assert fake.groups[("community-pulse", "community-pulse")] == 60
    created = 1 + len(fake.dashboards) + len(fake.rules)
    assert out.splitlines()[-1] == f"grafana push: {created} created, 1 updated, 0 unchanged"

    fake.requests.clear()
    code, out, _ = run(capsys, "--url", url)
    assert code == 0
    assert fake.writes() == []
    assert out.splitlines()[-1].startswith("grafana push: nothing changed")


def test_push_updates_only_what_changed(grafana, capsys, tmp_path: Path) -> None:
    fake, url = grafana
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert run(capsys, "--url", url, "--token-file", str(token_file))[0] == 0
    fake.dashboards["community-pulse-pipeline"]["dashboard"]["title"] = "edited in the UI"
    fake.rules["cp-community-stagnating"]["for"] = "5m0s"
    fake.requests.clear()
    code, out, _ = run(capsys, "--url", url, "--token-file", str(token_file))
    assert code == 0
    assert sorted(fake.writes()) == [
        ("POST", "/api/dashboards/db"),
        ("PUT", "/api/v1/provisioning/alert-rules/cp-community-stagnating")]
    assert out.splitlines()[-1].startswith("grafana push: 0 created, 2 updated")


def test_datasource_uid_is_rewritten(grafana, capsys) -> None:
    fake, url = grafana
    assert run(capsys, "--url", url, "--datasource-uid", "prom-main")[0] == 0
    uids = {d["datasourceUid"] for r in fake.rules.values() for d in r["data"]}
    assert uids == {"prom-main", "__expr__"}


def test_bad_token_is_one_line_error(grafana, capsys, monkeypatch) -> None:
    fake, url = grafana
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    code, out, err = run(capsys, "--url", url)
    assert code != 0
    assert err.count("\n") == 1 and "401" in err and "token" in err
    assert "wrong" not in out + err
    assert fake.writes() == []


def test_forbidden_is_one_line_error(grafana, capsys) -> None:
    fake, url = grafana
    fake.status_override = 403
    code, _, err = run(capsys, "--url", url)
    assert code != 0 and err.count("\n") == 1 and "403" in err


def test_connection_refused_is_one_line_error(capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "--url", f"http://127.0.0.1:{port}", "--timeout", "3")
    assert code != 0
    assert err.count("\n") == 1 and "connection refused" in err


def test_unknown_host_is_one_line_error(capsys) -> None:
    code, _, err = run(capsys, "--url", "http://grafana.invalid:3000", "--timeout", "3")
    assert code != 0
    assert err.count("\n") == 1 and "cannot reach Grafana" in err


def test_credentials_in_url_are_not_printed(capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "--url", f"http://admin:hunter2@127.0.0.1:{port}")
    assert code != 0 and "hunter2" not in err


def test_missing_url_and_token(capsys, monkeypatch, tmp_path: Path) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "GRAFANA_URL" in err
    monkeypatch.delenv("GRAFANA_TOKEN")
    code, _, err = run(capsys, "--url", "http://127.0.0.1:3000")
    assert code == 2 and "GRAFANA_TOKEN" in err
    code, _, err = run(capsys, "--url", "http://127.0.0.1:3000",
                       "--token-file", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("community-pulse: error: cannot read token file")
    code, _, err = run(capsys, "--url", "ftp://x")
    assert code == 2 and "http" in err


def test_unknown_subcommand(capsys) -> None:
    assert push_mod.main(["pull"]) == 2
    assert "unknown grafana command" in capsys.readouterr().err


def test_contains_ignores_extra_keys_but_not_changes() -> None:
    assert push_mod.contains({"a": 1, "b": [{"c": 2}]}, {"a": 1.0, "b": [{"c": 2, "d": 3}]})
    assert not push_mod.contains({"a": 1}, {"a": 2})
    assert not push_mod.contains({"b": [1]}, {"b": [1, 2]})


def test_push_over_https_with_a_ca_file(grafana_https, certs: DevCerts, capsys,
                                        monkeypatch) -> None:
    fake, url = grafana_https
    code, _, err = run(capsys, "--url", url, "--timeout", "5")
    assert code != 0 and err.count("\n") == 1 and "--ca-file" in err  # not trusted
    assert fake.requests == []
    code, out, _ = run(capsys, "--url", url, "--ca-file", str(certs.cafile))
    assert code == 0, out
    assert len(fake.dashboards) == 3
    monkeypatch.setenv("GRAFANA_CA_FILE", str(certs.cafile))
    code, out, _ = run(capsys, "--url", url)
    assert code == 0 and out.splitlines()[-1].startswith("grafana push: nothing changed")
