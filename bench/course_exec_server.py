#!/usr/bin/env python3
"""The course's remote-exec server in its final form (header length + JSON header + data),
as the course writes it: one client at a time, recv(1024) for the command, subprocess with
shell=True, stdout or stderr back. Benchmark anchor only (bench/exec.sh).

Usage: course_exec_server.py [PORT]
"""
import json
import socket
import struct
import subprocess
import sys

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
phone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
phone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
phone.bind(("127.0.0.1", port))
phone.listen(5)
print("listening on 127.0.0.1:%d" % phone.getsockname()[1], flush=True)
while True:
    conn, addr = phone.accept()
    while True:
        cmd = conn.recv(1024)
        if not cmd:
            break
        res = subprocess.Popen(cmd.decode("utf-8"), shell=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = res.stderr.read()
        if err:
            back_msg = err
        else:
            back_msg = res.stdout.read()
        headers = {"data_size": len(back_msg)}
        head_json_bytes = bytes(json.dumps(headers), encoding="utf-8")
        conn.send(struct.pack("i", len(head_json_bytes)))
        conn.send(head_json_bytes)
        conn.sendall(back_msg)
    conn.close()
