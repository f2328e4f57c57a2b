#!/usr/bin/env python3
"""The course's FTP client `put`, without the prompt: header, then the file sent line by line
as the course's client does; waits until the server has the whole file. Benchmark only.

Usage: course_ftp_put.py HOST PORT FILE UPLOAD_DIR
"""
import json
import os
import socket
import struct
import sys
import time

host, port, filename, upload_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
filesize = os.path.getsize(filename)
conn = socket.create_connection((host, port))
head = json.dumps({"cmd": "put", "filename": os.path.basename(filename), "filesize": filesize}).encode()
conn.send(struct.pack("i", len(head)))
conn.send(head)
with open(filename, "rb") as f:
    for line in f:
        conn.send(line)
target = os.path.join(upload_dir, os.path.basename(filename))
while not os.path.exists(target) or os.path.getsize(target) < filesize:
    time.sleep(0.005)
conn.close()
