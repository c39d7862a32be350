#!/usr/bin/env bash
# s3drop's main job end to end on a local AWS (fakecloud): see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
scripts/install-deps.sh
cargo build --locked --workspace --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
exec "$target_dir/debug/s3drop-demo"
