#!/usr/bin/env bash
# The machine's own limits, so that every other figure also reads as a fraction of one: one
# TCP stream over loopback (iperf3), and the ciphers and hash the data path uses (openssl speed
# on 16 KiB blocks). Each is measured ROUNDS times; the report shows the median and the range.
#
# Usage: bench/ceilings.sh [ROUNDS]   (default 3; about a minute; installs iperf3 if missing)
# Rewrites the ceilings section of BENCHMARKS.md and leaves raw JSON in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
. bench/lib.sh
setup iperf3=iperf3 openssl=openssl

out="$results/ceilings.jsonl"
: >"$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for round in $(seq "$rounds"); do
  echo "ceilings: round $round" >&2
  iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 50); do iperf3 -c 127.0.0.1 -p "$port" -t 5 -J >"$work/iperf.json" 2>/dev/null && break; sleep 0.1; done
  wait "$server" || true
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'name':'iperf3_one_stream','round':$round,'mb_per_s':round(r['end']['sum_received']['bits_per_second']/8e6,1)}))" "$work/iperf.json" >>"$out"
  for cipher in aes-256-gcm aes-128-gcm chacha20-poly1305; do
    openssl speed -mr -bytes 16384 -seconds 2 -evp "$cipher" 2>/dev/null \
      | python3 -c "import json,sys; f=[l for l in sys.stdin if l.startswith('+F:')][-1].split(':'); print(json.dumps({'name':'openssl_$cipher','round':$round,'mb_per_s':round(float(f[-1])/1e6,1)}))" >>"$out"
  done
done
python3 bench/report.py ceilings "$results" "bench/ceilings.sh $rounds"
