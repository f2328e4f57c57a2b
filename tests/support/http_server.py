#!/usr/bin/env python3
"""A loopback HTTP(S) server for tests/fetch.rs, built on http.server.

Prints its port on the first line of stdout, then serves until killed:

  /fixed              a Content-Length body
  /chunked            a chunked body in several chunks
  /close              an HTTP/1.0 response whose body ends when the connection closes
  /redirect/N         N redirects (301 and 302 alternating, relative and absolute
                      Locations alternating) ending at a page that says "arrived"
  /missing            404 with a short body
  /truncated          Content-Length 100, then 10 bytes and a closed connection
  /chunked-truncated  chunks, then a closed connection without the last chunk
  /stall              Content-Length 10, 2 bytes, then silence for a few seconds
  /headers            the request's headers as the body
  /files/NAME         the file NAME from --root (the library's own file serving)

With --cert and --key it speaks TLS (Python's ssl module) on the same routes.
"""

import argparse
import functools
import http.server
import socket
import ssl
import sys
import time

# How long /stall stays silent: longer than the read timeout the test gives the client.
STALL_SECONDS = 5


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        context = self.server.tls_context
        if context is not None:
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/files/"):
            self.path = path[len("/files"):]
            return super().do_GET()
        if path.startswith("/redirect/"):
            return self.redirect(path)
        route = ROUTES.get(path)
        if route is None:
            return self.send_body(404, b"no route\n")
        route(self)

    def send_body(self, status, body, extra_headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def fixed(self):
        self.send_body(200, b"hello, fixed length\n", [("X-Sockit-Test", "fixed")])

    def send_chunks(self, chunks, last_chunk):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if last_chunk:
            self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True

    def chunked(self):
        self.send_chunks([b"hello, ", b"chunked ", b"world\n"], last_chunk=True)

    def chunked_truncated(self):
        self.send_chunks([b"only ", b"part"], last_chunk=False)

    def close_delimited(self):
        # An HTTP/1.0 response with no length: the body is everything until the server closes.
        self.protocol_version = "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"hello, close delimited\n")
        self.close_connection = True

    def redirect(self, path):
        try:
            hops = int(path[len("/redirect/"):])
        except ValueError:
            return self.send_body(400, b"bad hop count\n")
        if hops <= 0:
            return self.send_body(200, b"arrived\n")
        target = "/redirect/%d" % (hops - 1)
        if hops % 2 == 1:
            scheme = "https" if self.server.tls_context else "http"
            target = "%s://%s%s" % (scheme, self.headers["Host"], target)
        status = 301 if hops % 2 == 1 else 302
        self.send_body(status, b"moved\n", [("Location", target)])

    def missing(self):
        self.send_body(404, b"no such page\n")

    def truncated(self):
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True

    def stall(self):
        self.send_response(200)
        self.send_header("Content-Length", "10")
        self.end_headers()
        self.wfile.write(b"01")
        self.wfile.flush()
        time.sleep(STALL_SECONDS)
        self.close_connection = True

    def echo_headers(self):
        self.send_body(200, bytes(self.headers))


ROUTES = {
    "/fixed": Handler.fixed,
    "/chunked": Handler.chunked,
    "/chunked-truncated": Handler.chunked_truncated,
    "/close": Handler.close_delimited,
    "/missing": Handler.missing,
    "/truncated": Handler.truncated,
    "/stall": Handler.stall,
    "/headers": Handler.echo_headers,
}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that rejects our certificate or hangs up is part of the tests, not a fault.
        error = sys.exc_info()[1]
        if not isinstance(error, (ssl.SSLError, ConnectionError)):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="directory served under /files/")
    parser.add_argument("--cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--key", help="PEM private key for --cert")
    args = parser.parse_args()

    handler = functools.partial(Handler, directory=args.root)
    server = Server(("127.0.0.1", 0), handler)
    server.tls_context = None
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.tls_context = context
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
