#!/usr/bin/env python3
"""The course's concurrent upper-case echo server, as the course writes it: socketserver's
ThreadingTCPServer, one thread per client, recv(1024) then send back upper-cased.

Benchmark anchor only (bench/echo.sh). Usage: course_echo_server.py [PORT]
"""
import socketserver
import sys


class MyServer(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            try:
                data = self.request.recv(1024)
                if not data:
                    break
                self.request.sendall(data.upper())
            except Exception:
                break


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), MyServer)
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()
