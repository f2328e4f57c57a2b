#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's TCP client for the upper-case echo server (port 8081), standard library only.

    python3 upper_echo_client.py [HOST] [PORT]        # default 127.0.0.1 8081

Against `sockit serve --classic`. Type a line at `>>: `; the server sends it back
upper-cased. `quit` or the end of input leaves.
"""
import socket
import sys

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 8081)
BUFSIZE = 1024

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(ip_port)            # 拨电话

while True:                   # 通信循环
    try:
        msg = input('>>: ').strip()
    except EOFError:
        break
    if len(msg) == 0:
        continue
    if msg == 'quit':
        break
    s.send(msg.encode('utf-8'))        # 发消息
    feedback = s.recv(BUFSIZE)         # 收消息
    print(feedback.decode('utf-8'))

s.close()                     # 挂电话
