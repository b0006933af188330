"""DHCPDISCOVER storms over vnet's stream framing (4-byte big-endian length, then the frame), for test_dhcp_storm.py.

  StormPort(path)        a switch port of its own on `vnet nat`'s socket: DISCOVERs from N made-up MACs, round
                         robin, until stopped; it reads the replies and counts offers per address.
  StormProxy(vnet_sock)  sits between QEMU and `vnet user`'s socket (QEMU connects to `proxy.path`): relays every
                         frame both ways and slips the same DISCOVER storm in between the guest's frames; replies
                         to the made-up MACs are counted, not passed to the guest.
The made-up MACs are 52:54:aa:TT:xx:xx (TT: a tag), never a real guest's. Stdlib only.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import floodtool


def made_up_mac(i: int, tag: int) -> bytes:
    return floodtool.fake_mac(i, tag)


def discover_frame(mac: bytes, xid: int) -> bytes:
    """A DHCPDISCOVER from `mac` without the broadcast flag, so the OFFER goes to that MAC alone."""
    opts = bytes([53, 1, 1, 55, 2, 1, 3, 255])
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0, b"\0" * 4, b"\0" * 4, b"\0" * 4,
                        b"\0" * 4, mac + b"\0" * 10, b"", b"") + b"\x63\x82\x53\x63" + opts
    src, dst = b"\0" * 4, b"\xff" * 4
    ulen = 8 + len(bootp)
    udp = struct.pack("!HHHH", 68, 67, ulen, 0) + bootp
    c = floodtool.csum(udp, floodtool.csum_add(0, src + dst + struct.pack("!HH", 17, ulen))) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return b"\xff" * 6 + mac + b"\x08\x00" + floodtool.ip_header(src, dst, 17, ulen) + udp


def is_made_up(mac: bytes, tag: int) -> bool:
    return mac[:4] == bytes([0x52, 0x54, 0xAA, tag & 0xFF])


def dhcp_reply(frame: bytes):
    """(message type, yiaddr) of a DHCP reply (to UDP port 68), or None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    u = 14 + (frame[14] & 15) * 4
    if len(frame) < u + 8 + 240 or struct.unpack("!H", frame[u + 2:u + 4])[0] != 68:
        return None
    b = frame[u + 8:]
    opts, i, mtype = b[240:], 0, None
    while i + 1 < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        if opts[i] == 53 and opts[i + 1] >= 1:
            mtype = opts[i + 2]
        i += 2 + opts[i + 1]
    return mtype, socket.inet_ntoa(b[16:20])


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(s: socket.socket) -> bytes | None:
    head = recv_exact(s, 4)
    if head is None:
        return None
    return recv_exact(s, struct.unpack("!I", head)[0])


class Storm:
    """DISCOVERs from `macs` made-up MACs, round robin, one every `interval` seconds, while running."""

    def __init__(self, macs: int = 200, tag: int = 0x5A, interval: float = 0.002):
        self.macs, self.tag, self.interval = macs, tag, interval
        self.sent = 0
        self.offers: dict[str, int] = {}    # address -> offers seen for the made-up MACs
        self.acks = 0
        self.stop_event = threading.Event()
        self.storm_stop = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    def discover(self) -> bytes:
        i = self.sent % self.macs
        self.sent += 1
        frame = discover_frame(made_up_mac(i, self.tag), 0x5A000000 + self.sent)
        return struct.pack("!I", len(frame)) + frame

    def count_reply(self, frame: bytes) -> bool:
        """Counts a reply to a made-up MAC; True if it was one."""
        if not is_made_up(frame[:6], self.tag) and not (frame[:6] == b"\xff" * 6 and self._chaddr_made_up(frame)):
            return False
        r = dhcp_reply(frame)
        if r is not None:
            with self.lock:
                if r[0] == 2:
                    self.offers[r[1]] = self.offers.get(r[1], 0) + 1
                elif r[0] == 5:
                    self.acks += 1
        return True

    def _chaddr_made_up(self, frame: bytes) -> bool:
        u = 14 + (frame[14] & 15) * 4 if len(frame) > 14 else 0
        return len(frame) >= u + 8 + 34 and is_made_up(frame[u + 8 + 28:u + 8 + 34], self.tag)

    def offer_count(self) -> int:
        with self.lock:
            return sum(self.offers.values())

    def spawn(self, fn) -> None:
        def guarded():
            try:
                fn()
            except BaseException as e:   # reported by check()
                if not self.stop_event.is_set():
                    self.error = e
        t = threading.Thread(target=guarded, daemon=True)
        t.start()
        self.threads.append(t)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"storm failed: {self.error!r}")

    def join(self) -> None:
        self.stop_event.set()
        self.storm_stop.set()
        for t in self.threads:
            t.join(timeout=10)


class StormPort(Storm):
    def __init__(self, path, **kw):
        super().__init__(**kw)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))

    def __enter__(self):
        self.spawn(self._send)
        self.spawn(self._receive)
        return self

    def _send(self):
        while not self.stop_event.is_set() and not self.storm_stop.wait(self.interval):
            self.sock.sendall(self.discover())

    def _receive(self):
        while not self.stop_event.is_set():
            f = read_frame(self.sock)
            if f is None:
                return
            self.count_reply(f)

    def __exit__(self, *exc):
        self.stop_event.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join()
        self.sock.close()


class StormProxy(Storm):
    def __init__(self, vnet_sock, path, **kw):
        super().__init__(**kw)
        self.vnet_sock_path = str(vnet_sock)
        self.path = str(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.guest: socket.socket | None = None
        self.vnet: socket.socket | None = None
        self.to_vnet = threading.Lock()
        self.connected = threading.Event()
        self.relayed = [0, 0]   # frames guest->vnet, vnet->guest

    def __enter__(self):
        self.spawn(self._accept)
        return self

    def _accept(self):
        self.listener.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                self.guest, _ = self.listener.accept()
                break
            except socket.timeout:
                continue
        else:
            return
        self.guest.settimeout(None)
        self.vnet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.vnet.connect(self.vnet_sock_path)
        self.connected.set()
        self.spawn(self._guest_to_vnet)
        self.spawn(self._vnet_to_guest)

    def start_storm(self):
        assert self.connected.wait(60), "QEMU never connected to the storm proxy"
        self.spawn(self._storm)

    def _storm(self):
        while not self.stop_event.is_set() and not self.storm_stop.wait(self.interval):
            with self.to_vnet:
                self.vnet.sendall(self.discover())

    def _guest_to_vnet(self):
        while not self.stop_event.is_set():
            f = read_frame(self.guest)
            if f is None:
                return
            with self.to_vnet:
                self.vnet.sendall(struct.pack("!I", len(f)) + f)
            self.relayed[0] += 1

    def _vnet_to_guest(self):
        while not self.stop_event.is_set():
            f = read_frame(self.vnet)
            if f is None:
                return
            if self.count_reply(f):
                continue
            self.guest.sendall(struct.pack("!I", len(f)) + f)
            self.relayed[1] += 1

    def stop_storm(self):
        """Stops the storm (the relay goes on)."""
        self.storm_stop.set()

    def __exit__(self, *exc):
        self.stop_event.set()
        for s in (self.guest, self.vnet, self.listener):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.join()
        for s in (self.guest, self.vnet, self.listener):
            if s is not None:
                s.close()
