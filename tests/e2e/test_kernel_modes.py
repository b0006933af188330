"""Kernel modes: `vnet bridge`, `vnet tap`, `vnet tap-helper`, `vnet nat --kernel`, `vnet passthrough`.

Everything runs in network namespaces the tests create (`ip netns add`), never on the host's interfaces:
iproute2 (`ip -d link`, `bridge link`) and nft confirm what vnet says it made. The NAT tests use three
namespaces: `router` (vnet, its bridge and nft table), `outside` (a server at 198.51.100.2, reached from the
router over a veth) and `guest` (a veth on the bridge whose kernel stack gets a lease from vnet's DHCP).
Two QEMU guests join the NAT bridge: one on a tap made by `vnet tap run` (with ifup/ifdown scripts that write
marker files), one through `vnet tap-helper` as QEMU's helper=.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

SUFFIX = f"{os.getpid() % 100000}"

# A TCP server printing LISTENING once bound, answering each connection with the peer's address.
WHOAMI = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8); print("LISTENING", flush=True)
while True:
    c, peer = s.accept(); c.sendall((peer[0] + "\\n").encode()); c.close()
"""

# A UDP DNS server answering every A query with 203.0.113.7.
DNS = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); print("LISTENING", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    if len(q) < 12: continue
    i = 12
    while q[i]: i += q[i] + 1
    question = q[12:i + 5]
    hdr = q[:2] + b"\\x81\\x80" + b"\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00"
    s.sendto(hdr + question + b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04" + bytes([203, 0, 113, 7]), peer)
"""

# The same answers over UDP and TCP (two-byte length prefix), for the forwarder's TCP relay.
DNS_UDP_TCP = """
import socket, struct, sys, threading
def answer(q):
    i = 12
    while q[i]: i += q[i] + 1
    hdr = q[:2] + b"\\x81\\x80" + b"\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00"
    return hdr + q[12:i + 5] + b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04" + bytes([203, 0, 113, 8])
def tcp():
    t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((sys.argv[1], int(sys.argv[2]))); t.listen(8)
    while True:
        c, _ = t.accept()
        n = struct.unpack("!H", c.recv(2, socket.MSG_WAITALL))[0]
        a = answer(c.recv(n, socket.MSG_WAITALL)); c.sendall(struct.pack("!H", len(a)) + a); c.close()
threading.Thread(target=tcp, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); print("LISTENING", flush=True)
while True:
    q, peer = s.recvfrom(4096)
    if len(q) >= 12: s.sendto(answer(q), peer)
"""

CONNECT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); print(c.recv(100).decode().strip())
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route replace default via "$router" dev "$interface"
    echo "LEASE ip=$ip mask=$mask router=$router dns=$dns" ;;
esac
exit 0
"""


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check,
                          stdin=subprocess.DEVNULL, **kw)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def vnet(ns, *args, **kw):
    kw.setdefault("check", False)
    return in_ns(ns, rig.vnet_binary(), *args, **kw)


def one_error_line(p):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vnet: error: "), p.stderr
    return lines[0]


@pytest.fixture
def namespaces(tun_available):
    made = []

    def make(tag):
        name = f"vnk{tag}{SUFFIX}"
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "add", name)
        made.append(name)
        in_ns(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    for ns in made:
        sh("ip", "netns", "del", ns, check=False)


class Background:
    """A process in a namespace whose stdout is collected; killed by pid on exit."""

    def __init__(self, ns, args, log_dir, name):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *map(str, args)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = rig.OutputCollector(self.proc.stdout, Path(log_dir) / f"{name}.log", name)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.out.join()


# --------------------------------------------------------------------------- bridge


def test_bridge_with_veth_vms(namespaces):
    host, vm1, vm2 = namespaces("h"), namespaces("a"), namespaces("b")
    assert vnet(host, "bridge", "create", "br0").returncode == 0
    d = in_ns(host, "ip", "-d", "link", "show", "br0").stdout
    assert "bridge " in d and ",UP" in d, d
    for i, vm in ((1, vm1), (2, vm2)):
        in_ns(host, "ip", "link", "add", f"vm{i}", "type", "veth", "peer", "name", "eth0", "netns", vm)
        in_ns(vm, "ip", "addr", "add", f"10.9.0.{10 + i}/24", "dev", "eth0")
        in_ns(vm, "ip", "link", "set", "eth0", "up")
    p = vnet(host, "bridge", "addif", "br0", "vm1", "vm2")
    assert p.returncode == 0, p.stderr
    links = in_ns(host, "bridge", "link").stdout
    assert re.search(r"vm1@\S+: .*master br0", links) and re.search(r"vm2@\S+: .*master br0", links), links

    show = vnet(host, "bridge", "show").stdout.splitlines()
    assert show[0] == "bridge name\tbridge id\t\tSTP enabled\tinterfaces"
    mac = in_ns(host, "cat", "/sys/class/net/br0/address").stdout.strip().replace(":", "")
    assert re.fullmatch(rf"br0\t\t[0-9a-f]{{4}}\.{mac}\tno\t\tvm1", show[1]), show
    assert show[2] == "\t\t\t\t\t\t\tvm2", show

    r = in_ns(vm1, "busybox", "ping", "-c", "1", "-W", "5", "10.9.0.12", check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    assert vnet(host, "bridge", "stp", "br0", "on").returncode == 0
    assert "stp_state 1" in in_ns(host, "ip", "-d", "link", "show", "br0").stdout
    assert "\tyes\t" in vnet(host, "bridge", "show", "br0").stdout
    assert vnet(host, "bridge", "stp", "br0", "off").returncode == 0
    assert "stp_state 0" in in_ns(host, "ip", "-d", "link", "show", "br0").stdout

    assert vnet(host, "bridge", "address", "br0", "add", "10.9.0.1/24").returncode == 0
    assert "inet 10.9.0.1/24" in in_ns(host, "ip", "-4", "addr", "show", "dev", "br0").stdout
    assert vnet(host, "bridge", "address", "br0").stdout.split() == ["10.9.0.1/24"]
    r = in_ns(vm2, "busybox", "ping", "-c", "1", "-W", "5", "10.9.0.1", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert vnet(host, "bridge", "address", "br0", "del", "10.9.0.1/24").returncode == 0
    assert "10.9.0.1" not in in_ns(host, "ip", "-4", "addr", "show", "dev", "br0").stdout

    assert vnet(host, "bridge", "delif", "br0", "vm2").returncode == 0
    assert "master br0" not in in_ns(host, "ip", "link", "show", "vm2").stdout
    assert vnet(host, "bridge", "delete", "br0").returncode == 0
    assert in_ns(host, "ip", "link", "show", "br0", check=False).returncode != 0
    assert "master" not in in_ns(host, "ip", "link", "show", "vm1").stdout


def test_bridge_errors_are_clear(namespaces):
    ns = namespaces("e")
    assert vnet(ns, "bridge", "create", "br0").returncode == 0
    in_ns(ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    cases = [
        (["bridge", "create", "br0"], "create bridge br0: it exists already"),
        (["bridge", "addif", "br0", "nosuch0"], "interface nosuch0: no such interface"),
        (["bridge", "addif", "nosuchbr", "d0"], "bridge nosuchbr: no such interface"),
        (["bridge", "delif", "br0", "d0"], "d0 is not a port of br0"),
        (["bridge", "delete", "d0"], "d0 is not a bridge"),
        (["bridge", "create", "a/b"], "not a valid interface name"),
    ]
    for args, message in cases:
        p = vnet(ns, *args)
        assert p.returncode == 1, (args, p.stderr)
        assert message in one_error_line(p), (args, p.stderr)
    p = vnet(ns, "bridge", "stp", "br0", "maybe")
    assert p.returncode == 2 and "expected on or off" in one_error_line(p)
    # Without CAP_NET_ADMIN (root with an empty capability bounding set) the kernel refuses, and vnet says so.
    p = in_ns(ns, "setpriv", "--inh-caps=-all", "--bounding-set=-all", rig.vnet_binary(), "bridge", "create", "br9", check=False)
    assert p.returncode == 1 and "create bridge br9: not permitted" in one_error_line(p), p.stderr


# --------------------------------------------------------------------------- tap


def test_tap_create_delete_persistent_with_options(namespaces):
    ns = namespaces("t")
    p = vnet(ns, "tap", "create", "tap8", "--owner", "4242", "--group", "4243", "--vnet-hdr", "--multiqueue")
    assert p.returncode == 0, p.stderr
    assert "ifname=tap8" in p.stdout
    d = in_ns(ns, "ip", "-d", "link", "show", "tap8").stdout
    assert "tun type tap" in d and "multi_queue" in d and "persist on" in d and "user 4242" in d and "group 4243" in d, d
    assert "vnet_hdr on" in d, d
    p = vnet(ns, "tap", "create", "tap8")
    assert p.returncode == 1 and "it exists already" in one_error_line(p)
    assert vnet(ns, "tap", "delete", "tap8").returncode == 0
    assert in_ns(ns, "ip", "link", "show", "tap8", check=False).returncode != 0
    p = vnet(ns, "tap", "delete", "tap8")
    assert p.returncode == 1 and "no such interface" in one_error_line(p)


def test_tap_run_failing_script_leaves_nothing(namespaces, workdir):
    ns = namespaces("f")
    script = Path(workdir) / "fail.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    p = vnet(ns, "tap", "run", "tapf", "--script", script)
    assert p.returncode == 1
    assert f"script {script} tapf failed with exit status 3" in one_error_line(p)
    assert in_ns(ns, "ip", "link", "show", "tapf", check=False).returncode != 0
    p = vnet(ns, "tap", "run", "tapf", "--bridge", "nosuchbr")
    assert p.returncode == 1 and "bridge nosuchbr: no such interface" in one_error_line(p)
    assert in_ns(ns, "ip", "link", "show", "tapf", check=False).returncode != 0


# --------------------------------------------------------------------------- kernel NAT


@pytest.fixture
def nat(namespaces, workdir, log_dir):
    router, outside, guest = namespaces("r"), namespaces("o"), namespaces("g")
    in_ns(router, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    in_ns(router, "ip", "addr", "add", "198.51.100.1/24", "dev", "up0")
    in_ns(router, "ip", "link", "set", "up0", "up")
    in_ns(outside, "ip", "addr", "add", "198.51.100.2/24", "dev", "eth0")
    in_ns(outside, "ip", "link", "set", "eth0", "up")
    state = Path(workdir) / "state"
    procs = []
    try:
        for ns, code, port in ((outside, WHOAMI, 7000), (outside, DNS, 5353)):
            b = Background(ns, [sys.executable, "-c", code, "198.51.100.2", port], log_dir, f"server-{port}")
            procs.append(b)
            b.out.wait_for("LISTENING", 15)
        in_ns(router, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
        args = ["netns", "exec", router, rig.vnet_binary(), "nat", "--kernel", "--name", "t1", "--network", "10.0.3.0/24",
                "--dhcp-range", "10.0.3.15-10.0.3.40", "--port-map", "tcp::8080-:8000", "--dns-upstream", "198.51.100.2:5353", "--state-dir", state,
                "--control", Path(workdir) / "knat.ctl"]
        with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=log_dir, name="vnet-nat") as v:
            in_ns(router, "ip", "link", "add", "g0", "type", "veth", "peer", "name", "eth0", "netns", guest)
            assert vnet(router, "bridge", "addif", "vnet-t1", "g0").returncode == 0
            udhcpc = Path(workdir) / "udhcpc.sh"
            udhcpc.write_text(UDHCPC_SCRIPT)
            udhcpc.chmod(0o755)
            out = in_ns(guest, "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-s", udhcpc).stdout
            lease = rig.parse_lease(out.split("LEASE ", 1)[1]) if "LEASE " in out else {}
            yield SimpleNamespace(router=router, outside=outside, guest=guest, vnet=v, lease=lease, dhcp_out=out, state=state,
                                  workdir=Path(workdir), log_dir=log_dir)
            rc = v.stop()
            assert rc == 0, v.describe()
    finally:
        for b in procs:
            b.stop()


def test_kernel_nat_lease_masquerade_dnat_dns_and_clean_exit(nat):
    assert nat.lease.get("ip") == "10.0.3.15", nat.dhcp_out
    assert nat.lease.get("router") == "10.0.3.1" and nat.lease.get("dns") == "10.0.3.1", nat.lease
    # What vnet made, seen by iproute2 and nft.
    assert "inet 10.0.3.1/24" in in_ns(nat.router, "ip", "-4", "addr", "show", "dev", "vnet-t1").stdout
    assert in_ns(nat.router, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    rules = in_ns(nat.router, "nft", "list", "table", "ip", "vnet-t1").stdout
    assert "masquerade" in rules and "dnat to 10.0.3.15:8000" in rules, rules
    # Masquerade: the outside server sees the router's address, not the guest's.
    r = in_ns(nat.guest, sys.executable, "-c", CONNECT, "198.51.100.2", "7000")
    assert r.stdout.strip() == "198.51.100.1", r.stdout + r.stderr
    # DNS through vnet's forwarder at the gateway.
    r = in_ns(nat.guest, "dig", "+short", "+time=2", "+tries=3", "@10.0.3.1", "anything.test", check=False)
    assert r.stdout.strip() == "203.0.113.7", r.stdout + r.stderr
    # DNAT: the outside reaches a server in the guest through the router's port 8080.
    server = Background(nat.guest, [sys.executable, "-c", WHOAMI, "0.0.0.0", "8000"], nat.log_dir, "guest-server")
    try:
        server.out.wait_for("LISTENING", 15)
        r = in_ns(nat.outside, sys.executable, "-c", CONNECT, "198.51.100.1", "8080")
        assert r.stdout.strip() == "198.51.100.2", r.stdout + r.stderr
    finally:
        server.stop()

    # The control socket (vnet nat --kernel --control): the lease, the port map, counters.
    ctl = lambda *a: subprocess.run([str(rig.vnet_binary()), "ctl", str(nat.workdir / "knat.ctl"), *a], capture_output=True, text=True, timeout=20)
    r = ctl("leases")
    assert r.returncode == 0 and "10.0.3.15" in r.stdout, r.stdout + r.stderr
    r = ctl("stats")
    assert re.search(r"^dhcp_replies [1-9]", r.stdout, re.M) and re.search(r"^dns_forwarded [1-9]", r.stdout, re.M), r.stdout
    assert "8080" in ctl("port-maps").stdout
    # LEASE_GRANTED reaches a subscribed client when the guest renews.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sub:
        sub.settimeout(20)
        sub.connect(str(nat.workdir / "knat.ctl"))
        sub.sendall(b'{"execute": "events"}\n')
        buf = b""
        while b"\n" not in buf:
            buf += sub.recv(4096)
        assert b'"return"' in buf.split(b"\n")[0], buf
        buf = buf.split(b"\n", 1)[1]
        udhcpc = nat.workdir / "udhcpc.sh"
        in_ns(nat.guest, "busybox", "udhcpc", "-i", "eth0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-s", udhcpc)
        while b"LEASE_GRANTED" not in buf:
            chunk = sub.recv(4096)
            assert chunk, "control socket closed"
            buf += chunk
        assert b"10.0.3.15" in buf, buf

    # Running it again changes nothing: refused while this one runs, the ruleset untouched.
    before = in_ns(nat.router, "nft", "list", "ruleset").stdout
    p = vnet(nat.router, "nat", "--kernel", "--name", "t1", "--network", "10.0.3.0/24", "--state-dir", nat.state)
    assert p.returncode == 1 and "already running" in one_error_line(p)
    assert in_ns(nat.router, "nft", "list", "ruleset").stdout == before

    # SIGTERM: everything vnet added is gone, forwarding is back off.
    assert nat.vnet.stop() == 0, nat.vnet.describe()
    assert "vnet: removed what t1 added" in nat.vnet.stdout.text
    assert in_ns(nat.router, "nft", "list", "tables").stdout.strip() == ""
    assert in_ns(nat.router, "ip", "link", "show", "vnet-t1", check=False).returncode != 0
    assert in_ns(nat.router, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert not list(nat.state.glob("nat-t1*"))


def test_kernel_nat_dns_fails_over_and_serves_tcp(namespaces, workdir, log_dir):
    """Two nameservers from resolv.conf, the first a dead address: a query times out once, the forwarder moves to
    the second (dns_failovers), and queries over UDP and over TCP are answered from it."""
    router, outside, guest = namespaces("r"), namespaces("o"), namespaces("g")
    in_ns(router, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside)
    in_ns(router, "ip", "addr", "add", "198.51.100.1/24", "dev", "up0")
    in_ns(router, "ip", "link", "set", "up0", "up")
    in_ns(outside, "ip", "addr", "add", "198.51.100.2/24", "dev", "eth0")
    in_ns(outside, "ip", "link", "set", "eth0", "up")
    resolv = Path(workdir) / "resolv.conf"
    resolv.write_text("nameserver 198.51.100.9\nnameserver 198.51.100.2\n")
    server = Background(outside, [sys.executable, "-c", DNS_UDP_TCP, "198.51.100.2", 53], log_dir, "dns-udp-tcp")
    try:
        server.out.wait_for("LISTENING", 15)
        args = ["netns", "exec", router, rig.vnet_binary(), "nat", "--kernel", "--name", "t3", "--network", "10.0.5.0/24",
                "--resolv-conf", resolv, "--state-dir", Path(workdir) / "state3", "--control", Path(workdir) / "knat3.ctl"]
        with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=log_dir, name="vnet-nat-dns") as v:
            assert "via 198.51.100.9:53, 198.51.100.2:53 (UDP and TCP)" in v.stdout.text, v.stdout.text
            in_ns(router, "ip", "link", "add", "g0", "type", "veth", "peer", "name", "eth0", "netns", guest)
            assert vnet(router, "bridge", "addif", "vnet-t3", "g0").returncode == 0
            in_ns(guest, "ip", "addr", "add", "10.0.5.50/24", "dev", "eth0")
            in_ns(guest, "ip", "link", "set", "eth0", "up")
            # The first try goes to the dead server and times out (dig says so); the retry is answered.
            r = in_ns(guest, "dig", "+short", "+time=3", "+tries=3", "@10.0.5.1", "first.test", check=False)
            assert r.stdout.strip().splitlines()[-1] == "203.0.113.8", r.stdout + r.stderr
            r = in_ns(guest, "dig", "+short", "+tcp", "+time=3", "+tries=2", "@10.0.5.1", "second.test", check=False)
            assert r.stdout.strip() == "203.0.113.8", r.stdout + r.stderr
            stats = subprocess.run([str(rig.vnet_binary()), "ctl", str(Path(workdir) / "knat3.ctl"), "stats"], capture_output=True, text=True, timeout=20)
            assert re.search(r"^dns_failovers 1$", stats.stdout, re.M), stats.stdout
            assert re.search(r"^dns_tcp_relayed [1-9]", stats.stdout, re.M) and re.search(r"^dns_answered [1-9]", stats.stdout, re.M), stats.stdout
            assert v.stop() == 0, v.describe()
    finally:
        server.stop()


def test_kernel_nat_killed_run_is_undone(namespaces, workdir, log_dir):
    router = namespaces("k")
    state = Path(workdir) / "state"
    in_ns(router, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
    args = ["netns", "exec", router, rig.vnet_binary(), "nat", "--kernel", "--name", "k1", "--bridge", "nbr1",
            "--network", "10.7.0.0/24", "--state-dir", state, "--resolv-conf", "/dev/null"]
    v = rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=log_dir, name="vnet-nat-killed").start()
    os.kill(v.pid, signal.SIGKILL)
    v.proc.wait(timeout=10)
    v.stop()
    assert "table ip vnet-k1" in in_ns(router, "nft", "list", "tables").stdout
    record = (state / "nat-k1.state").read_text()
    assert "bridge_created=1" in record and "ip_forward_was=0" in record and "nft_table=vnet-k1" in record, record
    p = vnet(router, "nat", "--kernel", "--name", "k1", "--bridge", "nbr1", "--network", "10.7.0.0/24", "--state-dir", state, "--undo")
    assert p.returncode == 0, p.stderr
    assert in_ns(router, "nft", "list", "tables").stdout.strip() == ""
    assert in_ns(router, "ip", "link", "show", "nbr1", check=False).returncode != 0
    assert in_ns(router, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert not (state / "nat-k1.state").exists()


def test_kernel_nat_refuses_userspace_only_flags():
    for args, message in ((["--static-lease", "52:54:00:00:00:10,192.168.122.10"], "--static-lease is not available with --kernel"),
                          (["--port-map", "tcp::2222-web:22"], "with --kernel the VM is an address"),
                          (["--name", "averyverylongname"], "a long --name needs --bridge")):
        p = subprocess.run([str(rig.vnet_binary()), "nat", "--kernel", *args], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 2 and message in one_error_line(p), (args, p.stderr)
    p = subprocess.run([str(rig.vnet_binary()), "nat", "--undo"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "go with --kernel" in one_error_line(p), p.stderr


# --------------------------------------------------------------------------- QEMU guests on the NAT bridge


UP_SCRIPT = """#!/bin/sh
{ echo "up $1"; ip -o link show "$1"; } > "{marker}"
"""
DOWN_SCRIPT = """#!/bin/sh
{ echo "down $1"; ip -o link show "$1"; } > "{marker}"
"""


def guest_in_ns(ns, image, netdev_args, workdir, log_dir, name, mac):
    g = rig.Guest(image, netdev_args, workdir=workdir, log_dir=log_dir, name=name, mac=mac, qmp=False)
    g.argv = ["ip", "netns", "exec", ns] + g.argv
    return g


def test_qemu_guests_on_tap_with_scripts_and_through_tap_helper(nat, guest_image):
    up_marker, down_marker = nat.workdir / "up.marker", nat.workdir / "down.marker"
    up, down = nat.workdir / "ifup.sh", nat.workdir / "ifdown.sh"
    up.write_text(UP_SCRIPT.replace("{marker}", str(up_marker)))
    down.write_text(DOWN_SCRIPT.replace("{marker}", str(down_marker)))
    for s in (up, down):
        s.chmod(0o755)
    args = ["netns", "exec", nat.router, rig.vnet_binary(), "tap", "run", "tapq", "--bridge", "vnet-t1",
            "--script", up, "--downscript", down]
    with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=nat.log_dir, name="vnet-tap-run") as taprun:
        marker = up_marker.read_text()
        assert marker.startswith("up tapq\n") and "master vnet-t1" in marker, marker
        assert "-netdev tap,id=n0,ifname=tapq,script=no,downscript=no" in taprun.stdout.text
        g1 = guest_in_ns(nat.router, guest_image, ["-netdev", "tap,id=n0,ifname=tapq,script=no,downscript=no"],
                         nat.workdir, nat.log_dir, "guest-tap", "52:54:00:12:34:61")
        helper = f"{rig.vnet_binary()} tap-helper --br=vnet-t1"
        g2 = guest_in_ns(nat.router, guest_image, ["-netdev", f"tap,id=n0,helper={helper}"],
                         nat.workdir, nat.log_dir, "guest-helper", "52:54:00:12:34:62")
        with g1, g2:
            l1, l2 = g1.dhcp(), g2.dhcp()
            assert l1["ip"].startswith("10.0.3.") and l2["ip"].startswith("10.0.3.") and l1["ip"] != l2["ip"], (l1, l2)
            assert l1["router"] == "10.0.3.1" == l2["router"]
            ports = in_ns(nat.router, "bridge", "link").stdout
            assert re.search(r"tapq: .*master vnet-t1", ports), ports
            helper_taps = re.findall(r"(tap\d+): .*master vnet-t1", ports)
            assert helper_taps, ports
            for g in (g1, g2):
                out = g.check("ping -c 1 -W 5 10.0.3.1 && ping -c 1 -W 5 198.51.100.2", timeout=30)
                assert out.count("1 packets received") == 2, out
            assert g1.check(f"ping -c 1 -W 5 {l2['ip']}", timeout=20).count("1 packets received") == 1
        # QEMU gone: the helper's tap went with it; vnet's tap stays until vnet stops.
        ports = in_ns(nat.router, "bridge", "link").stdout
        assert not any(re.search(rf"{t}: ", ports) for t in helper_taps), ports
        assert not down_marker.exists()
        assert taprun.stop() == 0, taprun.describe()
    marker = down_marker.read_text()
    assert marker.startswith("down tapq\n") and "master vnet-t1" in marker, marker
    assert in_ns(nat.router, "ip", "link", "show", "tapq", check=False).returncode != 0


# --------------------------------------------------------------------------- passthrough (fake sysfs)


def fake_sysfs(root: Path, iommu: bool):
    def link(target, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    for drv in ("e1000e", "vfio-pci"):
        d = root / "bus/pci/drivers" / drv
        d.mkdir(parents=True)
        for f in ("bind", "unbind", "new_id"):
            (d / f).write_text("")
    (root / "bus/pci/drivers_probe").write_text("")
    (root / "kernel/iommu_groups").mkdir(parents=True)
    for addr, cls, group, net in (("0000:01:00.0", "0x020000", "7", "enp1s0"), ("0000:01:00.1", "0x020000", "7", "enp1s1"),
                                  ("0000:00:02.0", "0x030000", "1", None)):
        dev = root / "devices/pci0000:00" / addr
        dev.mkdir(parents=True)
        (dev / "class").write_text(cls + "\n")
        (dev / "vendor").write_text("0x8086\n")
        (dev / "device").write_text("0x10d3\n")
        (dev / "driver_override").write_text("(null)\n")
        link(f"../../../devices/pci0000:00/{addr}", root / "bus/pci/devices" / addr)
        link("../../../bus/pci/drivers/e1000e", dev / "driver")
        if net:
            (dev / "net" / net).mkdir(parents=True)
        if iommu:
            link(f"../../../kernel/iommu_groups/{group}", dev / "iommu_group")
            link(f"../../../../devices/pci0000:00/{addr}", root / f"kernel/iommu_groups/{group}/devices/{addr}")


@pytest.mark.parametrize("iommu", [True, False], ids=["iommu-on", "iommu-off"])
def test_passthrough_list_and_group_confirmation(workdir, iommu):
    root = Path(workdir) / "sys"
    fake_sysfs(root, iommu)
    run = lambda *a: subprocess.run([str(rig.vnet_binary()), "passthrough", *a, "--sysfs-root", str(root),
                                     "--state-dir", str(Path(workdir) / "state")],
                                    capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    p = run("list")
    rows = [l.split() for l in p.stdout.splitlines()]
    assert rows[0] == ["ADDRESS", "ID", "DRIVER", "IOMMU-GROUP", "INTERFACES"]
    group = "7" if iommu else "-"
    assert rows[1:] == [["0000:01:00.0", "8086:10d3", "e1000e", group, "enp1s0"],
                        ["0000:01:00.1", "8086:10d3", "e1000e", group, "enp1s1"]], p.stdout
    if iommu:
        assert p.returncode == 0, p.stderr
        # Its group companion needs confirmation: without --yes and with no terminal, nothing changes.
        p = run("bind", "01:00.0")
        assert p.returncode == 1 and "rerun with --yes" in one_error_line(p) and "0000:01:00.1" in p.stderr
        assert (root / "devices/pci0000:00/0000:01:00.0/driver_override").read_text() == "(null)\n"
        assert (root / "bus/pci/drivers/e1000e/unbind").read_text() == ""
    else:
        assert p.returncode == 1 and "the IOMMU is off" in one_error_line(p) and "intel_iommu=on" in p.stderr
        p = run("bind", "0000:01:00.0", "--yes")
        assert p.returncode == 1 and "the IOMMU is off" in one_error_line(p)
    p = run("bind", "not-an-address")
    assert p.returncode == 2 and "is not a PCI address" in one_error_line(p)
