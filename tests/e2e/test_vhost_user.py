"""vhost-user with a real QEMU (TCG): the guest's virtio-net rings served from its shared memory.

One guest A has two vhost-user NICs (a memfd backend shared with vnet, `vectors=0`: QEMU 7.2 without KVM
crashes in vhost_net_start -> msix_set_vector_notifiers with MSI-X):
  eth0 -> `vnet user --vhost-user` (10.0.2.0/24, a hostfwd to the guest's port 8080, DNS to a local server)
  eth1 -> `vnet nat --vhost-user` (192.168.122.0/24), where guest B sits on a plain stream port.
Checks, in order on the same booted guests: lease, DNS through the forwarder, ping of the gateway; 64 MiB each
way to a host loopback server checked by SHA-256 (the guest's TSO super-segments and the gateway's 64 KiB
segments cross the rings); vnet user restarted under the running guest (QEMU's chardev reconnect=1) and the
guest reaches the host again within 10 s without a reboot, with the same address, and a hostfwd reaches it; on
`vnet nat` bulk TCP both ways between the vhost-user guest (TSO) and the stream guest (the switch cuts the
super-segments in software for the stream port), checked by SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

SIZE = 64 << 20
DOWN = os.urandom(SIZE)
BLOCK = os.urandom((1 << 20) + 7)
REPEATS = SIZE // len(BLOCK) + 1
UP_BYTES = REPEATS * len(BLOCK)
BETWEEN = 16 << 20
MEMORY_MB = 256
MAC_USER, MAC_NAT, MAC_B = "52:54:00:12:50:01", "52:54:00:12:50:02", "52:54:00:12:50:03"


class HashSink:
    """TCP server on loopback: each connection is read until `expect` bytes (or EOF); (bytes, sha256) recorded."""

    def __init__(self, expect: int):
        self.expect = expect
        self.results: list[tuple[int, str]] = []
        self.cond = threading.Condition()
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

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
            c.settimeout(120)
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


def vhost_netdev(index: int, path: Path) -> list[str]:
    return ["-chardev", f"socket,id=c{index},path={path},reconnect=1", "-netdev", f"vhost-user,id=n{index},chardev=c{index}"]


@pytest.fixture(scope="module")
def net(guest_image, module_workdir, module_log_dir):
    d = Path(module_workdir)
    user_sock, nat_vhost, nat_stream = d / "user.vhost", d / "nat.vhost", d / "nat.stream"
    fwd = rig.free_tcp_port()
    sink = HashSink(UP_BYTES)
    user_args = ["user", f"user,hostfwd=tcp:127.0.0.1:{fwd}-:8080", "--vhost-user", user_sock]
    try:
        with rig.DnsServer({"vhost.test": "192.0.2.33"}) as dns, \
                rig.HttpServer({"/down": DOWN, "/block": BLOCK, "/small": b"after the restart\n"}) as http, \
                rig.VnetProcess(user_args + ["--dns-upstream", dns.address], log_dir=module_log_dir, name="vnet-user") as user, \
                rig.VnetProcess(["nat", "--vhost-user", nat_vhost, "--socket", nat_stream], log_dir=module_log_dir,
                                name="vnet-nat") as nat:
            user.wait_for_line(r"^vnet: ready$", timeout=10)
            nat.wait_for_line(r"^vnet: ready$", timeout=10)
            shared = ["-object", f"memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on", "-numa", "node,memdev=mem"]
            a_args = shared + vhost_netdev(1, nat_vhost) + ["-device", f"virtio-net-pci,netdev=n1,vectors=0,mac={MAC_NAT}"]
            b_net = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={nat_stream}"]
            with rig.Guest(guest_image, vhost_netdev(0, user_sock), workdir=module_workdir, log_dir=module_log_dir,
                           name="guest-a", mac=MAC_USER, nic_model="virtio-net-pci,vectors=0", memory_mb=MEMORY_MB,
                           qemu_args=a_args) as a, \
                    rig.Guest(guest_image, b_net, workdir=module_workdir, log_dir=module_log_dir, name="guest-b",
                              mac=MAC_B) as b:
                yield SimpleNamespace(a=a, b=b, user=user, nat=nat, dns=dns, http=http, sink=sink, fwd=fwd,
                                      user_args=user_args, log_dir=module_log_dir, state={})
    finally:
        sink.close()


def test_startup_lines_name_the_qemu_arguments(net):
    out = net.user.stdout.text
    assert "-chardev socket,id=c0,path=" in out and ",reconnect=1 -netdev vhost-user,id=n0,chardev=c0" in out, out
    assert "-object memory-backend-memfd,id=mem,size=" in out and ",share=on -numa node,memdev=mem" in out, out


def test_lease_dns_and_ping(net):
    lease = net.a.dhcp("eth0")
    assert lease["ip"] == "10.0.2.15" and lease["router"] == "10.0.2.2", lease
    net.state["ip"] = lease["ip"]
    rc, out = net.a.run("nslookup vhost.test 10.0.2.3")
    assert rc == 0 and "192.0.2.33" in out, out
    assert net.dns.query_count >= 1
    rc, out = net.a.run("ping -c2 -W5 10.0.2.2")
    assert rc == 0 and "2 packets received" in out, out


def test_64mib_host_to_guest_sha256(net):
    start = time.monotonic()
    out = net.a.check(f"wget -q -O - {net.http.url('/down', host='10.0.2.2')} | sha256sum", timeout=300)
    took = time.monotonic() - start
    print(f"vhost-user: {SIZE >> 20} MiB host->guest in {took:.1f} s ({SIZE / took / 1e6:.1f} MB/s)")
    assert out.split()[0] == hashlib.sha256(DOWN).hexdigest(), out


def test_64mib_guest_to_host_sha256(net):
    net.a.check(f"wget -q -O /tmp/block {net.http.url('/block', host='10.0.2.2')}", timeout=60)
    assert net.a.check("sha256sum /tmp/block").split()[0] == hashlib.sha256(BLOCK).hexdigest()
    index = len(net.sink.results)
    start = time.monotonic()
    net.a.run(f"i=0; while [ $i -lt {REPEATS} ]; do cat /tmp/block; i=$((i+1)); done | nc 10.0.2.2 {net.sink.port}",
              timeout=300)
    n, digest = net.sink.wait_result(index, timeout=60)
    took = time.monotonic() - start
    print(f"vhost-user: {UP_BYTES >> 20} MiB guest->host in {took:.1f} s ({UP_BYTES / took / 1e6:.1f} MB/s)")
    assert (n, digest) == (UP_BYTES, hashlib.sha256(BLOCK * REPEATS).hexdigest())
    c = rig.read_counters(net.user)
    print("vnet user counters:", c)
    assert c.get("port_super_segments_in", 0) > 0, c   # the guest's TSO reached vnet as 64 KiB segments
    assert c.get("drop_tcp_bad_checksum", 0) == 0 and c.get("port_vhost_ring_errors", 0) == 0, c


def test_vnet_restarted_under_the_guest(net):
    """vnet user stops and starts again on the same socket; QEMU reconnects by itself (reconnect=1)."""
    assert net.user.stop() == 0
    restarted = rig.VnetProcess(net.user_args + ["--dns-upstream", net.dns.address], log_dir=net.log_dir,
                                name="vnet-user-restarted").start()
    try:
        begin = time.monotonic()
        restarted.wait_for_line(r"^vnet: ready$", timeout=10)

        def fetched():
            r = net.a.run(f"timeout 3 wget -q -O - {net.http.url('/small', host='10.0.2.2')}", timeout=10)
            return r.rc == 0 and r.output == "after the restart\n"
        rig.wait_for(fetched, timeout=10, interval=0.2)
        took = time.monotonic() - begin
        print(f"vhost-user: the guest reached the host {took:.1f} s after vnet restarted")
        assert took <= 10
        # Same address: still configured, and the new vnet's DHCP gives it again.
        assert f"inet {net.state['ip']}/" in net.a.check("ip -4 addr show eth0")
        assert net.a.dhcp("eth0")["ip"] == net.state["ip"]
        # A hostfwd of the new vnet reaches the guest.
        net.a.start_background("echo forwarded-ok | nc -l -p 8080", "fwd")
        rig.wait_for(lambda: ":8080 " in net.a.check("netstat -ltn"), timeout=20, message="guest nc listening on 8080")

        def forwarded():
            try:
                with socket.create_connection(("127.0.0.1", net.fwd), timeout=3) as s:
                    s.settimeout(5)
                    return s.recv(64) == b"forwarded-ok\n"
            except OSError:
                return False
        rig.wait_for(forwarded, timeout=20, interval=0.3)
        c = rig.read_counters(restarted)
        assert c.get("port_connections", 0) == 1, c
    finally:
        restarted.stop()


def test_nat_bulk_between_vhost_user_and_stream_guests(net):
    a_lease = net.a.dhcp("eth1")
    b_lease = net.b.dhcp("eth0")
    a_ip, b_ip = a_lease["ip"], b_lease["ip"]
    assert a_lease["router"] == b_lease["router"] == "192.168.122.1", (a_lease, b_lease)
    # Random data made in each guest, hashed there, sent to the other, hashed on arrival.
    for g in (net.a, net.b):
        g.check(f"head -c {BETWEEN} /dev/urandom > /tmp/blob", timeout=60)
    sums = {g.name: g.check("sha256sum /tmp/blob").split()[0] for g in (net.a, net.b)}
    for sender, receiver, to_ip, port in ((net.a, net.b, b_ip, 7101), (net.b, net.a, a_ip, 7102)):
        # busybox nc ends its connection once its stdin ends: the listener's stdin is held open by a sleep.
        receiver.start_background(f"sleep 600 | nc -l -p {port} | head -c {BETWEEN} | sha256sum", f"rx{port}")
        rig.wait_for(lambda: f":{port} " in receiver.check("netstat -ltn"), timeout=20, interval=0.2,
                     message=f"guest nc listening on {port}")
        start = time.monotonic()
        sender.run(f"nc {to_ip} {port} < /tmp/blob", timeout=180)
        m = receiver.wait_background(f"rx{port}", r"([0-9a-f]{64})", timeout=120)
        took = time.monotonic() - start
        print(f"nat: {BETWEEN >> 20} MiB {sender.name} -> {receiver.name} in {took:.1f} s")
        assert m.group(1) == sums[sender.name]
    c = rig.read_counters(net.nat)
    print("vnet nat counters:", c)
    assert c.get("drop_tcp_bad_checksum", 0) == 0, c


def test_vnet_run_vhost_user_adds_the_memory_and_device(guest_image, workdir, log_dir):
    """`vnet run --vhost-user PATH -- QEMU…` adds the chardev, netdev, device (vectors=0 without KVM) and a memfd
    of -m's size itself; the guest gets its lease and reaches the host."""
    sock = Path(workdir) / "run.vhost"
    with rig.HttpServer({"/": b"hello over vhost-user\n"}) as http:
        g = rig.Guest(guest_image, nic=False, workdir=workdir, log_dir=log_dir, name="guest-run", memory_mb=192)
        g.argv = [str(rig.vnet_binary()), "run", "user,id=r0", "--vhost-user", str(sock), "--", *g.argv]
        with g:
            lease = g.dhcp()
            assert (lease["ip"], lease["router"]) == ("10.0.2.15", "10.0.2.2"), lease
            assert g.check(f"wget -q -O - http://10.0.2.2:{http.port}/") == "hello over vhost-user\n"
            stderr = Path(g.stderr_log).read_text()
            assert f"with -netdev vhost-user,id=r0 on {sock}, memfd 192M, vectors=0 (no KVM, QEMU before 8.0)" in stderr, stderr


@pytest.mark.parametrize("extra, message", [
    (["-numa", "node"], "already has -numa"),
    (["-object", "memory-backend-ram,id=m,size=128M"], "already has a memory backend (memory-backend-ram)"),
    (["-netdev", "user,id=x", "-device", "e1000,netdev=x"], "has a e1000 NIC"),
], ids=["numa", "memory-backend", "e1000"])
def test_vnet_run_vhost_user_refuses_what_it_cannot_combine(extra, message, workdir):
    r = subprocess.run([str(rig.vnet_binary()), "run", "--vhost-user", str(Path(workdir) / "x.sock"), "--",
                        "qemu-system-x86_64", "-m", "256", *extra], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and message in r.stderr and r.stderr.startswith("vnet: error:"), r.stderr
    assert "Traceback" not in r.stderr and "Fatal" not in r.stderr


def test_vhost_user_is_one_transport_among_others(workdir):
    r = subprocess.run([str(rig.vnet_binary()), "user", "--vhost-user", str(Path(workdir) / "a"), "--socket",
                        str(Path(workdir) / "b")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "choose one transport" in r.stderr and "--vhost-user" in r.stderr, r.stderr


def test_qemu_gone_ends_its_flows(net):
    """QEMU killed: the vhost-user port of vnet nat sees the socket close and ends the guest's flows (the host peer
    of its TCP connection sees it closed), as for a stream port. Runs last: it ends guest A."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(30)
    try:
        port = srv.getsockname()[1]
        net.a.start_background(f"sleep 600 | nc 192.168.122.1 {port}", "held")
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(15)
            os.kill(net.a.pid, signal.SIGKILL)
            start = time.monotonic()
            try:
                assert conn.recv(1) == b""
            except ConnectionResetError:
                pass
            print(f"vhost-user: the host peer saw the flow end {time.monotonic() - start:.1f} s after QEMU died")
        assert rig.read_counters(net.nat).get("flows_closed_guest_gone", 0) == 1
    finally:
        srv.close()
