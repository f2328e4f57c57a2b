#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's client of the threaded greeting server (port 9998).

    python3 greeting_client.py [HOST] [PORT] [NAME...]   # default 127.0.0.1 9998 alice bob jack

Against `sockit serve --classic`. Prints the server's `Welcome!`, sends each name and prints
its `Hello, NAME!`, then sends `exit`.
"""
import socket
import sys

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 9998)
names = [name.encode('utf-8') for name in sys.argv[3:]] or [b'alice', b'bob', b'jack']

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# 建立连接:
s.connect(ip_port)
# 接收欢迎消息:
print(s.recv(1024).decode('utf-8'))
for data in names:
    s.send(data)
    print(s.recv(1024).decode('utf-8'))
s.send(b'exit')
s.close()
