#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (Debian packages,
# Python clients in a virtualenv), then checks formatting and lints and runs every test.
# Usage: scripts/test.sh            (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# 1. Debian packages: MQTT reference clients and broker (tests and benchmark baseline),
#    Prosody and ejabberd for the XMPP side. Installed only when missing.
need=()
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v mosquitto >/dev/null && [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v prosody >/dev/null || need+=(prosody)
[ -x /usr/sbin/ejabberdctl ] || need+=(ejabberd)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  log "Installing Debian packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # Keep packages from starting their services (ejabberd's would take the XMPP ports): the
  # tests start their own servers. policy-rc.d exiting 101 is Debian's way to say so.
  policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod +x "$policy"
    added_policy=1
    trap '$sudo_cmd rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
  if [ -n "$added_policy" ]; then
    $sudo_cmd rm -f "$policy"
    trap - EXIT
  fi
fi

# 2. Python test clients (paho-mqtt 2.x, slixmpp) in a project-local virtualenv.
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  log "Creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import paho.mqtt, slixmpp' 2>/dev/null; then
  log "Installing Python test clients"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
fi
export TEST_PYTHON_FOR_BRIDGE="$PWD/$venv/bin/python"

# 3. Style and lints.
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

# Fuzzing settings (step 5): FUZZ_SECONDS per target with FUZZ_WORKERS libFuzzer workers.
export FUZZ_SECONDS="${FUZZ_SECONDS:-30}" FUZZ_WORKERS="${FUZZ_WORKERS:-2}" FUZZ_PROFILE="${FUZZ_PROFILE:-dev}"

# The fuzz build (nightly toolchain and cargo-fuzz when missing, then every target: about
# 3 CPU-minutes from cold) runs at the lowest CPU priority beside the tests, which leave
# about half of the two cores idle while they wait on servers and clients.
fuzz_build_log=fuzz/target/build.log
fuzz_build=""
if [ "$FUZZ_SECONDS" != 0 ]; then
  mkdir -p fuzz/target
  FUZZ_BUILD_ONLY=1 nice -n 19 scripts/fuzz.sh >"$fuzz_build_log" 2>&1 &
  fuzz_build=$!
  trap '[ -n "$fuzz_build" ] && kill "$fuzz_build" 2>/dev/null || true' EXIT
fi

# 4. Every test: unit tests, integration tests with real peers (Prosody, slixmpp, paho,
#    mosquitto clients), doc tests; the criterion benchmarks run once each in test mode (the
#    three comparison benches only print how to run them there; clippy has compiled them).
log "cargo test"
cargo test --bench codec --bench topic_match --bench xmpp_stanza
cargo test --doc
cargo test --lib --bins --tests -- --test-threads=4

# 5. Fuzzing: every cargo-fuzz target for FUZZ_SECONDS (default 30) with FUZZ_WORKERS (default
#    2) libFuzzer workers, a minute of fuzzing per target on two cores, failing on a crash.
#    Unoptimized build (FUZZ_PROFILE=dev): from cold it takes 6.4 CPU-minutes against 11.1
#    optimized, and runs only 2-3x slower. Longer runs: scripts/fuzz.sh (README).
if [ -n "$fuzz_build" ]; then
  log "Waiting for the fuzz build"
  if ! wait "$fuzz_build"; then
    fuzz_build=""
    cat "$fuzz_build_log"
    echo "the fuzz build failed (log: $fuzz_build_log)" >&2
    exit 1
  fi
  fuzz_build=""
  grep -E '^built in' "$fuzz_build_log" || true
fi
log "scripts/fuzz.sh"
scripts/fuzz.sh
