#!/usr/bin/env python3
"""A trivial loopback HTTP peer that measures the client's ceiling.

`sink.py FILE` listens on an ephemeral 127.0.0.1 port and prints the port on stdout. Every
request with a body (PUT, POST, PATCH) is read and discarded, then answered with 201; every
GET is answered with the bytes of FILE, sent with sendfile(2). One connection at a time,
`Connection: close`. Pushing or pulling through it with the same curl command as against
the registries shows how fast the client alone can go on this machine.
"""

from __future__ import annotations

import os
import socket
import sys

CHUNK = 1 << 20


def read_head(conn: socket.socket) -> tuple[bytes, bytes]:
    """Reads up to the end of the request headers; returns (headers, body bytes read so far)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("connection closed in the request headers")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def serve(conn: socket.socket, path: str) -> None:
    """Handles one request on `conn`."""
    head, rest = read_head(conn)
    lines = head.split(b"\r\n")
    method = lines[0].split(b" ", 1)[0]
    if method == b"GET":
        size = os.path.getsize(path)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        )
        with open(path, "rb") as f:
            offset = 0
            while offset < size:
                sent = os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        return
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    buf = memoryview(bytearray(CHUNK))
    got = len(rest)
    while got < length:
        n = conn.recv_into(buf)
        if n == 0:
            break
        got += n
    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = sys.argv[1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                serve(conn, path)
            except (ConnectionError, OSError, ValueError) as err:
                print(f"sink: {err}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
