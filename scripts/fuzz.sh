#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and fails on the first crash.
# Usage: scripts/fuzz.sh [target...]      (default: every target in fuzz/Cargo.toml)
#   FUZZ_SECONDS   time per target, default 30; 0 skips fuzzing (e.g. a CI without nightly)
#   FUZZ_WORKERS   fuzzing processes per target (libFuzzer -fork=N), default 1; 2 on two cores
#                  gives each target twice the executions in the same time
#   FUZZ_BUILD_ONLY=1  install what is missing and build the targets, then stop
#   FUZZ_PROFILE   release (default: optimized, the most executions per second) or dev
#                  (unoptimized: a cold build takes about 40% less CPU, runs 2-3x slower; CI)
# Needs the nightly toolchain (rustup); installs cargo-fuzz when it is missing.
# The committed seeds in fuzz/corpus/<target>/ are read but never written: what a run discovers
# goes to fuzz/target/corpus/<target>/ (not committed), a crashing input to fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
workers="${FUZZ_WORKERS:-1}"
fork=()
[ "$workers" -gt 1 ] && fork=(-fork="$workers")

log() { printf '\n==> %s\n' "$*"; }

if [ "$seconds" = 0 ]; then
  log "FUZZ_SECONDS=0: fuzzing skipped"
  exit 0
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  log "Installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "Installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# No sanitizer: the crate forbids unsafe code, so AddressSanitizer would find nothing the Rust
# checks miss, and it doubles build and run time. Debug assertions (overflow checks) stay on.
case "${FUZZ_PROFILE:-release}" in
  release) flags=(--sanitizer none --release) ;;
  dev) flags=(--sanitizer none --dev) ;;
  *) echo "FUZZ_PROFILE must be release or dev" >&2; exit 64 ;;
esac

log "Building ${#targets[@]} fuzz targets"
start=$SECONDS
cargo +nightly fuzz build "${flags[@]}"
echo "built in $((SECONDS - start)) s"
[ "${FUZZ_BUILD_ONLY:-0}" = 1 ] && exit 0

for target in "${targets[@]}"; do
  seeds="fuzz/corpus/$target"
  scratch="fuzz/target/corpus/$target"
  mkdir -p "$seeds" "$scratch"
  log "Fuzzing $target for ${seconds} s (${workers} worker(s))"
  out="fuzz/target/fuzz-$target.log"
  # The scratch corpus comes first: libFuzzer writes new inputs into the first directory only.
  # Its progress lines go to a log; the tail is shown on a crash, the final stats otherwise.
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch" "$seeds" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${fork[@]}" \
    -max_len=4096 -timeout=10 -rss_limit_mb=2048 >"$out" 2>&1; then
    tail -n 80 "$out"
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/ (log: $out)" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::peak_rss_mb' "$out" || true
done
log "No crash in ${#targets[@]} targets (${seconds} s each)"
