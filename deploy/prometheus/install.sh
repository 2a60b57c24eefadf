#!/usr/bin/env bash
# Ensure `prometheus` and `promtool` are on PATH (Debian/Ubuntu: the distribution package).
# Idempotent: returns at once when both are already there. Never leaves a prometheus
# service running that it started: the demo runs its own prometheus with its own config.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have prometheus && have promtool; then
    exit 0
fi

die() { echo "prometheus/install.sh: error: $*" >&2; exit 1; }

if [[ "$(id -u)" -ne 0 ]]; then
    die "prometheus/promtool not found; install them (e.g. 'sudo apt-get install --no-install-recommends prometheus') or run this script as root"
fi
have apt-get || die "prometheus/promtool not found and apt-get is unavailable; install Prometheus manually"

echo "prometheus/install.sh: installing prometheus with apt-get" >&2
was_running=0
if pgrep -x prometheus >/dev/null 2>&1; then was_running=1; fi

# Keep the package's postinst from starting a service (same trick as Docker base images).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { if [[ "$own_policy" -eq 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# If a service got started anyway (systemd hosts ignore policy-rc.d), stop and disable it.
if [[ "$was_running" -eq 0 ]]; then
    if have systemctl && [[ -d /run/systemd/system ]]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
fi

have prometheus && have promtool || die "apt-get finished but prometheus/promtool are still not on PATH"
echo "prometheus/install.sh: $(prometheus --version 2>&1 | head -n 1)" >&2
