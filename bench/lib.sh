# Shared by the bench scripts (sourced from the repository root).

# setup COMMAND=PACKAGE...: installs the Debian packages of missing commands, builds sockit,
# and sets $sockit, $work (a scratch directory), $results and $pids (background processes),
# all cleaned up on exit.
setup() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || [ -x "/usr/sbin/${pair%%=*}" ] || missing+=("${pair#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  cargo build --release --quiet --bin sockit
  sockit=$PWD/target/release/sockit
  work=$(mktemp -d)
  results=bench/results
  mkdir -p "$results"
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "${ssh_opts+x}" ]; then ssh "${ssh_opts[@]}" -O exit 127.0.0.1 2>/dev/null || true; fi
  umount "$work/tmpfs" 2>/dev/null || true
  rm -rf "$work"
}

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

# start_sshd: a loopback sshd for the current user with fresh host and client keys; sets
# $ssh_port and the array $ssh_opts (client options: key, no prompts, a ControlPath).
start_sshd() {
  ssh_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
  cp "$work/client_key.pub" "$work/authorized_keys"
  mkdir -p /run/sshd
  cat >"$work/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $ssh_port
HostKey $work/host_key
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $work/sshd.pid
Subsystem sftp internal-sftp
EOF
  /usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
  pids+=($!)
  ssh_opts=(-p "$ssh_port" -i "$work/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ControlPath="$work/cm-%p")
  for _ in $(seq 50); do ssh "${ssh_opts[@]}" 127.0.0.1 true 2>/dev/null && return 0; sleep 0.1; done
  echo "sshd did not start:" >&2; cat "$work/sshd.log" >&2; exit 1
}
