#!/usr/bin/env bash
# File transfer benchmark: 1 GiB up and down over loopback, to tmpfs and to disk, with sockit
# (encrypted and --plaintext), scp and sftp against a loopback sshd, a raw socat pipe (the
# ceiling) and the course's Python upload server; then a tree of 10,000 files of 4 KiB with
# sockit put -r, scp -r and tar | nc. Peak memory of clients and servers is recorded.
#
# Usage: bench/files.sh [ROUNDS]   (default 3: every tool in turn, round after round; about 12
# minutes; installs openssh-server, socat and netcat if missing; needs root for the tmpfs
# mount). Rewrites the files section of BENCHMARKS.md.
# PARTS="tree" bench/files.sh runs only the small-file part (no report is written).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
. bench/lib.sh
setup sshd=openssh-server ssh=openssh-client socat=socat nc=netcat-openbsd

gib=1073741824
mkdir -p "$work/tmpfs" "$work/disk"
mount -t tmpfs -o size=4g tmpfs "$work/tmpfs"
head -c $gib /dev/urandom >"$work/src.bin"
$sockit keygen --secret-file "$work/secret" 2>/dev/null
secret=(--secret-file "$work/secret")
start_sshd
ssh_port_opt=(-P "$ssh_port" -i "$work/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)

out="$results/files.jsonl"
: >"$out"
# Each run starts with nothing dirty in the page cache, so that no one pays for flushing what
# ran before (sockit syncs the filesystem before it renames uploads into place).
measure() {
  sync
  python3 bench/measure.py "$@" >>"$out"
}

parts=${PARTS:-big tree}
for round in $(seq "$rounds"); do
for place in tmpfs disk; do
  [[ $parts == *big* ]] || break
  dest=$work/$place
  echo "1 GiB to and from $place, round $round" >&2
  start "sockit-$place" $sockit serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --root "$dest/sockit"
  enc=$addr enc_pid=$last_pid
  start "plain-$place" $sockit serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --plaintext --root "$dest/plain"
  plain=$addr plain_pid=$last_pid
  mkdir -p "$dest/py" "$dest/down"
  start "python-$place" python3 bench/course_ftp_server.py "$dest/py" 0
  py=$addr

  # Each tool uploads, downloads, and frees the space before the next one.
  measure "up_sockit_$place" $gib "$sockit put ${secret[*]} $enc $work/src.bin"
  measure "down_sockit_$place" $gib "$sockit get ${secret[*]} --force $enc src.bin -o $dest/down/s.bin"
  cmp -s "$work/src.bin" "$dest/down/s.bin"
  rm -f "$dest/sockit/src.bin" "$dest/down/s.bin"
  measure "up_plain_$place" $gib "$sockit put ${secret[*]} --plaintext $plain $work/src.bin"
  measure "down_plain_$place" $gib "$sockit get ${secret[*]} --plaintext --force $plain src.bin -o $dest/down/p.bin"
  cmp -s "$work/src.bin" "$dest/down/p.bin"
  rm -f "$dest/plain/src.bin" "$dest/down/p.bin"
  measure "up_scp_$place" $gib "scp ${ssh_port_opt[*]} $work/src.bin 127.0.0.1:$dest/scp.bin"
  measure "down_scp_$place" $gib "scp ${ssh_port_opt[*]} 127.0.0.1:$dest/scp.bin $dest/down/scp.bin"
  rm -f "$dest/scp.bin" "$dest/down/scp.bin"
  printf 'put %s %s\n' "$work/src.bin" "$dest/sftp.bin" >"$work/sftp-put"
  printf 'get %s %s\n' "$dest/sftp.bin" "$dest/down/sftp.bin" >"$work/sftp-get"
  measure "up_sftp_$place" $gib "sftp ${ssh_port_opt[*]} -b $work/sftp-put 127.0.0.1"
  measure "down_sftp_$place" $gib "sftp ${ssh_port_opt[*]} -b $work/sftp-get 127.0.0.1"
  rm -f "$dest/sftp.bin" "$dest/down/sftp.bin"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  measure "up_socat_$place" $gib "socat -u TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr OPEN:$dest/raw.bin,creat,trunc & sleep 0.2; socat -u FILE:$work/src.bin TCP:127.0.0.1:$port; wait"
  measure "down_socat_$place" $gib "socat -u TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr OPEN:$dest/down/raw.bin,creat,trunc & sleep 0.2; socat -u FILE:$dest/raw.bin TCP:127.0.0.1:$port; wait"
  rm -f "$dest/raw.bin" "$dest/down/raw.bin"
  measure "up_python_$place" $gib "python3 bench/course_ftp_put.py ${py%:*} ${py##*:} $work/src.bin $dest/py"
  rm -f "$dest/py/src.bin"
  for pid in $enc_pid $plain_pid; do
    echo "{\"name\":\"server_peak_${place}_$pid\",\"server_peak_mib\":$(($(grep VmHWM /proc/$pid/status | awk '{print $2}') / 1024))}" >>"$out"
  done
  rm -rf "$dest"/*
done
done

echo "10,000 files of 4 KiB" >&2
python3 - "$work/tree" <<'EOF'
import os, sys
root = sys.argv[1]
for i in range(10000):
    d = os.path.join(root, "d%02d" % (i % 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
EOF
tree_bytes=$((10000 * 4096))
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for place in tmpfs disk; do
  dest=$work/$place
  start "sockit-tree-$place" $sockit serve --listen 127.0.0.1:0 --time-listen off "${secret[@]}" --root "$dest/sockit"
  for round in $(seq "$rounds"); do
    echo "tree to $place, round $round" >&2
    rm -rf "$dest/sockit/tree" "$dest/scp-tree" "$dest/nc-tree"
    measure "tree_sockit_$place" $tree_bytes "$sockit put -r ${secret[*]} $addr $work/tree"
    measure "tree_scp_$place" $tree_bytes "scp -r ${ssh_port_opt[*]} $work/tree 127.0.0.1:$dest/scp-tree"
    mkdir -p "$dest/nc-tree"
    measure "tree_tar_nc_$place" $tree_bytes "nc -l 127.0.0.1 $port | tar -x -C $dest/nc-tree & sleep 0.2; tar -c -C $work tree | nc -N 127.0.0.1 $port; wait"
    diff -r "$work/tree" "$dest/sockit/tree" >/dev/null
    diff -r "$work/tree" "$dest/scp-tree" >/dev/null
  done
done

[[ $parts == *big* ]] || { cat "$out"; exit 0; }
python3 bench/report.py files "$results" "bench/files.sh $rounds"
