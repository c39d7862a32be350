#!/usr/bin/env bash
# s3drop's benchmark (P1–P5) against aws-cli, rclone and raw-SDK clients on the local S3
# server; prints the table, and a full run writes docs/BENCHMARKS.md.
#   scripts/bench.sh                   the published figures (P1 and P2: median of 3 runs)
#   scripts/bench.sh --quick           smaller sizes (a smoke test; prints only)
#   scripts/bench.sh --only p1 --runs 1   one part, once (prints only); parts: p1 … p5, drain
#                                      (P5's backlog uploaded), first, linear, dirs
#   S3DROP_BENCH_BEFORE=PATH scripts/bench.sh   the published figures, with an older s3drop
#                                      binary measured beside this one (before/after, one run)
# The server defaults to a release build of fakecloud 0.51.0 (installed once into
# ~/.cache/fakecloud-release: 30-40 minutes on 2 cores), since the debug build caps every
# client at the same figures; S3DROP_BENCH_SERVER=debug uses the tests' debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"
scripts/install-deps.sh
if [ "${S3DROP_BENCH_SERVER:-release}" = release ]; then
  release_root="$HOME/.cache/fakecloud-release"
  if [ "$("$release_root/bin/fakecloud" --version 2>/dev/null)" != "fakecloud 0.51.0" ]; then
    echo "installing a release build of fakecloud 0.51.0 for the benchmark (30-40 min) ..." >&2
    cargo install fakecloud --version 0.51.0 --locked --root "$release_root"
  fi
  export FAKECLOUD_BIN="$release_root/bin/fakecloud"
  server="fakecloud 0.51.0, release build"
else
  server="fakecloud 0.51.0, debug build (the tests' server)"
fi
command -v aws >/dev/null 2>&1 || python3 -m pip install --quiet awscli
command -v rclone >/dev/null 2>&1 || {
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q rclone >/dev/null
}
cargo build --release --locked -p s3drop -p s3drop-testkit --bins
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
results="$(mktemp)"
before=()
[ -n "${S3DROP_BENCH_BEFORE:-}" ] && before=(--before "$S3DROP_BENCH_BEFORE")
"$target_dir/release/s3drop-bench" "${before[@]}" "$@" --report "$results"
if [ "$#" -gt 0 ]; then
  rm -f "$results"
  exit 0 # a partial or quick run is not the published table
fi
# Notes written by hand below the generated table (a "## Notes" heading) survive a re-run.
notes="$(mktemp)"
sed -n '/^## Notes/,$p' docs/BENCHMARKS.md > "$notes" 2>/dev/null || true
{
  echo "# Benchmarks"
  echo
  echo "Measured with \`scripts/bench.sh\` on $(date -u +%Y-%m-%d):"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
  echo "$(free -g | awk '/Mem:/ {print $2}') GiB memory, Linux $(uname -r). Server: $server,"
  echo "on loopback, strict IAM and SigV4 checks, logging warnings only. Every client uses the same"
  echo "credentials: a session of the upload role with s3drop's session policy, from the emulated"
  echo "IMDS. Concurrency 16 for all (s3drop \`concurrency\`, aws-cli \`max_concurrent_requests\`,"
  echo "rclone \`--transfers\`/\`--checkers\`, the raw loop's \`buffer_unordered\`)."
  echo
  cat "$results"
  if [ -s "$notes" ]; then
    echo
    echo "<!-- kept from the previous docs/BENCHMARKS.md: check these notes against the table above -->"
    cat "$notes"
  fi
} > docs/BENCHMARKS.md
rm -f "$results" "$notes"
echo "wrote docs/BENCHMARKS.md" >&2
