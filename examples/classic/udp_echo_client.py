#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's UDP client of the upper-case echo server (port 9001).

    python3 udp_echo_client.py [HOST] [PORT]          # default 127.0.0.1 9001

Against `sockit serve --classic`. Type a line at `>>: `; the server sends the datagram back
upper-cased, and it is printed with the address it came from. The end of input leaves.
"""
import socket
import sys

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 9001)
BUFSIZE = 1024

udp_server_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp_server_client.settimeout(10)     # UDP may lose a datagram: never wait forever

while True:
    try:
        msg = input('>>: ').strip()
    except EOFError:
        break
    if not msg:
        continue

    udp_server_client.sendto(msg.encode('utf-8'), ip_port)

    back_msg, addr = udp_server_client.recvfrom(BUFSIZE)
    print(back_msg.decode('utf-8'), addr)

udp_server_client.close()
