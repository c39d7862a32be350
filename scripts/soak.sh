#!/usr/bin/env bash
# The reference-model search, as long as asked: generated producer sequences run against the
# real intake, workers and ledger with the in-memory bucket (src/model.rs), each checked
# against the model. Prints the sequences run, the seed (to replay a failure) and the PUTs
# beyond one per key; a violation stops the run with its minimal sequence.
#   scripts/soak.sh [--cases N] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cases=1000
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--cases N] [--seed S]" >&2; exit 2 ;;
  esac
done
export S3DROP_MODEL_CASES="$cases"
[ -n "$seed" ] && export S3DROP_MODEL_SEED="$seed"
# Each sequence runs in real time (inotify, quiet periods): about 2 s each on 2 cores.
cargo test --lib model::generated_producer_sequences -- --nocapture
