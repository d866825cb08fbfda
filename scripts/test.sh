#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh Debian 12 machine, run as root once: it installs
# the system packages the tests drive (stock MQTT clients, the mosquitto broker for interop and
# benchmarks, iptables/iproute2/faketime for the jepsen partition suite).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# test certificates (TLS listeners, links and node-to-node TLS)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# the dashboard's browser test (headless)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# jepsen's clock-skew scenario (not in the CI selection, but `strait-jepsen run --all` uses it).
[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]}: run as root once, or: sudo apt-get install ${need[*]}" >&2
    exit 2
  fi
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
exec cargo test --workspace "$@"
