"""`community-pulse grafana push`: push the folder, dashboards and alert rules to Grafana.

Reads grafana/dashboards/*.json and the Grafana-managed alert rules in
grafana/provisioning/alerting/community-pulse-rules.yml (both made by grafana/build.py) and
sends them through the Grafana HTTP API (grafana-client). Idempotent: each object is compared
with what Grafana already holds and only sent when it differs. The URL comes from
`--url`/GRAFANA_URL, the token from `--token-file` or GRAFANA_TOKEN; the token is never
printed. Errors are one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from grafana_client import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

FOLDER_UID = "community-pulse"
FOLDER_TITLE = "Community Pulse"
DEFAULT_DATASOURCE_UID = "community-pulse-prometheus"
RULES_FILE = Path("provisioning") / "alerting" / "community-pulse-rules.yml"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "grafana"
VOLATILE_DASHBOARD_KEYS = ("id", "version")

Json = dict[str, Any]


class PushError(Exception):
    """A failure reported to the user as one line."""


def _safe_url(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _seconds(duration: str | int | float | None) -> float:
    if duration is None or duration == "":
        return 0.0
    if isinstance(duration, int | float):
        return float(duration)
    return sum(float(n) * _UNIT_S[u] for n, u in _DURATION.findall(duration))


def contains(ours: Any, theirs: Any) -> bool:
    """True when everything in `ours` is in `theirs` (extra keys Grafana adds are ignored)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            k in theirs and contains(v, theirs[k]) for k, v in ours.items())
    if isinstance(ours, list):
        return (isinstance(theirs, list) and len(ours) == len(theirs)
                and all(contains(a, b) for a, b in zip(ours, theirs, strict=True)))
    if isinstance(ours, int | float) and isinstance(theirs, int | float):
        return float(ours) == float(theirs)
    return bool(ours == theirs)


def load_dashboards(base: Path) -> list[Json]:
    files = sorted((base / "dashboards").glob("*.json"))
    if not files:
        raise PushError(f"no dashboards found in {base / 'dashboards'}")
    out = []
    for f in files:
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PushError(f"cannot read dashboard {f}: {e}") from None
        out.append({k: v for k, v in d.items() if k not in VOLATILE_DASHBOARD_KEYS})
    return out


def load_rules(base: Path, datasource_uid: str) -> tuple[str, int, list[Json]]:
    """(group name, interval seconds, rules as provisioning-API payloads)."""
    try:
        import yaml
    except ImportError:
        raise PushError("PyYAML is needed to read the alert rules: pip install pyyaml") from None
    path = base / RULES_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        group = doc["groups"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise PushError(f"cannot read alert rules {path}: {e}") from None
    rules = []
    for rule in group["rules"]:
        payload = json.loads(json.dumps(rule).replace(DEFAULT_DATASOURCE_UID, datasource_uid))
        payload.update(folderUID=FOLDER_UID, ruleGroup=group["name"], orgID=1)
        rules.append(payload)
    return group["name"], int(_seconds(group.get("interval", "1m"))), rules


def _rule_unchanged(ours: Json, theirs: Json) -> bool:
    if _seconds(ours.get("for")) != _seconds(theirs.get("for")):
        return False
    return contains({k: v for k, v in ours.items() if k != "for"}, theirs)


class Pusher:
    def __init__(self, api: GrafanaApi, say: Callable[[str], None]) -> None:
        self.api = api
        self.say = say
        self.counts = {"created": 0, "updated": 0, "unchanged": 0}

    def _done(self, what: str, name: str, action: str) -> None:
        self.counts[action] += 1
        self.say(f"{action:9} {what} {name}")

    def folder(self) -> None:
        try:
            existing = self.api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as e:
            if e.status_code != 404:
                raise
            self.api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            return self._done("folder", FOLDER_TITLE, "created")
        if existing.get("title") == FOLDER_TITLE:
            return self._done("folder", FOLDER_TITLE, "unchanged")
        self.api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        self._done("folder", FOLDER_TITLE, "updated")

    def dashboard(self, dash: Json) -> None:
        action = "created"
        try:
            existing = self.api.dashboard.get_dashboard(dash["uid"])
        except GrafanaClientError as e:
            if e.status_code != 404:
                raise
        else:
            current = existing.get("dashboard", {})
            same_folder = existing.get("meta", {}).get("folderUid") == FOLDER_UID
            if same_folder and contains(dash, current):
                return self._done("dashboard", dash["title"], "unchanged")
            action = "updated"
        self.api.dashboard.update_dashboard({
            "dashboard": {**dash, "id": None}, "folderUid": FOLDER_UID, "overwrite": True,
            "message": "community-pulse grafana push"})
        self._done("dashboard", dash["title"], action)

    def rules(self, group: str, interval_s: int, rules: list[Json]) -> None:
        existing = {r.get("uid"): r for r in self.api.alertingprovisioning.get_alertrules_all()
                    or []}
        for rule in rules:
            theirs = existing.get(rule["uid"])
            if theirs is None:
                self.api.alertingprovisioning.create_alertrule(rule)
                self._done("alert rule", rule["title"], "created")
            elif _rule_unchanged(rule, theirs):
                self._done("alert rule", rule["title"], "unchanged")
            else:
                self.api.alertingprovisioning.update_alertrule(rule["uid"], rule)
                self._done("alert rule", rule["title"], "updated")
        current = self.api.alertingprovisioning.get_rule_group(FOLDER_UID, group)
        if _seconds(current.get("interval")) != interval_s:
            self.api.alertingprovisioning.update_rule_group(
                FOLDER_UID, group, {**current, "interval": interval_s})
            self._done("rule group", f"{group} interval", "updated")


def _describe(e: BaseException, url: str) -> str:
    where = _safe_url(url)
    if isinstance(e, GrafanaUnauthorizedError):
        return (f"Grafana at {where} rejected the token (HTTP 401): check GRAFANA_TOKEN or "
                "--token-file")
    if isinstance(e, GrafanaTimeoutError):
        return f"Grafana at {where} did not answer in time"
    if isinstance(e, GrafanaClientError) and e.status_code == 403:
        return (f"Grafana at {where} refused access (HTTP 403): the token needs the Editor or "
                "Admin role (dashboards, folders and alert rules)")
    text = str(e)
    if re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed", text):
        return (f"the https certificate of Grafana at {where} is not trusted: pass the CA "
                "that signed it with --ca-file (or GRAFANA_CA_FILE)")
    if isinstance(e, GrafanaException) and e.status_code:
        return f"Grafana at {where} answered HTTP {e.status_code}: {' '.join(text.split())[:200]}"
    if re.search(r"resolve|Name or service not known|getaddrinfo|nodename", text, re.I):
        return f"cannot reach Grafana at {where}: host name not found (DNS)"
    if "refused" in text.lower():
        return f"cannot reach Grafana at {where}: connection refused"
    return f"cannot reach Grafana at {where}: {type(e).__name__}"


ERROR = "community-pulse: error:"  # the prefix of every other command's one-line errors


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{ERROR} grafana push: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="community-pulse grafana push",
        description="Push the Community Pulse folder, dashboards and alert rules to Grafana.")
    p.add_argument("--url", default=os.environ.get("GRAFANA_URL"),
                   help="Grafana base URL (default: $GRAFANA_URL)")
    p.add_argument("--token-file", type=Path,
                   help="file holding the API/service-account token (default: $GRAFANA_TOKEN)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help="the repository's grafana/ folder (default: %(default)s)")
    p.add_argument("--datasource-uid", default=DEFAULT_DATASOURCE_UID,
                   help="uid of the Prometheus datasource in Grafana, used by the alert rules")
    p.add_argument("--ca-file", type=Path, default=os.environ.get("GRAFANA_CA_FILE") or None,
                   help="CA certificate(s) (PEM) that sign Grafana's https certificate "
                        "(default: $GRAFANA_CA_FILE, else the system's CAs)")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    return p


def push(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line error
        return int(e.code or 0)
    try:
        if not args.url:
            raise PushError("no Grafana URL: set GRAFANA_URL or pass --url")
        if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).hostname:
            raise PushError(f"not an http(s) URL: {_safe_url(args.url)}")
        if args.token_file:
            try:
                token = args.token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise PushError(f"cannot read token file {args.token_file}: "
                                f"{e.strerror or e}") from None
        else:
            token = os.environ.get("GRAFANA_TOKEN", "").strip()
        if not token and not urlsplit(args.url).password:
            raise PushError("no Grafana token: set GRAFANA_TOKEN or pass --token-file")
        if args.ca_file and not Path(args.ca_file).is_file():
            raise PushError(f"cannot read CA file {args.ca_file}")
        dashboards = load_dashboards(args.dir)
        group, interval_s, rules = load_rules(args.dir, args.datasource_uid)
    except PushError as e:
        print(f"{ERROR} {e}", file=sys.stderr)
        return 2

    api = GrafanaApi.from_url(args.url, credential=token or None, timeout=args.timeout)
    if args.ca_file:
        api.client.verify = str(args.ca_file)  # requests-style: a CA bundle path
    pusher = Pusher(api, print)
    try:
        pusher.folder()
        for dash in dashboards:
            pusher.dashboard(dash)
        pusher.rules(group, interval_s, rules)
    except (GrafanaException, OSError) as e:
        print(f"{ERROR} {_describe(e, args.url)}", file=sys.stderr)
        return 1
    c = pusher.counts
    if c["created"] or c["updated"]:
        print(f"grafana push: {c['created']} created, {c['updated']} updated, "
              f"{c['unchanged']} unchanged")
    else:
        print(f"grafana push: nothing changed, all {c['unchanged']} objects already up to date")
    return 0


def main(argv: list[str]) -> int:
    """Entry point of `community-pulse grafana ...`; argv excludes the word `grafana`."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: community-pulse grafana push [--url URL] [--token-file FILE] [--dir DIR]"
              " [--datasource-uid UID] [--ca-file PEM]")
        return 0 if argv else 2
    if argv[0] != "push":
        print(f"{ERROR} unknown grafana command {argv[0]!r} (expected: push)", file=sys.stderr)
        return 2
    return push(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
