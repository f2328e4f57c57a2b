#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's client of the UDP time server (port 9000).

    python3 time_client.py [HOST] [PORT]              # default 127.0.0.1 9000

Against `sockit serve` (the time service is on by default; `--classic` lists it). Type a
strftime format at the prompt (an empty line means `%Y-%m-%d %X`); the server answers its local
time in it. The end of input leaves.
"""
import sys
from socket import *

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 9000)
bufsize = 1024

tcp_client = socket(AF_INET, SOCK_DGRAM)
tcp_client.settimeout(10)     # UDP may lose a datagram: never wait forever

while True:
    try:
        msg = input('请输入时间格式(例%Y %m %d)>>: ').strip()
    except EOFError:
        break
    tcp_client.sendto(msg.encode('utf-8'), ip_port)

    data = tcp_client.recv(bufsize)

    print(data.decode('utf-8'))

tcp_client.close()
