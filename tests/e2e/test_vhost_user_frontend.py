"""vhost-user edge cases QEMU never produces, against a real `vnet user --vhost-user`.

A small frontend written for the tests plays QEMU's part: a memfd as the guest's RAM, split rings laid out in
it, kick and call eventfds, the messages of docs/interop/vhost-user.rst. The good path first (a DHCP
DISCOVER through the TX ring comes back as an OFFER in an RX buffer, MRG_RXBUF's num_buffers set), then the
hostile cases of docs/hostile-input.md: each gets a clear error (the connection closed for a malformed
message, a REPLY_ACK failure for an unknown request, the ring stopped and counted for a broken ring) and vnet
keeps serving the next frontend. Real QEMU is in test_vhost_user.py; this is not a stand-in for it.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import time
from pathlib import Path

import pytest

import rig

GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE = 1, 2, 3, 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, SET_VRING_ENABLE = 12, 13, 15, 16, 18
VERSION_1, MRG_RXBUF, PROTOCOL_FEATURES, INDIRECT = 1 << 32, 1 << 15, 1 << 30, 1 << 28
REPLY_ACK = 1 << 3
NEED_REPLY = 0x8
RAM = 1 << 20
QEMU_VA = 0x7F00_0000_0000
QSIZE = 8
# ring layout in the RAM: queue q at q * 0x8000 (descriptors, avail +0x1000, used +0x2000), buffers from 0x10000
MAC = bytes.fromhex("525400123456")


class Frontend:
    def __init__(self, path: Path, features: int = VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES | INDIRECT):
        deadline = time.monotonic() + 10
        while True:   # vnet serves one frontend at a time: wait until it let the previous one go
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(5)
            self.s.connect(str(path))
            try:
                self.offered = self.request_u64(GET_FEATURES)
                break
            except (ConnectionError, EOFError, OSError):
                self.s.close()
                assert time.monotonic() < deadline, "vnet never took a new frontend"
                time.sleep(0.05)
        self.fd = os.memfd_create("guest-ram")
        os.ftruncate(self.fd, RAM)
        self.ram = mmap.mmap(self.fd, RAM)
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]
        self.avail = [0, 0]
        self.features = features

    def close(self):
        self.s.close()
        for fd in self.kick + self.call + [self.fd]:
            os.close(fd)
        self.ram.close()

    # -- messages
    def send(self, request: int, payload: bytes = b"", fds=(), flags: int = 1):
        data = struct.pack("<III", request, flags, len(payload)) + payload
        if fds:
            socket.send_fds(self.s, [data], list(fds))
        else:
            self.s.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            b = self.s.recv(n - len(out))
            if not b:
                raise EOFError("vnet closed the connection")
            out += b
        return out

    def reply(self, request: int) -> bytes:
        req, flags, size = struct.unpack("<III", self.recv_exact(12))
        assert (req, flags & 0x7) == (request, 0x5), (req, flags)
        return self.recv_exact(size)

    def request_u64(self, request: int) -> int:
        self.send(request)
        return struct.unpack("<Q", self.reply(request))[0]

    def acked(self, request: int, payload: bytes = b"", fds=()) -> int:
        self.send(request, payload, fds, flags=1 | NEED_REPLY)
        return struct.unpack("<Q", self.reply(request))[0]

    def closed_by_vnet(self) -> bool:
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True

    # -- set-up
    def handshake(self):
        assert self.offered & (VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES) == VERSION_1 | MRG_RXBUF | PROTOCOL_FEATURES
        assert self.request_u64(GET_PROTOCOL_FEATURES) & REPLY_ACK
        self.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", REPLY_ACK))
        self.send(SET_OWNER)
        assert self.acked(SET_FEATURES, struct.pack("<Q", self.features)) == 0
        table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, RAM, QEMU_VA, 0)
        assert self.acked(SET_MEM_TABLE, table, [self.fd]) == 0
        for q in (0, 1):
            base = q * 0x8000
            assert self.acked(SET_VRING_NUM, struct.pack("<II", q, QSIZE)) == 0
            assert self.acked(SET_VRING_BASE, struct.pack("<II", q, 0)) == 0
            addr = struct.pack("<IIQQQQ", q, 0, QEMU_VA + base, QEMU_VA + base + 0x2000, QEMU_VA + base + 0x1000, 0)
            assert self.acked(SET_VRING_ADDR, addr) == 0
            assert self.acked(SET_VRING_CALL, struct.pack("<Q", q), [self.call[q]]) == 0
            assert self.acked(SET_VRING_KICK, struct.pack("<Q", q), [self.kick[q]]) == 0
            assert self.acked(SET_VRING_ENABLE, struct.pack("<II", q, 1)) == 0

    # -- rings
    def desc(self, q: int, i: int, addr: int, length: int, flags: int, nxt: int = 0, table: int | None = None):
        at = (q * 0x8000 if table is None else table) + 16 * i
        self.ram[at:at + 16] = struct.pack("<QIHH", addr, length, flags, nxt)

    def offer(self, q: int, head: int, kick: bool = True, idx: int | None = None):
        a = q * 0x8000 + 0x1000
        slot = self.avail[q] % QSIZE
        self.ram[a + 4 + 2 * slot:a + 6 + 2 * slot] = struct.pack("<H", head)
        self.avail[q] = (self.avail[q] + 1) & 0xFFFF if idx is None else idx
        self.ram[a + 2:a + 4] = struct.pack("<H", self.avail[q])
        if kick:
            os.eventfd_write(self.kick[q], 1)

    def used_idx(self, q: int) -> int:
        u = q * 0x8000 + 0x2000
        return struct.unpack("<H", self.ram[u + 2:u + 4])[0]

    def used(self, q: int, slot: int) -> tuple[int, int]:
        u = q * 0x8000 + 0x2000 + 4 + 8 * (slot % QSIZE)
        return struct.unpack("<II", self.ram[u:u + 8])

    def wait_used(self, q: int, count: int, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while self.used_idx(q) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"queue {q}: used idx {self.used_idx(q)}, wanted {count}"
            select.select([self.call[q]], [], [], min(left, 0.2))
            try:
                os.eventfd_read(self.call[q])
            except BlockingIOError:
                pass


def dhcp_discover() -> bytes:
    bootp = bytearray(240)
    bootp[0], bootp[1], bootp[2] = 1, 1, 6
    bootp[4:8] = b"\x12\x34\x56\x78"
    bootp[28:34] = MAC
    bootp[236:240] = b"\x63\x82\x53\x63"
    options = bytes([53, 1, 1, 255])
    udp_payload = bytes(bootp) + options
    udp = struct.pack("!HHHH", 68, 67, 8 + len(udp_payload), 0) + udp_payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, b"\0\0\0\0", b"\xff\xff\xff\xff"))
    s = sum(struct.unpack("!10H", bytes(ip)))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    ip[10:12] = struct.pack("!H", ~s & 0xFFFF)
    return b"\xff" * 6 + MAC + b"\x08\x00" + bytes(ip) + udp


@pytest.fixture(scope="module")
def vnet(module_workdir, module_log_dir):
    path = Path(module_workdir) / "fe.vhost"
    with rig.VnetProcess(["user", "--vhost-user", path], log_dir=module_log_dir, name="vnet-frontend") as v:
        v.wait_for_line(r"^vnet: ready$", timeout=10)
        yield v, path


def good_round_trip(path: Path):
    fe = Frontend(path)
    try:
        fe.handshake()
        for i in range(QSIZE):   # receive buffers: 2 KiB each, device-writable
            fe.desc(0, i, 0x10000 + 0x800 * i, 0x800, 2)
            fe.offer(0, i, kick=False)
        os.eventfd_write(fe.kick[0], 1)
        frame = bytes(12) + dhcp_discover()
        fe.ram[0x20000:0x20000 + len(frame)] = frame
        fe.desc(1, 0, 0x20000, 12, 1, 1)                    # header, then the frame: a chain of two
        fe.desc(1, 1, 0x2000C, len(frame) - 12, 0)
        fe.offer(1, 0)
        fe.wait_used(1, 1)
        fe.wait_used(0, 1)
        head, length = fe.used(0, 0)
        buf = 0x10000 + 0x800 * head
        got = bytes(fe.ram[buf:buf + length])
        assert struct.unpack("<H", got[10:12])[0] == 1           # num_buffers
        eth = got[12:]
        assert eth[0:6] == MAC and eth[12:14] == b"\x08\x00" and eth[23] == 17
        assert struct.unpack("!HH", eth[34:38]) == (67, 68)      # a DHCP reply
        assert fe.acked(GET_VRING_BASE + 100) == 1                 # an unknown request: refused, the link stays
        fe.send(GET_VRING_BASE, struct.pack("<II", 1, 0))
        assert struct.unpack("<II", fe.reply(GET_VRING_BASE)) == (1, 1)   # stopped where it was
    finally:
        fe.close()


def test_good_frontend_gets_a_dhcp_offer(vnet):
    good_round_trip(vnet[1])


def hostile_message(fe: Frontend, case: str):
    if case == "wrong-size":
        fe.send(SET_FEATURES, b"\0\0\0\0")
    elif case == "kick-without-fd":
        fe.send(SET_VRING_KICK, struct.pack("<Q", 0))
    elif case == "memtable-overlap":
        table = struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 0x1000, QEMU_VA, 0) + struct.pack("<QQQQ", 0x800, 0x1000, QEMU_VA + 0x10000, 0)
        fe.send(SET_MEM_TABLE, table, [fe.fd, fe.fd])
    elif case == "memtable-zero":
        fe.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0, QEMU_VA, 0), [fe.fd])
    elif case == "memtable-fd-count":
        fe.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, RAM, QEMU_VA, 0), [fe.fd, fe.fd])
    elif case == "huge-payload":
        fe.s.sendall(struct.pack("<III", SET_FEATURES, 1, 1 << 20))
    elif case == "bad-version":
        fe.send(GET_FEATURES, flags=2)


@pytest.mark.parametrize("case", ["wrong-size", "kick-without-fd", "memtable-overlap", "memtable-zero",
                                  "memtable-fd-count", "huge-payload", "bad-version"])
def test_malformed_message_closes_the_connection(vnet, case):
    v, path = vnet
    before = rig.read_counters(v).get("port_vhost_protocol_errors", 0)
    fe = Frontend(path)
    try:
        hostile_message(fe, case)
        assert fe.closed_by_vnet()
    finally:
        fe.close()
    assert rig.read_counters(v).get("port_vhost_protocol_errors", 0) == before + 1


def hostile_ring(fe: Frontend, case: str):
    if case == "loop":
        fe.desc(1, 0, 0x20000, 64, 1, 1)
        fe.desc(1, 1, 0x20000, 64, 1, 0)
        fe.offer(1, 0)
    elif case == "longer-than-queue":
        for i in range(QSIZE):
            fe.desc(1, i, 0x20000, 8, 1, (i + 1) % QSIZE)
        fe.offer(1, 3)
    elif case == "outside-memory":
        fe.desc(1, 0, RAM - 8, 64, 0)
        fe.offer(1, 0)
    elif case == "length-overflow":
        fe.desc(1, 0, 0xFFFF_FFFF_FFFF_FF00, 0xFFFF_FFFF, 0)
        fe.offer(1, 0)
    elif case == "indirect-outside":
        fe.desc(1, 0, RAM + 0x1000, 32, 4)
        fe.offer(1, 0)
    elif case == "indirect-bad-length":
        fe.desc(1, 0, 0x30000, 17, 4)
        fe.offer(1, 0)
    elif case == "avail-jump":
        fe.desc(1, 0, 0x20000, 64, 0)
        fe.offer(1, 0, idx=QSIZE + 5)


@pytest.mark.parametrize("case", ["loop", "longer-than-queue", "outside-memory", "length-overflow",
                                  "indirect-outside", "indirect-bad-length", "avail-jump"])
def test_broken_ring_is_stopped_and_counted(vnet, case):
    v, path = vnet
    before = rig.read_counters(v).get("port_vhost_ring_errors", 0)
    fe = Frontend(path)
    try:
        fe.handshake()
        hostile_ring(fe, case)
        rig.wait_for(lambda: rig.read_counters(v).get("port_vhost_ring_errors", 0) == before + 1, timeout=5,
                     message=f"ring error counted for {case}")
        # The control connection still answers: only the ring stopped.
        assert fe.request_u64(GET_FEATURES) == fe.offered
    finally:
        fe.close()


def test_region_larger_than_its_file_is_refused(vnet):
    """A region past the end of its memfd would fault when touched: SET_MEM_TABLE fails (REPLY_ACK says 1)."""
    fe = Frontend(vnet[1])
    try:
        assert fe.request_u64(GET_PROTOCOL_FEATURES) & REPLY_ACK
        fe.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", REPLY_ACK))
        table = struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 2 * RAM, QEMU_VA, 0)
        assert fe.acked(SET_MEM_TABLE, table, [fe.fd]) == 1
        assert fe.request_u64(GET_FEATURES) == fe.offered
    finally:
        fe.close()


def test_vnet_still_serves_after_every_hostile_case(vnet):
    good_round_trip(vnet[1])


def test_sandboxed_vnet_serves_a_frontend(workdir, log_dir):
    """Under --sandbox (seccomp, no capabilities) the port still maps the memfd, takes fds and moves frames."""
    path = Path(workdir) / "sandboxed.vhost"
    with rig.VnetProcess(["user", "--vhost-user", path, "--sandbox"], log_dir=log_dir, name="vnet-sandboxed") as v:
        v.wait_for_line(r"^vnet: ready$", timeout=10)
        good_round_trip(path)
        assert rig.read_counters(v).get("dhcp_replies", 0) == 1
