#!/usr/bin/env python3
# _*_coding:utf-8_*_
"""The course's legitimate client of the HMAC-authenticated echo server (port 9999).

    python3 hmac_echo_client.py [HOST] [PORT] [SECRET_FILE]   # default 127.0.0.1 9999

Against `sockit serve --classic`. The key is sockit's shared secret as text: SECRET_FILE, else
$SOCKIT_SECRET, else ~/.config/sockit/secret, with surrounding whitespace removed. The server
sends 32 random bytes; we answer hmac.new(key, challenge, 'md5').digest(); then type lines at
`>>: ` and they come back upper-cased. `quit` or the end of input leaves.
"""
import hmac
import os
import sys
from socket import *


def load_secret_key():
    if len(sys.argv) > 3:
        return open(sys.argv[3], 'rb').read().strip()
    if os.environb.get(b'SOCKIT_SECRET'):
        return os.environb[b'SOCKIT_SECRET'].strip()
    config = os.environ.get('XDG_CONFIG_HOME') or os.path.join(os.path.expanduser('~'), '.config')
    return open(os.path.join(config, 'sockit', 'secret'), 'rb').read().strip()


secret_key = load_secret_key()


def conn_auth(conn):
    '''
    验证客户端到服务器的链接
    '''
    msg = b''
    while len(msg) < 32:
        more = conn.recv(32 - len(msg))
        if not more:
            raise ConnectionError('the server closed the connection')
        msg += more
    h = hmac.new(secret_key, msg, 'md5')
    digest = h.digest()
    conn.sendall(digest)


def client_handler(ip_port, bufsize=1024):
    tcp_socket_client = socket(AF_INET, SOCK_STREAM)
    tcp_socket_client.connect(ip_port)

    conn_auth(tcp_socket_client)

    while True:
        try:
            data = input('>>: ').strip()
        except EOFError:
            break
        if not data:
            continue
        if data == 'quit':
            break
        tcp_socket_client.sendall(data.encode('utf-8'))
        respone = tcp_socket_client.recv(bufsize)
        if not respone:
            print('the server closed the connection (a wrong key?)')
            break
        print(respone.decode('utf-8'))
    tcp_socket_client.close()


if __name__ == '__main__':
    ip_port = (sys.argv[1] if len(sys.argv) > 1 else '127.0.0.1',
               int(sys.argv[2]) if len(sys.argv) > 2 else 9999)
    bufsize = 1024
    client_handler(ip_port, bufsize)
