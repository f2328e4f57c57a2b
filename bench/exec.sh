#!/usr/bin/env bash
# Exec benchmark: the latency of running `true` and the throughput of 1 GiB of output, with
# sockit against OpenSSH on a loopback sshd (with and without ControlMaster), the course's
# Python exec server, and a local fork+exec of `sh -c true`, all in one run.
#
# Usage: bench/exec.sh [ROUNDS]   (default 3 rounds of the 1 GiB runs, interleaved; about 4
# minutes; installs openssh-server and hyperfine if missing)
# Rewrites the exec section of BENCHMARKS.md and leaves raw JSON in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
. bench/lib.sh
setup sshd=openssh-server ssh=openssh-client hyperfine=hyperfine

# sockit
$sockit keygen --secret-file "$work/secret" 2>/dev/null
start sockit $sockit serve --listen 127.0.0.1:0 --time-listen off --secret-file "$work/secret" --allow-exec
sockit_addr=$addr
start course python3 bench/course_exec_server.py 0
course_addr=$addr

start_sshd

median_us() { # hyperfine JSON -> median in microseconds
  python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['results'][0]['median']*1e6,1))" "$1"
}
fresh() { # NAME RUNS COMMAND: median wall time of a whole process, via hyperfine
  hyperfine -N --warmup 3 --runs "$2" --export-json "$work/$1.json" "$3" >/dev/null 2>&1
  echo "{\"name\":\"$1\",\"p50_us\":$(median_us "$work/$1.json")}"
}

out="$results/exec.jsonl"
: >"$out"
echo "exec latency" >&2
fresh sockit_fresh 300 "$sockit exec -n --secret-file $work/secret $sockit_addr true" >>"$out"
fresh ssh_fresh 40 "ssh ${ssh_opts[*]} -o ControlMaster=no 127.0.0.1 true" >>"$out"
ssh "${ssh_opts[@]}" -o ControlMaster=yes -o ControlPersist=120 -fN 127.0.0.1
fresh ssh_controlmaster 300 "ssh ${ssh_opts[*]} -o ControlMaster=no 127.0.0.1 true" >>"$out"
fresh local_sh 300 "sh -c true" >>"$out"
$sockit bench exec "$sockit_addr" --secret-file "$work/secret" --count 1000 \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'name':'sockit_session','p50_us':r['p50_us'],'p99_us':r['p99_us']}))" >>"$out"
$sockit bench exec --local --count 1000 \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'name':'local_spawn','p50_us':r['p50_us'],'p99_us':r['p99_us']}))" >>"$out"
python3 bench/exec_latency.py course "${course_addr%:*}" "${course_addr##*:}" 1000 \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'name':'course_session','p50_us':r['p50_us'],'p99_us':r['p99_us']}))" >>"$out"

echo "exec throughput (1 GiB of output), $rounds rounds" >&2
gib=1073741824
for round in $(seq "$rounds"); do
  python3 bench/measure.py sockit_1g $gib "$sockit exec -n --secret-file $work/secret $sockit_addr 'head -c $gib /dev/zero'" >>"$out"
  python3 bench/measure.py ssh_1g $gib "ssh ${ssh_opts[*]} -o ControlMaster=no -c aes128-gcm@openssh.com 127.0.0.1 'head -c $gib /dev/zero'" >>"$out"
  python3 bench/measure.py local_1g $gib "sh -c 'head -c $gib /dev/zero'" >>"$out"
done

python3 bench/report.py exec "$results" "bench/exec.sh $rounds"
