#!/usr/bin/env bash
# Built-in broker vs Mosquitto 2.0 (benches/broker_compare.rs): installs Mosquitto and its
# clients when missing, raises the open-files limit for the idle-connection test, runs the
# bench. The markdown table lands in target/bench-broker.md.
# Usage: scripts/bench.sh                  (defaults: about 2-3 minutes on 2 cores)
#        BENCH_MESSAGES=200000 BENCH_SCENARIOS=fanin scripts/bench.sh
# Tunables: see the module doc at the top of benches/broker_compare.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# 5,000 idle connections need as many descriptors in the bench and in the broker.
want=$(( ${BENCH_IDLE_CONNS:-5000} + 1000 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want" ]; then
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

exec cargo bench --bench broker_compare "$@"
