#!/usr/bin/env bash
# All of s3drop's tests: unit tests and end-to-end tests against fakecloud, run by
# cargo-nextest (each test in its own process, two at a time, each with its time). See
# README.md. `--fast` leaves out the slow tier (a real systemd boot, crash recovery, fleet
# and packaging runs) for the inner loop; CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
scripts/install-deps.sh
filter=()
if [ "${1:-}" = --fast ]; then
  filter=(-E 'not (test(/^boot::/) | test(/^crash::/) | test(/^fleet::/) | test(/^packaging::/))')
fi
started=$(date +%s)
status=0
# failpoints: the kill points the reference model (src/model.rs) kills s3drop at.
cargo nextest run --workspace --locked --no-fail-fast --features s3drop/failpoints \
  "${filter[@]}" || status=$?
# One closing line for the whole run, and where the time went.
python3 - "$(( $(date +%s) - started ))" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    cases = list(ET.parse("target/nextest/default/junit.xml").iter("testcase"))
except (OSError, ET.ParseError):
    cases = []
failed = [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
slowest = sorted(cases, key=lambda c: -float(c.get("time", 0)))[:10]
print(f"slowest tests (of {len(cases)}, {sys.argv[1]} s in all, build included):")
for c in slowest:
    print(f"  {float(c.get('time', 0)):7.1f} s  {c.get('classname')} {c.get('name')}")
print(f"tests: {len(cases) - len(failed)} passed, {len(failed)} failed")
PY
exit "$status"
