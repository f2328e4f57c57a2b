#!/usr/bin/env python3
"""A sockit client in the course's style: struct + json + hmac, standard library only.

It speaks the native protocol in a --plaintext session (encrypted sessions need Noise, which
the standard library lacks): 4-byte little-endian header length, JSON header, body.

    python3 echo_client.py HOST PORT SECRET_FILE TEXT... [--dump]

--dump prints every frame sent and received as hex (how docs/protocol.md's dump was made).
"""
import hashlib
import hmac
import json
import os
import socket
import struct
import sys

DUMP = "--dump" in sys.argv


def show(direction, data):
    if DUMP:
        print(direction)
        for i in range(0, len(data), 16):
            row = data[i:i + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            print("  %04x  %-48s %s" % (i, " ".join("%02x" % b for b in row), text))


def send(conn, header, body=b""):
    if body:
        header["body_len"] = len(body)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    frame = struct.pack("<I", len(head)) + head + body
    show("client -> server", frame)
    conn.sendall(frame)


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise ConnectionError("server closed the connection")
        data += more
    return data


def recv(conn):
    prefix = recv_exact(conn, 4)
    (length,) = struct.unpack("<I", prefix)
    head = recv_exact(conn, length)
    header = json.loads(head)
    body = recv_exact(conn, header.get("body_len", 0))
    show("server -> client", prefix + head + body)
    if header["cmd"] == "error":
        raise RuntimeError("%s: %s" % (header["code"], header["message"]))
    return header, body


def proof(key, role, client_nonce, server_nonce):
    return hmac.new(key, b"sockit/1 " + role + client_nonce + server_nonce, hashlib.sha256).digest()


def main():
    args = [a for a in sys.argv[1:] if a != "--dump"]
    host, port, secret_file, words = args[0], int(args[1]), args[2], args[3:]
    key = open(secret_file, "rb").read().strip()
    conn = socket.create_connection((host, port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client_nonce = os.urandom(32)
    send(conn, {"cmd": "hello", "version": 1, "auth": "hmac", "nonce": client_nonce.hex()})
    challenge, _ = recv(conn)
    server_nonce = bytes.fromhex(challenge["nonce"])
    send(conn, {"cmd": "auth", "proof": proof(key, b"client", client_nonce, server_nonce).hex()})
    ready, _ = recv(conn)
    expected = proof(key, b"server", client_nonce, server_nonce)
    if not hmac.compare_digest(bytes.fromhex(ready["proof"]), expected):
        raise RuntimeError("the server could not prove it holds the secret")

    send(conn, {"cmd": "echo", "id": 1}, " ".join(words).encode("utf-8"))
    _, body = recv(conn)
    print(body.decode("utf-8"))
    conn.close()


if __name__ == "__main__":
    main()
