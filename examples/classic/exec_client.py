#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's remote-command client, final version (struct + JSON header; port 8082).

    python3 exec_client.py [HOST] [PORT]              # default 127.0.0.1 8082

Against `sockit serve --classic --allow-exec`. Type a shell command at `>>: `; the server
answers struct.pack('i', len(header)) + {"data_size": N, "msg_length": N} + N bytes of output
(stdout, then stderr). `quit` or the end of input leaves.

One fix to the course's client: it counts received bytes with `recv_size += len(recv_data)`
(the whole buffer so far), so an output over 1024 bytes is cut short and its rest is read as
the next reply's header; here each chunk is counted once.
"""
import json
import socket
import struct
import sys

ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
           int(sys.argv[2]) if len(sys.argv) > 2 else 8082)
BUFSIZE = 1024


def recv_all(conn, n):
    """recv until n bytes have come: one recv(n) may return fewer."""
    data = b''
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise ConnectionError('the server closed the connection')
        data += more
    return data


client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
client.connect(ip_port)

while True:
    try:
        cmd = input('>>: ')
    except EOFError:
        break
    if not cmd:
        continue
    if cmd == 'quit':
        break
    client.send(bytes(cmd, encoding='utf-8'))

    head = recv_all(client, 4)                         # 先收报头的长度
    head_json_len = struct.unpack('i', head)[0]
    head_json = json.loads(recv_all(client, head_json_len).decode('utf-8'))   # 再收报头
    data_len = head_json['data_size']

    recv_size = 0                                      # 最后收真实的数据
    recv_data = b''
    while recv_size < data_len:
        r_d = client.recv(BUFSIZE)
        if not r_d:
            raise ConnectionError('the server closed the connection')
        recv_data += r_d
        recv_size += len(r_d)
    print(recv_data.decode('utf-8'))

client.close()
