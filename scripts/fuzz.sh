#!/usr/bin/env bash
# Fuzzes everything s3drop reads from untrusted input with libFuzzer (cargo fuzz, nightly
# Rust): the config, the path → key mapping, templates, the session-policy builder and the
# ledger's record decoder (targets in fuzz/, checks in src/fuzz.rs). Each target runs for
# --seconds N (default 60); the corpus grows in fuzz/corpus/TARGET (local, not committed),
# a crash is kept in fuzz/artifacts/TARGET and the script exits non-zero. Prints each
# target's executions.
#
#   scripts/fuzz.sh [--seconds N] [TARGET…]
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz --locked`). Stable CI runs the same checks as proptest
# properties (src/fuzz.rs, src/properties.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: a nightly toolchain is needed: rustup toolchain install nightly" >&2
  exit 2
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is needed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Built once before the clock starts, so each target's time is its own.
cargo +nightly fuzz build
status=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log="target/fuzz-$target.log"
  mkdir -p target
  started=$(date +%s)
  if cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
       -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    result="0 crashes"
  else
    result="CRASH (see $log and fuzz/artifacts/$target)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  summary+=("$(printf '%-14s %10s executions in %4d s, corpus %5d inputs, %s' \
    "$target" "${runs:-?}" "$(( $(date +%s) - started ))" "$corpus" "$result")")
done
printf '%s\n' "${summary[@]}"
exit "$status"
