"""The embeddable network and the vfkit transport, with a real guest.

1. The example target (`vnet-embed-example`, README's "Embedding vnet" code) serves a QEMU TCG guest over its
   stream socket and two datagram "VMs" driven by this test over its vfkit socket (unixgram, the `VFKT`
   handshake datagram first, then one frame per datagram, as vfkit does): both get leases, the example prints
   the lease events, the guest pings both datagram VMs; SIGTERM shuts it down gracefully.
2. `vnet nat --vfkit PATH` and `vnet user --vfkit PATH`: the same vfkit client gets a lease out of process,
   as vfkit and krunkit would from gvproxy.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

import rig


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    h = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0, src, dst)
    return h[:10] + struct.pack(">H", checksum(h)) + h[12:] + payload


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return (dst + src + struct.pack(">H", ethertype) + payload).ljust(60, b"\0")


class VfkitVM:
    """A datagram "VM" over a vfkit-style unixgram socket: handshake, DHCP, then answers ARP and ping."""

    def __init__(self, server: Path, own: Path):
        self.mac = bytes([0x5a, 0x94, 0xef, random.randrange(256), random.randrange(256), random.randrange(256)])
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(own))
        self.sock.connect(str(server))
        self.sock.send(b"VFKT")
        self.ip = b""
        self.answered_pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mac_text(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)

    @property
    def ip_text(self) -> str:
        return socket.inet_ntoa(self.ip)

    def receive(self, match, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching frame before the deadline")
            self.sock.settimeout(left)
            try:
                f = self.sock.recv(65600)
            except socket.timeout:
                continue
            if match(f):
                return f

    def _dhcp(self, kind: int, xid: int, requested: bytes = b"", server: bytes = b"") -> bytes:
        b = struct.pack(">BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4)
        b += self.mac + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63" + bytes([53, 1, kind])
        if requested:
            b += bytes([50, 4]) + requested
        if server:
            b += bytes([54, 4]) + server
        b += bytes([12, 5]) + b"vfkit" + b"\xff"
        udp = struct.pack(">HHHH", 68, 67, 8 + len(b), 0) + b
        return eth(b"\xff" * 6, self.mac, 0x0800, ipv4(b"\0" * 4, b"\xff" * 4, 17, udp))

    @staticmethod
    def _reply(f: bytes, xid: int, kind: int):
        if len(f) < 282 or f[12:14] != b"\x08\x00" or f[23] != 17:
            return None
        bootp = 14 + (f[14] & 0xF) * 4 + 8
        if struct.unpack(">I", f[bootp + 4:bootp + 8])[0] != xid:
            return None
        opts, i, found, server = f[bootp + 240:], 0, 0, b""
        while i + 1 < len(opts) and opts[i] != 255:
            if opts[i] == 0:
                i += 1
                continue
            n = opts[i + 1]
            if opts[i] == 53:
                found = opts[i + 2]
            if opts[i] == 54:
                server = opts[i + 2:i + 6]
            i += 2 + n
        return (f[bootp + 16:bootp + 20], server) if found == kind else None

    def dhcp(self) -> str:
        xid = random.randrange(1, 1 << 32)
        self.sock.send(self._dhcp(1, xid))
        offer = self.receive(lambda f: self._reply(f, xid, 2) is not None)
        yiaddr, server = self._reply(offer, xid, 2)
        self.sock.send(self._dhcp(3, xid, yiaddr, server))
        ack = self.receive(lambda f: self._reply(f, xid, 5) is not None)
        self.ip = self._reply(ack, xid, 5)[0]
        return self.ip_text

    def serve(self) -> None:
        """Answers ARP requests for our address and ICMP echo requests to it, until close()."""
        def loop():
            self.sock.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    f = self.sock.recv(65600)
                except (socket.timeout, OSError):
                    continue
                if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] == self.ip:
                    arp = b"\x00\x01\x08\x00\x06\x04\x00\x02" + self.mac + self.ip + f[22:28] + f[28:32]
                    self.sock.send(eth(f[6:12], self.mac, 0x0806, arp))
                elif f[12:14] == b"\x08\x00" and f[23] == 1 and f[30:34] == self.ip:
                    ihl = (f[14] & 0xF) * 4
                    total = struct.unpack(">H", f[16:18])[0]
                    icmp = f[14 + ihl:14 + total]
                    if icmp[0] == 8:
                        reply = b"\x00\x00\x00\x00" + icmp[4:]
                        reply = reply[:2] + struct.pack(">H", checksum(reply)) + reply[4:]
                        self.sock.send(eth(f[6:12], self.mac, 0x0800, ipv4(self.ip, f[26:30], 1, reply)))
                        self.answered_pings += 1
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.sock.close()


class ExampleProcess(rig.VnetProcess):
    READY = "ready: port forward"


def example_binary() -> Path:
    return rig.vnet_binary().parent / "vnet-embed-example"


@pytest.fixture
def vfkit_vm(workdir):
    vms = []

    def make(server: Path) -> VfkitVM:
        vm = VfkitVM(server, Path(workdir) / f"vfkit-{len(vms)}.sock")
        vms.append(vm)
        return vm
    yield make
    for vm in vms:
        vm.close()


def test_the_example_serves_a_qemu_guest_and_a_vfkit_vm(guest_image, workdir, log_dir, vfkit_vm):
    if not example_binary().exists():
        pytest.skip(f"{example_binary()} not built (swift build builds it)")
    d = Path(workdir)
    sock, vfkit = d / "embed.sock", d / "vfkit.sock"
    with ExampleProcess([sock, vfkit], log_dir=log_dir, name="example", binary=example_binary()) as ex:
        vm, vm2 = vfkit_vm(vfkit), vfkit_vm(vfkit)   # two datagram VMs, one port each
        vm_ip, vm2_ip = vm.dhcp(), vm2.dhcp()
        assert vm_ip.startswith("192.168.127.") and vm2_ip.startswith("192.168.127.") and vm_ip != vm2_ip, (vm_ip, vm2_ip)
        ex.wait_for_line(rf"lease granted: {vm.mac_text} {vm_ip} vfkit", timeout=10)
        ex.wait_for_line(rf"lease granted: {vm2.mac_text} {vm2_ip} vfkit", timeout=10)
        vm.serve()
        vm2.serve()
        mac = "52:54:00:12:0e:01"
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=d, log_dir=log_dir, name="embed-guest", mac=mac) as g:
            lease = g.dhcp()
            assert lease["ip"].startswith("192.168.127.") and lease["ip"] != vm_ip, lease
            assert lease["router"] == "192.168.127.1", lease
            ex.wait_for_line(rf"lease granted: {mac} {lease['ip']}", timeout=10)
            for ip in (vm_ip, vm2_ip):
                r = g.run(f"ping -c 2 -W 5 {ip}")
                assert r.rc == 0 and "2 packets received" in r.output, (ip, r.output)
            assert vm.answered_pings >= 2 and vm2.answered_pings >= 2
            # The example's DNS record answers from the gateway.
            r = g.run("nslookup host.internal 192.168.127.1")
            assert "192.168.127.1" in r.output.split("host.internal", 1)[-1], r.output
        rc = ex.stop()
        assert rc == 0, ex.describe()
        assert "stopped" in ex.stdout.text
        assert not sock.exists() and not vfkit.exists()


def test_vnet_nat_vfkit_serves_a_vfkit_client_beside_a_qemu_guest(guest_image, workdir, log_dir, vfkit_vm):
    d = Path(workdir)
    sock, vfkit = d / "nat.sock", d / "nat-vfkit.sock"
    args = ["nat", "--network", "192.168.130.0/24", "--socket", sock, "--vfkit", vfkit,
            "--leases-file", d / "nat.leases", "--log-level", "info"]
    with rig.VnetProcess(args, log_dir=log_dir) as vnet:
        assert f"vnet: datagrams vfkit unixgram:{vfkit}" in vnet.stdout.text
        vm = vfkit_vm(vfkit)
        vm_ip = vm.dhcp()
        assert vm_ip.startswith("192.168.130."), vm_ip
        vm.serve()
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=d, log_dir=log_dir, name="nat-guest", mac="52:54:00:12:0e:02") as g:
            g.dhcp()
            r = g.run(f"ping -c 1 -W 5 {vm_ip}")
            assert r.rc == 0 and "1 packets received" in r.output, r.output
        counters = rig.read_counters(vnet)
        assert not any(k.endswith("drop_frame_too_short") for k in counters), counters   # VFKT is not a frame
        assert vnet.stop() == 0


def test_vnet_user_vfkit_gives_the_one_vm_its_lease(workdir, log_dir, vfkit_vm):
    vfkit = Path(workdir) / "user-vfkit.sock"
    with rig.VnetProcess(["user", "--vfkit", vfkit], log_dir=log_dir) as vnet:
        vm = vfkit_vm(vfkit)
        assert vm.dhcp() == "10.0.2.15"
        assert vnet.stop() == 0
    assert not vfkit.exists()


@pytest.mark.parametrize("args, message", [
    (["user", "--vfkit", "/tmp/a.sock", "--dgram", "/tmp/b.sock"], "choose one transport"),
    (["nat", "--vfkit", "/nonexistent-dir/v.sock"], "vnet: error:"),
])
def test_bad_vfkit_input_is_one_line_and_nonzero(args, message):
    import subprocess
    p = subprocess.run([str(rig.vnet_binary()), *args], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
