"""Bulk TCP integrity on every guest transport: one TCG guest with three NICs moves SIZE bytes each way on each,
checked by SHA-256 against what the host sent or expected.

  eth0  -netdev stream -> `vnet user` (10.0.2.0/24)     the stream port's TCP gather (GatewayTCPBatch)
  eth1  -netdev stream -> `vnet nat` (192.168.122.0/24)  the switch + gateway
  eth2  -netdev dgram  -> `vnet user --dgram` (10.0.3.0/24)

Down (host -> guest): busybox wget of SIZE random bytes from a host HTTP server on loopback, piped to sha256sum
in the guest. Up (guest -> host): the guest sends a 1 MiB + 7 byte random block (fetched first) SIZE/block
times into nc; a host sink on loopback hashes what arrives. The block's odd length keeps its seams off any
segment or buffer boundary. SIZE is 16 MiB (CI) or 64 MiB with VNET_LONG=1 (TCG moves a few MB/s per direction
on two shared cores; see the printed rates).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

LONG = os.environ.get("VNET_LONG") == "1"
SIZE = (64 << 20) if LONG else (16 << 20)
BLOCK = os.urandom((1 << 20) + 7)
REPEATS = SIZE // len(BLOCK) + 1   # just over SIZE
UP_BYTES = REPEATS * len(BLOCK)
DOWN = os.urandom(SIZE)

# name, guest interface, gateway address (reaches host loopback), MAC
LINKS = [("user-stream", "eth0", "10.0.2.2", "52:54:00:12:40:01"),
         ("nat-stream", "eth1", "192.168.122.1", "52:54:00:12:40:02"),
         ("user-dgram", "eth2", "10.0.3.2", "52:54:00:12:40:03")]


class HashSink:
    """TCP server on loopback: each connection is read until `expect` bytes (or EOF) and closed; the
    (bytes, sha256) of each goes to `results`."""

    def __init__(self, expect: int):
        self.expect = expect
        self.results: list[tuple[int, str]] = []
        self.cond = threading.Condition()
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c):
        h, n = hashlib.sha256(), 0
        with c:
            c.settimeout(300)
            try:
                while n < self.expect:
                    b = c.recv(min(1 << 20, self.expect - n))
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
            except OSError:
                pass
        with self.cond:
            self.results.append((n, h.hexdigest()))
            self.cond.notify_all()

    def wait_result(self, index: int, timeout: float) -> tuple[int, str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.results) > index, timeout), "the sink got no upload"
            return self.results[index]

    def close(self):
        self.srv.close()


@pytest.fixture(scope="module")
def rigged(guest_image, module_workdir, module_log_dir):
    d = Path(module_workdir)
    user_sock, nat_sock = d / "user.sock", d / "nat.sock"
    ours, theirs = d / "vnet.dgram", d / "qemu.dgram"
    sink = HashSink(UP_BYTES)
    try:
        with rig.HttpServer({"/down": DOWN, "/block": BLOCK}) as http, \
                rig.VnetProcess(["user", "--socket", user_sock], log_dir=module_log_dir, name="vnet-user") as user, \
                rig.VnetProcess(["nat", "--socket", nat_sock], log_dir=module_log_dir, name="vnet-nat") as nat, \
                rig.VnetProcess(["user", "user,net=10.0.3.0/24", "--dgram", ours], log_dir=module_log_dir,
                                name="vnet-dgram") as dgram:
            netdevs = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={user_sock}"]
            extra = ["-netdev", f"stream,id=n1,server=off,addr.type=unix,addr.path={nat_sock}",
                     "-device", f"virtio-net-pci,netdev=n1,mac={LINKS[1][3]}",
                     "-netdev", f"dgram,id=n2,local.type=unix,local.path={theirs},remote.type=unix,remote.path={ours}",
                     "-device", f"virtio-net-pci,netdev=n2,mac={LINKS[2][3]}"]
            with rig.Guest(guest_image, netdevs, workdir=module_workdir, log_dir=module_log_dir, name="guest",
                           mac=LINKS[0][3], qemu_args=extra) as g:
                for _, iface, gw, mac in LINKS:
                    assert g.check(f"cat /sys/class/net/{iface}/address").strip() == mac
                    lease = g.dhcp(iface)
                    assert lease["router"] == gw, (iface, lease)
                g.check(f"wget -q -O /tmp/block {http.url('/block', host=LINKS[0][2])}", timeout=60)
                assert g.check("sha256sum /tmp/block").split()[0] == hashlib.sha256(BLOCK).hexdigest()
                yield SimpleNamespace(guest=g, http=http, sink=sink, vnets={"user-stream": user, "nat-stream": nat,
                                                                            "user-dgram": dgram})
    finally:
        sink.close()


@pytest.mark.parametrize("link", LINKS, ids=[l[0] for l in LINKS])
def test_download_checked_by_sha256(rigged, link):
    name, _, gw, _ = link
    start = time.monotonic()
    out = rigged.guest.check(f"wget -q -O - {rigged.http.url('/down', host=gw)} | sha256sum", timeout=900)
    took = time.monotonic() - start
    print(f"{name}: {SIZE >> 20} MiB host->guest in {took:.1f} s ({SIZE / took / 1e6:.1f} MB/s)")
    assert out.split()[0] == hashlib.sha256(DOWN).hexdigest(), out


@pytest.mark.parametrize("link", LINKS, ids=[l[0] for l in LINKS])
def test_upload_checked_by_sha256(rigged, link):
    name, _, gw, _ = link
    index = len(rigged.sink.results)
    expected = hashlib.sha256(BLOCK * REPEATS).hexdigest()
    start = time.monotonic()
    # nc ends when the sink has read everything and closes; its exit status then says nothing, the digest does.
    rigged.guest.run(f"i=0; while [ $i -lt {REPEATS} ]; do cat /tmp/block; i=$((i+1)); done | "
                     f"nc {gw} {rigged.sink.port}", timeout=900)
    n, digest = rigged.sink.wait_result(index, timeout=60)
    took = time.monotonic() - start
    print(f"{name}: {UP_BYTES >> 20} MiB guest->host in {took:.1f} s ({UP_BYTES / took / 1e6:.1f} MB/s)")
    assert (n, digest) == (UP_BYTES, expected)


def test_no_bad_checksums_and_the_gather_ran(rigged):
    """No frame was dropped for a bad checksum on any link; the stream ports of vnet user and of vnet nat (one runtime,
    the same fast paths) used the TCP gather."""
    for name, vnet in rigged.vnets.items():
        c = rig.read_counters(vnet)
        assert c.get("drop_tcp_bad_checksum", 0) == 0 and c.get("drop_ipv4_bad_checksum", 0) == 0, (name, c)
    for name in ("user-stream", "nat-stream"):
        c = rig.read_counters(rigged.vnets[name])
        assert c.get("tcp_gathered_sends", 0) > 0, (name, c)
