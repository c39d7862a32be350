#!/usr/bin/env bash
# The reference-model search, as long as asked: generated sequences of producer actions,
# kills and restarts (at the kill points too), SIGHUPs, lost events, S3 faults and session
# lapses, run against the real intake, workers and ledger with the in-memory bucket
# (src/model.rs), each checked against the model.
#
#   scripts/soak.sh [--cases N] [--seed S] [--jobs J] [--time-pct P]
#
# Runs J searches at once (default 3), each with its own seed (S, S+1, …; random without
# --seed), N cases in all (default 1000), every duration in a case at P % (default 20:
# quiet periods, settle times, S3's answers and pauses alike, so the races keep their
# shape). Prints the cases run, violations, kills and the PUTs beyond one per stored key
# (in all, and in sequences with a kill), and the seed that replays each search; a
# violation prints its minimal sequence and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cases=1000
seed=""
jobs=3
pct=20
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --time-pct) pct="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--cases N] [--seed S] [--jobs J] [--time-pct P]" >&2; exit 2 ;;
  esac
done
[ -n "$seed" ] || seed=$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))
# The unit-test binary, built once with the kill points.
binary=$(cargo test --lib --locked --features failpoints --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "lib" in m["target"]["kind"]:
        print(m["executable"])')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
started=$(date +%s)
for j in $(seq 0 $(( jobs - 1 ))); do
  share=$(( cases / jobs + (j < cases % jobs ? 1 : 0) ))
  S3DROP_MODEL_CASES=$share S3DROP_MODEL_SEED=$(( seed + j )) S3DROP_MODEL_TIME_PCT=$pct \
    "$binary" model::generated_producer_sequences_keep_the_models_promise --exact --nocapture --test-threads 1 \
    >"$out/$j.log" 2>&1 &
done
status=0
wait || true
for j in $(seq 0 $(( jobs - 1 ))); do
  if ! grep -q "test result: ok" "$out/$j.log"; then
    status=1
    echo "--- search $j (seed $(( seed + j ))) found a violation:"
    sed -n '/Test failed/,/^test model/p' "$out/$j.log" | head -80
  fi
done
python3 - "$out" "$jobs" "$(( $(date +%s) - started ))" "$pct" <<'PY'
import re, sys
out, jobs, seconds, pct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
totals = dict(cases=0, keys=0, extra=0, kills=0, at_point=0, extra_killed=0)
seeds, failed = [], 0
pattern = re.compile(
    r"model: (\d+) sequences run .*?seed (\d+), (\d+) keys stored, (\d+) PUTs beyond one per key"
    r".*?; (\d+) kills \((\d+) at a kill point\), (\d+) PUTs beyond one per key in sequences with a kill")
for j in range(jobs):
    text = open(f"{out}/{j}.log", errors="replace").read()
    m = pattern.search(text)
    if not m:
        print(f"search {j}: no summary line (crashed?)")
        failed += 1
        continue
    cases, seed, keys, extra, kills, at_point, extra_killed = map(int, m.groups())
    for k, v in zip(totals, (cases, keys, extra, kills, at_point, extra_killed)):
        totals[k] += v
    seeds.append(seed)
    if "test result: ok" not in text:
        failed += 1
t = totals
print(f"soak: {t['cases']} cases in {seconds} s ({jobs} searches at {pct} % time), "
      f"{failed} with a violation; {t['keys']} keys stored, {t['extra']} PUTs beyond one per key; "
      f"{t['kills']} kills ({t['at_point']} at a kill point), {t['extra_killed']} PUTs beyond one "
      f"per key in sequences with a kill (at most {t['extra_killed'] / max(t['kills'], 1):.2f} per kill); "
      f"seeds {', '.join(map(str, seeds))}")
PY
exit "$status"
