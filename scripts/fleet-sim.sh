#!/usr/bin/env bash
# The fleet simulation of docs/FLEET.md: N instances rebooted together asking STS for
# their upload sessions under s3drop's own schedule, and under the rule it had before.
#   scripts/fleet-sim.sh --instances 10000 --hours 24 [--sts-limit 50|2x]
#                        [--startup-jitter 300] [--session-seconds 3600] [--boot-spread 0]
#                        [--files-per-hour 60] [--seed 1]
# Exits 1 when the new rule misses a target of docs/FLEET.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo run --release --locked --quiet -p s3drop-testkit --bin s3drop-fleet-sim -- "$@"
