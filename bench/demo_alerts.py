"""How many communities each alert matches on the demo, with a real Prometheus.

    .venv/bin/python bench/demo_alerts.py [SECONDS]   # default 180

Runs `community-pulse demo` and a Prometheus (Debian package) that scrapes it every 5 s
with the project's recording and alert rules, then prints, per alert, how many
communities (or series) are pending or firing, out of the communities exported. Alerts
with a `for:` of hours are only pending after minutes; pending is what would fire.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devkit.devkafka import free_port  # noqa: E402

# The rules before issue 13, evaluated side by side.
FORMER = {
    "CommunityUnansweredPosts (any unanswered post)":
        "min by (community) (community_pulse_unanswered_posts) > 0",
    "CommunityStagnating (no size floor)":
        "max by (community) (community_pulse_stagnating) > 0",
}


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        return list(json.load(response)["data"]["result"])


def main(seconds: float) -> int:
    work = Path(tempfile.mkdtemp(prefix="pulse-demo-alerts-"))
    metrics, prom_port = free_port(), free_port()
    shutil.copytree(REPO / "deploy" / "prometheus" / "rules", work / "rules")
    (work / "targets").mkdir()
    (work / "targets" / "demo.yml").write_text(f"- targets: ['127.0.0.1:{metrics}']\n")
    config = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    config = config.replace("15s", "5s")
    (work / "prometheus.yml").write_text(config)
    demo = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--duration", str(seconds + 60),
         "--data-dir", str(work / "data"), "--metrics-port", str(metrics)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
        exported = query(prom_port, "count(max by (community) (community_pulse_tier))")
        total = int(float(exported[0]["value"][1])) if exported else 0
        print(f"after {seconds:.0f} s: {total} communities exported")
        alerts: dict[tuple[str, str], list[str]] = {}
        for row in query(prom_port, "ALERTS"):
            labels = row["metric"]
            alerts.setdefault((labels["alertname"], labels["alertstate"]), []).append(
                labels.get("community") or labels.get("topic") or labels.get("instance", ""))
        for (name, state), where in sorted(alerts.items()):
            print(f"  {name:<30} {state:<8} {len(where):>3}  {', '.join(sorted(where))}")
        if not alerts:
            print("  no alert pending or firing")
        for label, expr in FORMER.items():
            found = query(prom_port, f"count({expr})")
            print(f"  former {label}: {int(float(found[0]['value'][1])) if found else 0}")
    finally:
        prometheus.terminate()
        demo.terminate()  # the demo stops its worker and broker on SIGTERM as on Ctrl-C
        demo.wait(timeout=120)
        prometheus.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 180.0))
