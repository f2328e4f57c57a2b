#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The FTP homework's client (port 8083): `put FILE` uploads, `get NAME` downloads.

    python3 ftp_client.py [HOST] [PORT]               # default 127.0.0.1 8083

Against `sockit serve --classic`, which stores uploads in its file root (`--root`). `put`
is the course's: struct.pack('i', len(header)) + {"cmd": "put", "filename": F, "filesize": N}
+ N bytes, with no reply. `get` asks {"cmd": "get", "filename": F} and receives
struct.pack('i', len(header)) + {"cmd": "get", "filename": F, "filesize": N} + N bytes (or a
header with "error"), saving the file in the current directory. The end of input leaves.
"""
import json
import os
import socket
import struct
import sys


class MYTCPClient:
    address_family = socket.AF_INET
    socket_type = socket.SOCK_STREAM
    max_packet_size = 8192
    coding = 'utf-8'

    def __init__(self, server_address, connect=True):
        self.server_address = server_address
        self.socket = socket.socket(self.address_family, self.socket_type)
        if connect:
            try:
                self.client_connect()
            except:
                self.client_close()
                raise

    def client_connect(self):
        self.socket.connect(self.server_address)

    def client_close(self):
        self.socket.close()

    def run(self):
        while True:
            try:
                inp = input(">>: ").strip()
            except EOFError:
                break
            if not inp:
                continue
            l = inp.split()
            cmd = l[0]
            if hasattr(self, cmd):
                func = getattr(self, cmd)
                func(l)
        self.client_close()

    def send_header(self, head_dic):
        head_json = json.dumps(head_dic)
        head_json_bytes = bytes(head_json, encoding=self.coding)
        head_struct = struct.pack('i', len(head_json_bytes))
        self.socket.send(head_struct)
        self.socket.send(head_json_bytes)

    def recv_all(self, n):
        data = b''
        while len(data) < n:
            more = self.socket.recv(min(n - len(data), self.max_packet_size))
            if not more:
                raise ConnectionError('the server closed the connection')
            data += more
        return data

    def put(self, args):
        cmd = args[0]
        filename = args[1]
        if not os.path.isfile(filename):
            print('file:%s is not exists' % filename)
            return
        else:
            filesize = os.path.getsize(filename)
        head_dic = {'cmd': cmd, 'filename': os.path.basename(filename), 'filesize': filesize}
        print(head_dic)
        self.send_header(head_dic)
        send_size = 0
        with open(filename, 'rb') as f:
            for line in f:
                self.socket.sendall(line)
                send_size += len(line)
            else:
                print(send_size)
                print('upload successful')

    def get(self, args):
        cmd = args[0]
        filename = args[1]
        self.send_header({'cmd': cmd, 'filename': filename})
        head_len = struct.unpack('i', self.recv_all(4))[0]
        head_dic = json.loads(self.recv_all(head_len).decode(self.coding))
        print(head_dic)
        if 'error' in head_dic:
            print('download failed: %s' % head_dic['error'])
            return
        filesize = head_dic['filesize']
        recv_size = 0
        with open(os.path.basename(filename), 'wb') as f:
            while recv_size < filesize:
                recv_data = self.recv_all(min(self.max_packet_size, filesize - recv_size))
                f.write(recv_data)
                recv_size += len(recv_data)
        print('download successful')


client = MYTCPClient((sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
                      int(sys.argv[2]) if len(sys.argv) > 2 else 8083))
client.run()
