#!/usr/bin/env bash
# Every benchmark, one after another, each beside its anchors (the course's Python servers,
# OpenSSH ssh/scp/sftp, socat and nc, a minimal tokio echo server), and BENCHMARKS.md rewritten
# section by section with the figures, the ratios and the machine they ran on.
#
# Usage: bench/run-all.sh   (about 25 minutes on 2 cores, every figure the median of 3 rounds; needs root: it installs openssh-server,
# hyperfine, socat and netcat with apt if missing, and mounts a tmpfs). Each part is bounded;
# a part that fails or overruns is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --examples

failed=()
part() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit}s)" >&2
  local started=$SECONDS
  if ! timeout --kill-after=30 "$limit" "$@"; then
    failed+=("$name")
  fi
  echo "== $name took $((SECONDS - started))s" >&2
}

part ceilings 120 bench/ceilings.sh 3
part echo 600 bench/echo.sh 5 3
part exec 600 bench/exec.sh 3
part files 1200 bench/files.sh 3

if ((${#failed[@]})); then
  echo "failed or overran: ${failed[*]} (their sections of BENCHMARKS.md were left as they were)" >&2
  exit 1
fi
echo "BENCHMARKS.md rewritten: git diff BENCHMARKS.md shows what moved" >&2
