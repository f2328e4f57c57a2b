#!/usr/bin/env bash
# Echo benchmark: sockit (encrypted and --plaintext) against the course's Python
# ThreadingTCPServer and a minimal unframed tokio echo server, all measured in one run by
# `sockit bench`, then connection setup latency and 10,000 idle sessions.
#
# Usage: bench/echo.sh [SECONDS_PER_RUN] [ROUNDS]   (defaults 5 and 3; about 5 minutes)
# The servers are measured in turn, round after round, so that each round's ratios compare
# runs of the same minute.
# Rewrites the echo section of BENCHMARKS.md and leaves raw JSON in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
rounds=${2:-3}
. bench/lib.sh
setup
cargo build --release --quiet --example tokio_echo

$sockit keygen --secret-file "$work/secret" 2>/dev/null
secret=(--secret-file "$work/secret")
# Every client comes from 127.0.0.1, so the per-address bounds are raised to let the 10,000
# idle sessions in.
start sockit $sockit serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --max-handshakes 4096 \
  --max-connections-per-source 20000 --max-handshakes-per-source 4096
sockit_addr=$addr sockit_pid=$last_pid
start plaintext $sockit serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --plaintext
plaintext_addr=$addr plaintext_pid=$last_pid
start python python3 bench/course_echo_server.py 0
python_addr=$addr python_pid=$last_pid
start tokio target/release/examples/tokio_echo 127.0.0.1:0
tokio_addr=$addr tokio_pid=$last_pid

out="$results/echo.jsonl"
: >"$out"
for round in $(seq "$rounds"); do
for conns in 1 16 100; do
  for server in sockit plaintext python tokio; do
    case $server in
      sockit) args=("$sockit_addr" "${secret[@]}" --server-pid "$sockit_pid") ;;
      plaintext) args=("$plaintext_addr" "${secret[@]}" --plaintext --server-pid "$plaintext_pid") ;;
      python) args=("$python_addr" --raw --server-pid "$python_pid") ;;
      tokio) args=("$tokio_addr" --raw --server-pid "$tokio_pid") ;;
    esac
    echo "echo: round $round, $server, $conns connections" >&2
    $sockit bench echo "${args[@]}" -c "$conns" --duration "${seconds}s" \
      | python3 -c "import json,sys; r=json.load(sys.stdin); r['server']='$server'; r['round']=$round; print(json.dumps(r))" >>"$out"
  done
done
done
echo "connect + handshake + echo + close" >&2
$sockit bench connect "$sockit_addr" "${secret[@]}" --count 1000 >"$results/connect.json"
echo "10,000 idle sessions" >&2
$sockit bench idle "$sockit_addr" "${secret[@]}" -c 10000 --hold 5s --server-pid "$sockit_pid" >"$results/idle.json"

python3 bench/report.py echo "$results" "$(printf '%q ' "$0" "$@")"
