#!/usr/bin/env python3
"""Latency helpers for bench/exec.sh, printing one JSON object each.

  exec_latency.py course HOST PORT COUNT   round trips of `true` to the course's exec server
                                            over one connection, as its client does them
  exec_latency.py spawn COUNT ARGV...       runs ARGV COUNT times as a fresh process each time
                                            (fork + exec + wait), e.g. `sh -c true`, or a
                                            whole `sockit exec` or `ssh` invocation
"""
import json
import socket
import statistics
import struct
import subprocess
import sys
import time


def summary(kind, samples):
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(json.dumps({"kind": kind, "count": len(samples),
                      "p50_us": round(statistics.median(samples) * 1e6, 1),
                      "p99_us": round(p99 * 1e6, 1)}))


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise ConnectionError("closed")
        data += more
    return data


def course(host, port, count):
    conn = socket.create_connection((host, int(port)))
    samples = []
    for _ in range(int(count)):
        begin = time.perf_counter()
        conn.send(b"true")
        (length,) = struct.unpack("i", recv_exact(conn, 4))
        header = json.loads(recv_exact(conn, length))
        recv_exact(conn, header["data_size"])
        samples.append(time.perf_counter() - begin)
    summary("course", samples)


def spawn(count, argv):
    samples = []
    for _ in range(int(count)):
        begin = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - begin)
    summary("spawn", samples)


if __name__ == "__main__":
    if sys.argv[1] == "course":
        course(*sys.argv[2:5])
    else:
        spawn(sys.argv[2], sys.argv[3:])
