#!/usr/bin/env python3
"""The course's FTP-homework upload server (socketserver.ThreadingTCPServer, put only):
4-byte header length, JSON header {"cmd":"put","filename":F,"filesize":N}, then N bytes
received 1024 at a time into the upload directory. Benchmark anchor only (bench/files.sh).

Usage: course_ftp_server.py UPLOAD_DIR [PORT]
"""
import json
import os
import socketserver
import struct
import sys

UPLOAD_DIR = sys.argv[1]


class FtpServer(socketserver.BaseRequestHandler):
    coding = "utf-8"
    max_packet_size = 1024

    def handle(self):
        while True:
            data = self.request.recv(4)
            if len(data) < 4:
                break
            data_len = struct.unpack("i", data)[0]
            head_json = self.request.recv(data_len).decode(self.coding)
            head_dic = json.loads(head_json)
            cmd = head_dic["cmd"]
            if hasattr(self, cmd):
                getattr(self, cmd)(head_dic)

    def put(self, args):
        file_path = os.path.normpath(os.path.join(UPLOAD_DIR, args["filename"]))
        filesize = args["filesize"]
        recv_size = 0
        with open(file_path, "wb") as f:
            while recv_size < filesize:
                recv_data = self.request.recv(self.max_packet_size)
                f.write(recv_data)
                recv_size += len(recv_data)


if __name__ == "__main__":
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), FtpServer)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
