#!/usr/bin/env python3
"""Small network helper run inside test namespaces (stdlib only).

  nettool.py serve HOST PORT           TCP server: each connection sends a 9-byte request
                                        b'S'|b'R' + 8-byte big-endian size. 'S': the server sends `size`
                                        bytes of the test pattern and closes. 'R': it reads `size` bytes and
                                        answers with their SHA-256 hex digest. Prints LISTENING when bound.
  nettool.py get HOST PORT SIZE        prints the SHA-256 of the SIZE bytes received ('S' request)
  nettool.py put HOST PORT SIZE        sends SIZE pattern bytes ('R' request), prints the server's digest
  nettool.py parallel HOST PORT N SIZE N concurrent 'S' transfers; prints one digest per line
  nettool.py half-close HOST PORT SIZE sends SIZE bytes, shuts its write side, prints the server's digest
                                        (the server reads to EOF first: FIN from the client)
  nettool.py stall-get HOST PORT SIZE SECONDS   like get, but stops reading for SECONDS after 1 MiB
  nettool.py stall-put HOST PORT SIZE SECONDS   like put, but the server stops reading for SECONDS after 1 MiB
  nettool.py expect-reset HOST PORT    the server resets the connection (RST); prints RESET when seen
  nettool.py send-reset HOST PORT      connects, then aborts with RST; the server prints "EVENT reset"
  nettool.py pattern-sha SIZE          prints the SHA-256 of SIZE pattern bytes
  nettool.py udp-refused HOST PORT     sends one datagram on a connected socket; prints REFUSED if an ICMP
                                        port unreachable comes back within 5 s, else TIMEOUT
  nettool.py udp-sink HOST PORT N SIZE  receives N datagrams (a 4 MiB buffer; gives up 10 s after the last);
                                        prints "GOT <count> ORDERED <yes|no> BAD <count>" (BAD: wrong size/content)
  nettool.py udp-burst HOST PORT N SIZE sends N numbered datagrams of SIZE bytes back to back
  nettool.py raw-send HOST PORT SIZE   to a plain listener (a guest's `nc -l`): connects (retrying for 60 s
                                        while refused), sends SIZE pattern bytes, closes; prints SENT
  nettool.py raw-recv HOST PORT        from a plain sender (a guest's `nc -l < FILE`): connects (retrying
                                        for 60 s while refused), reads to EOF; prints "<bytes> <sha256>"
"""

import hashlib
import socket
import socketserver
import struct
import sys
import threading
import time

STALL = 10.0

BLOCK = hashlib.sha256(b"vnet test pattern").digest() * 2048  # 64 KiB, deterministic


def pattern_chunks(size):
    while size > 0:
        n = min(size, len(BLOCK))
        yield BLOCK[:n]
        size -= n


def udp_datagram(seq, size):
    """Datagram `seq` of a udp-burst: its number, then pattern bytes that depend on it."""
    head = struct.pack("!I", seq)
    body = BLOCK[seq % 251:][:size - 4]
    return (head + body)[:size]


def pattern_sha(size):
    h = hashlib.sha256()
    for c in pattern_chunks(size):
        h.update(c)
    return h.hexdigest()


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(1 << 20, n - len(buf)))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        req = recv_exact(s, 9)
        kind, size = req[:1], struct.unpack("!Q", req[1:])[0]
        if kind == b"S":
            for c in pattern_chunks(size):
                s.sendall(c)
        elif kind == b"H":
            h = hashlib.sha256()
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
            s.sendall(h.hexdigest().encode())
        elif kind == b"X":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        elif kind == b"W":
            try:
                while s.recv(65536):
                    pass
                print("EVENT eof", flush=True)
            except ConnectionResetError:
                print("EVENT reset", flush=True)
        elif kind == b"T":
            h = hashlib.sha256()
            left, stalled = size, False
            while left:
                if not stalled and size - left >= (1 << 20):
                    time.sleep(STALL)
                    stalled = True
                chunk = s.recv(min(1 << 20, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            s.sendall(h.hexdigest().encode())
        elif kind == b"E":
            # `size` request/response rounds of 64 bytes: each request comes back as its reply.
            for _ in range(size):
                s.sendall(recv_exact(s, 64))
        elif kind == b"R":
            h = hashlib.sha256()
            left = size
            while left:
                chunk = s.recv(min(1 << 20, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            s.sendall(h.hexdigest().encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


def pingpong(host, port, rounds):
    """`rounds` 64-byte requests, each waiting for its echo (a request/response exchange)."""
    s = connect_retrying(host, port)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"E" + struct.pack("!Q", rounds))
    for i in range(rounds):
        req = bytes((i + j) & 0xFF for j in range(64))
        s.sendall(req)
        if recv_exact(s, 64) != req:
            raise SystemExit(f"round {i}: wrong reply")
    s.close()
    print(f"ROUNDS {rounds} OK", flush=True)


def get(host, port, size):
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(b"S" + struct.pack("!Q", size))
        h = hashlib.sha256()
        got = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        if got != size:
            return f"SHORT {got}"
        return h.hexdigest()


def stall_get(host, port, size, seconds):
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(b"S" + struct.pack("!Q", size))
        h = hashlib.sha256()
        got, stalled = 0, False
        while True:
            if not stalled and got >= (1 << 20):
                time.sleep(seconds)
                stalled = True
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        return h.hexdigest() if got == size else f"SHORT {got}"


def put(host, port, size):
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(b"R" + struct.pack("!Q", size))
        for c in pattern_chunks(size):
            s.sendall(c)
        return recv_exact(s, 64).decode()


def connect_retrying(host, port, deadline=60.0):
    """A guest's listener may not be up yet: retry refused connections until the deadline."""
    end = time.monotonic() + deadline
    while True:
        try:
            return socket.create_connection((host, port), timeout=120)
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def main(argv):
    cmd = argv[1]
    if cmd == "serve":
        if ":" in argv[2]:
            Server.address_family = socket.AF_INET6
        srv = Server((argv[2], int(argv[3])), Handler)
        print("LISTENING", flush=True)
        srv.serve_forever()
    elif cmd == "get":
        print(get(argv[2], int(argv[3]), int(argv[4])))
    elif cmd == "pingpong":
        pingpong(argv[2], int(argv[3]), int(argv[4]))
    elif cmd == "put":
        print(put(argv[2], int(argv[3]), int(argv[4])))
    elif cmd == "parallel":
        n, size = int(argv[4]), int(argv[5])
        results = [None] * n

        def run(i):
            try:
                results[i] = get(argv[2], int(argv[3]), size)
            except Exception as e:  # reported, never hidden
                results[i] = f"ERROR {e!r}"
        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("\n".join(results))
    elif cmd == "half-close":
        with socket.create_connection((argv[2], int(argv[3])), timeout=120) as s:
            s.sendall(b"H" + b"\0" * 8)
            for c in pattern_chunks(int(argv[4])):
                s.sendall(c)
            s.shutdown(socket.SHUT_WR)
            reply = recv_exact(s, 64).decode()
            print(reply if s.recv(1) == b"" else "NO-EOF")
    elif cmd == "stall-get":
        print(stall_get(argv[2], int(argv[3]), int(argv[4]), float(argv[5])))
    elif cmd == "stall-put":
        size = int(argv[4])
        with socket.create_connection((argv[2], int(argv[3])), timeout=120) as s:
            s.sendall(b"T" + struct.pack("!Q", size))
            for c in pattern_chunks(size):
                s.sendall(c)
            print(recv_exact(s, 64).decode())
    elif cmd == "expect-reset":
        with socket.create_connection((argv[2], int(argv[3])), timeout=30) as s:
            s.sendall(b"X" + b"\0" * 8)
            try:
                data = s.recv(100)
                print("EOF" if data == b"" else "DATA")
            except ConnectionResetError:
                print("RESET")
    elif cmd == "send-reset":
        s = socket.create_connection((argv[2], int(argv[3])), timeout=30)
        s.sendall(b"W" + b"\0" * 8 + b"some bytes")
        time.sleep(0.5)  # let the request reach the server before the RST (ordering, not a wait for a result)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        print("SENT")
    elif cmd == "raw-send":
        with connect_retrying(argv[2], int(argv[3])) as s:
            for c in pattern_chunks(int(argv[4])):
                s.sendall(c)
        print("SENT", flush=True)
    elif cmd == "raw-recv":
        with connect_retrying(argv[2], int(argv[3])) as s:
            h, n = hashlib.sha256(), 0
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
        print(n, h.hexdigest(), flush=True)
    elif cmd == "pattern-sha":
        print(pattern_sha(int(argv[2])))
    elif cmd == "udp-sink":
        n, size = int(argv[4]), int(argv[5])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((argv[2], int(argv[3])))
        s.settimeout(10)
        print("LISTENING", flush=True)
        got, bad, last, ordered = 0, 0, -1, True
        while got < n:
            try:
                d = s.recv(65536)
            except socket.timeout:
                break
            got += 1
            seq = struct.unpack("!I", d[:4])[0] if len(d) >= 4 else -1
            if len(d) != size or d != udp_datagram(seq, size):
                bad += 1
            ordered = ordered and seq > last
            last = seq
        print(f"GOT {got} ORDERED {'yes' if ordered else 'no'} BAD {bad}", flush=True)
    elif cmd == "udp-burst":
        n, size = int(argv[4]), int(argv[5])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((argv[2], int(argv[3])))
        for i in range(n):
            s.send(udp_datagram(i, size))
        print("SENT", n, flush=True)
    elif cmd == "udp-refused":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((argv[2], int(argv[3])))
        s.send(b"anyone there?")
        try:
            s.recv(100)
            print("REPLY")
        except ConnectionRefusedError:
            print("REFUSED")
        except socket.timeout:
            print("TIMEOUT")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
