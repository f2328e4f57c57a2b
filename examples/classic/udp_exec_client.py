#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's UDP remote-command client (port 9003).

    python3 udp_exec_client.py [HOST] [PORT]          # default 127.0.0.1 9003

Against `sockit serve --classic --allow-exec`. Type a shell command at `>>: `; the server
answers two datagrams, the command's stderr and then its stdout, each at most 65507 bytes.
The course's client reads one `recvfrom(1024)` per command, so it shows the stderr datagram
(cut to 1024 bytes) and the stdout one a command later; this one reads both, whole. The end
of input leaves.
"""
import sys
from socket import *

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 9003)
bufsize = 65507

udp_client = socket(AF_INET, SOCK_DGRAM)
udp_client.settimeout(70)     # commands may run a minute; UDP may lose a datagram

while True:
    try:
        msg = input('>>: ').strip()
    except EOFError:
        break
    if not msg:
        continue
    udp_client.sendto(msg.encode('utf-8'), ip_port)
    stderr, addr = udp_client.recvfrom(bufsize)
    stdout, addr = udp_client.recvfrom(bufsize)
    print(stderr.decode('utf-8'), end='')
    print(stdout.decode('utf-8'), end='')

udp_client.close()
