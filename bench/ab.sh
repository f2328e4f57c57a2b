#!/usr/bin/env bash
# Before and after: two sockit builds serve echo side by side, measured in interleaved rounds
# by the same load generator, so a change's cost is a ratio taken in one run rather than a
# comparison of figures from different hours.
#
# Usage: bench/ab.sh OLD_SOCKIT NEW_SOCKIT [ROUNDS] [SECONDS]   (defaults 3 and 5)
# For example, to check a change against main:
#   git worktree add /tmp/base main && (cd /tmp/base && cargo build --release)
#   bench/ab.sh /tmp/base/target/release/sockit target/release/sockit
# Prints, per connection count, each build's requests/s and server CPU per request as the
# median of the rounds with their range, and NEW/OLD.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1") new=$(realpath "$2") rounds=${3:-3} seconds=${4:-5}
. bench/lib.sh
setup

"$new" keygen --secret-file "$work/secret" 2>/dev/null
secret=(--secret-file "$work/secret")
start old "$old" serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --max-handshakes 4096
old_addr=$addr old_pid=$last_pid
start new "$new" serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --max-handshakes 4096
new_addr=$addr new_pid=$last_pid

out="$results/ab.jsonl"
: >"$out"
for round in $(seq "$rounds"); do
  for conns in 1 16 100; do
    for build in old new; do
      if [ "$build" = old ]; then target=$old_addr pid=$old_pid; else target=$new_addr pid=$new_pid; fi
      echo "ab: round $round, $build, $conns connections" >&2
      "$new" bench echo "$target" "${secret[@]}" -c "$conns" --duration "${seconds}s" --server-pid "$pid" \
        | python3 -c "import json,sys; r=json.load(sys.stdin); r['build']='$build'; r['round']=$round; print(json.dumps(r))" >>"$out"
    done
  done
done

python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def stat(build, conns, key):
    values = sorted(r[key] for r in rows if r["build"] == build and r["connections"] == conns and r.get(key) is not None)
    return statistics.median(values), values[0], values[-1]
print(f"{'conns':>5}  {'old req/s (range)':>28}  {'new req/s (range)':>28}  new/old  {'old us/req':>10}  {'new us/req':>10}")
for conns in sorted({r["connections"] for r in rows}):
    o, olo, ohi = stat("old", conns, "rps")
    n, nlo, nhi = stat("new", conns, "rps")
    ocpu = stat("old", conns, "server_cpu_us_per_request")[0]
    ncpu = stat("new", conns, "server_cpu_us_per_request")[0]
    print(f"{conns:>5}  {o:>10.0f} ({olo:.0f}-{ohi:.0f})  {n:>10.0f} ({nlo:.0f}-{nhi:.0f})  {n / o:>6.2f}x  {ocpu:>10.2f}  {ncpu:>10.2f}")
EOF
