"""`vnet user --netns … --tap tap0`: the kernel's own TCP/IP stack in a namespace is the guest.

Two namespaces of the test's own: `host` (vnet runs there; its loopback also carries 192.0.2.1, a
TEST-NET address standing in for "the internet") and `guest` (the TAP vnet creates). Nothing leaves them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

HERE = Path(__file__).resolve().parent
NETTOOL = HERE / "nettool.py"
LONG = os.environ.get("VNET_LONG") == "1"
BULK = (1 << 30) if LONG else (64 << 20)

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    echo "LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu" ;;
esac
exit 0
"""


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check, **kw)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


@pytest.fixture(scope="module", params=["peek-offset", "peek-fallback", "no-offload"])
def tap(request, tun_available, module_workdir, module_log_dir):
    """Both of vnet's host-read paths (SO_PEEK_OFF, Linux 6.9+, and the peek-and-skip fallback), each with the
    TAP's virtio-net offloads (the default), and the plain TAP without them (--no-tap-offload)."""
    fallback = request.param == "peek-fallback"
    offload = request.param != "no-offload"
    suffix = f"{os.getpid() % 100000}{request.param[5] if offload else 'n'}"
    host_ns, guest_ns = f"vnh{suffix}", f"vng{suffix}"
    made = []
    procs = []
    try:
        for ns in (host_ns, guest_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(host_ns, "ip", "addr", "add", "192.0.2.1/32", "dev", "lo")
        script = Path(module_workdir) / f"udhcpc-{request.param}.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        server_port = 5001
        server = subprocess.Popen(["ip", "netns", "exec", host_ns, sys.executable, str(NETTOOL), "serve", "0.0.0.0", str(server_port)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(server)
        events = rig.OutputCollector(server.stdout, Path(module_log_dir) / f"nettool-server-{request.param}.log", "nettool server")
        events.wait_for(r"LISTENING", 15)
        # The same service on the host namespace's ::1, for the guest's IPv6 (fec0::2 reaches host ::1).
        server6 = subprocess.Popen(["ip", "netns", "exec", host_ns, sys.executable, str(NETTOOL), "serve", "::1", str(server_port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(server6)
        rig.OutputCollector(server6.stdout, Path(module_log_dir) / f"nettool-server6-{request.param}.log", "nettool server6") \
            .wait_for(r"LISTENING", 15)
        args = ["netns", "exec", host_ns, str(rig.vnet_binary()), "user", "--netns", f"/run/netns/{guest_ns}",
                "--tap", "tap0", "--dns-upstream", "127.0.0.1:53", "--log-level", "info"] + ([] if offload else ["--no-tap-offload"])
        env = {"VNET_FORCE_PEEK_FALLBACK": "1" if fallback else "0"}
        with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=Path(module_log_dir) / request.param, env=env) as vnet:
            assert ("with skipping" in vnet.stdout.text) == fallback, vnet.stdout.text
            out = in_ns(guest_ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-O", "mtu",
                        "-s", script).stdout
            lease = dict(kv.split("=", 1) for kv in out.split("LEASE ", 1)[1].split()) if "LEASE " in out else {}
            yield SimpleNamespace(host_ns=host_ns, guest_ns=guest_ns, vnet=vnet, lease=lease, server_port=server_port, dhcp_out=out,
                                  events=events, offload=offload)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def test_kernel_stack_gets_a_lease(tap):
    assert tap.lease.get("ip") == "10.0.2.15", tap.dhcp_out
    assert tap.lease.get("router") == "10.0.2.2"
    assert tap.lease.get("mtu") == "1500"
    assert "10.0.2.15/24" in in_ns(tap.guest_ns, "ip", "-4", "addr", "show", "dev", "tap0").stdout


def test_ping_gateway(tap):
    r = in_ns(tap.guest_ns, "busybox", "ping", "-c", "2", "-W", "5", "10.0.2.2", check=False)
    assert r.returncode == 0 and "2 packets received" in r.stdout, r.stdout + r.stderr


def test_ping_through_icmp_nat(tap):
    r = in_ns(tap.guest_ns, "busybox", "ping", "-c", "2", "-W", "5", "192.0.2.1", check=False)
    assert r.returncode == 0 and "2 packets received" in r.stdout, r.stdout + r.stderr


def test_udp_port_unreachable_comes_back(tap):
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "udp-refused", "192.0.2.1", "9")
    assert r.stdout.strip() == "REFUSED"


def test_udp_burst_arrives_whole_and_in_order(tap):
    """A burst of same-size datagrams: vnet gathers those of one read into UDP GSO sends (GatewayUDPBatch.swift);
    the kernel must split them back into exactly the datagrams the guest sent, in order."""
    n, size, port = 400, 1200, 5300
    before = rig.read_counters(tap.vnet)
    sink = subprocess.Popen(["ip", "netns", "exec", tap.host_ns, sys.executable, str(NETTOOL), "udp-sink", "192.0.2.1",
                             str(port), str(n), str(size)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert sink.stdout.readline().strip() == "LISTENING"
        in_ns(tap.guest_ns, sys.executable, NETTOOL, "udp-burst", "192.0.2.1", port, n, size)
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(timeout=10)
    assert out.strip() == f"GOT {n} ORDERED yes BAD 0", out
    c = rig.read_counters(tap.vnet)
    assert c.get("udp_gso_fallbacks", 0) == 0, c
    assert c.get("udp_batched_sends", 0) > before.get("udp_batched_sends", 0), c


@pytest.mark.parametrize("direction", ["host-to-guest", "guest-to-host"])
def test_bulk_tcp_checked_by_sha256(tap, direction):
    expected = sh(sys.executable, NETTOOL, "pattern-sha", BULK).stdout.strip()
    verb = "get" if direction == "host-to-guest" else "put"
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, verb, "192.0.2.1", tap.server_port, BULK, timeout=600)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


def test_offload_carries_super_segments_both_ways(tap):
    """With offloads the kernel hands vnet 64 KiB TCP segments and takes them back; without, nothing is bigger than
    the MTU. (Runs after the bulk transfers, whose counts it reads.)"""
    c = rig.read_counters(tap.vnet)
    if tap.offload:
        assert c.get("port_super_segments_in", 0) > 0, c
        assert c.get("tcp_super_segments_to_guest", 0) > 0, c
    else:
        assert "port_super_segments_in" not in c and "tcp_super_segments_to_guest" not in c, c
    assert c.get("drop_tcp_bad_checksum", 0) == 0 and c.get("drop_port_frame_too_long", 0) == 0, c


def test_parallel_connections_all_complete(tap):
    n, size = 200, 1 << 20
    expected = sh(sys.executable, NETTOOL, "pattern-sha", size).stdout.strip()
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "parallel", "10.0.2.2", tap.server_port, n, size, timeout=300)
    lines = r.stdout.split()
    assert len(lines) == n, r.stdout[-2000:] + r.stderr
    bad = [l for l in lines if l != expected]
    assert not bad, bad[:5]


def test_stalled_receivers_lose_nothing(tap):
    """Each side's reader stops for 10 s after 1 MiB, then resumes: both transfers complete intact."""
    size = 16 << 20
    expected = sh(sys.executable, NETTOOL, "pattern-sha", size).stdout.strip()
    procs = [subprocess.Popen(["ip", "netns", "exec", tap.guest_ns, sys.executable, str(NETTOOL), verb, "192.0.2.1",
                               str(tap.server_port), str(size), "10"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for verb in ("stall-get", "stall-put")]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == [expected, expected], outs


def test_fin_from_the_guest_side_half_close(tap):
    size = 3 << 20
    expected = sh(sys.executable, NETTOOL, "pattern-sha", size).stdout.strip()
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "half-close", "192.0.2.1", tap.server_port, size)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


def test_fin_from_the_host_side(tap):
    # `get` reads until EOF and checks the length: the host's FIN arrives after every byte.
    expected = sh(sys.executable, NETTOOL, "pattern-sha", 12345).stdout.strip()
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "get", "10.0.2.2", tap.server_port, 12345)
    assert r.stdout.strip() == expected


def test_rst_from_the_host_reaches_the_guest(tap):
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "expect-reset", "10.0.2.2", tap.server_port)
    assert r.stdout.strip() == "RESET", r.stdout + r.stderr


def test_rst_from_the_guest_reaches_the_host(tap):
    start = len(tap.events)
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, "send-reset", "10.0.2.2", tap.server_port)
    assert r.stdout.strip() == "SENT"
    tap.events.wait_for(r"EVENT (reset|eof)", 15, start)
    assert "EVENT reset" in tap.events.text[start:], tap.events.text[start:]


def test_connection_refused_maps_to_rst(tap):
    r = in_ns(tap.guest_ns, sys.executable, "-c",
              "import socket\ntry:\n socket.create_connection(('192.0.2.1', 9), timeout=10); print('CONNECTED')\n"
              "except ConnectionRefusedError: print('REFUSED')")
    assert r.stdout.strip() == "REFUSED"


def slaac_address(tap) -> str:
    """The namespace kernel's SLAAC address on tap0 in fec0::/64, once duplicate address detection is done."""
    found = {}

    def ready():
        out = in_ns(tap.guest_ns, "ip", "-6", "addr", "show", "dev", "tap0").stdout
        for line in out.splitlines():
            if "inet6 fec0::" in line and "tentative" not in line:
                found["a"] = line.split()[1].split("/")[0]
                return True
        return False
    rig.wait_for(ready, timeout=30, interval=0.2, message="the kernel's SLAAC address on tap0")
    return found["a"]


@pytest.mark.parametrize("direction", ["host-to-guest", "guest-to-host"])
def test_ipv6_bulk_tcp_checked_by_sha256(tap, direction):
    """The kernel stack forms its address from vnet's RA and moves data over IPv6 to host ::1 (with offloads:
    TCPv6 super-segments both ways)."""
    slaac_address(tap)
    routes = in_ns(tap.guest_ns, "ip", "-6", "route").stdout
    assert "default via fe80::2 dev tap0" in routes, routes
    size = BULK // 4
    expected = sh(sys.executable, NETTOOL, "pattern-sha", size).stdout.strip()
    verb = "get" if direction == "host-to-guest" else "put"
    r = in_ns(tap.guest_ns, sys.executable, NETTOOL, verb, "fec0::2", tap.server_port, size, timeout=600)
    assert r.stdout.strip() == expected, r.stdout + r.stderr
    c = rig.read_counters(tap.vnet)
    assert c.get("drop_tcp_bad_checksum", 0) == 0 and c.get("drop_port_frame_too_long", 0) == 0, c


def test_ipv6_ping_gateway(tap):
    slaac_address(tap)
    r = in_ns(tap.guest_ns, "busybox", "ping", "-6", "-c", "2", "-W", "5", "fec0::2", check=False)
    assert r.returncode == 0 and "2 packets received" in r.stdout, r.stdout + r.stderr
