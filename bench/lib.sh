# Shared by the bench scripts (sourced). Needs $work (a scratch directory) and the array
# $pids (background processes to stop on exit).

# start NAME COMMAND...: runs a server in the background, waits for its "listening on ADDR"
# line, and sets $addr to ADDR and $last_pid to its process id.
start() {
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
  for _ in $(seq 100); do
    addr=$(grep -o -m1 'listening on [^ "]*' "$work/$name.log" | cut -d' ' -f3 || true)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
