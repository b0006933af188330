"""hostfwd, guestfwd and DNS over TCP with a real QEMU guest; restrict=on in its own module below.

vnet runs inside a namespace of the test's own (`h`), joined by a veth pair to a client namespace (`c`):
h has 192.0.2.1, c has 192.0.2.2 (TEST-NET-1; nothing leaves the two namespaces). A client in c reaches a
forward bound on 192.0.2.1 and the guest sees its real address; a client on h's loopback is seen as 10.0.2.2.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

HERE = Path(__file__).resolve().parent
NETTOOL = HERE / "nettool.py"

HOLD_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(b"hello guest\\n")
print("CONNECTED", flush=True)
sys.stdin.read()
"""

UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(2048)[0].decode())
"""

HTTP_GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end="")
"""


def sh(*args, check=True, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def namespaces(tun_available):
    suffix = os.getpid() % 100000
    h, c = f"vfh{suffix}", f"vfc{suffix}"
    made = []
    try:
        for ns in (h, c):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", h, "link", "add", "vh0", "type", "veth", "peer", "name", "vc0", "netns", c)
        sh("ip", "-n", h, "addr", "add", "192.0.2.1/24", "dev", "vh0")
        sh("ip", "-n", c, "addr", "add", "192.0.2.2/24", "dev", "vc0")
        sh("ip", "-n", h, "link", "set", "vh0", "up")
        sh("ip", "-n", c, "link", "set", "vc0", "up")
        yield SimpleNamespace(h=h, c=c)
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


@pytest.fixture(scope="module")
def fwd(namespaces, guest_image, module_workdir, module_log_dir):
    ns = namespaces
    procs = []
    try:
        # In h: a DNS server for 10.0.2.3 (UDP and TCP) and a TCP service for guestfwd.
        dns = subprocess.Popen(["ip", "netns", "exec", ns.h, sys.executable, "-c",
                                "import sys, time; sys.path.insert(0, sys.argv[1]); import rig; "
                                "s = rig.DnsServer({'tcp.test': '192.0.2.99'}, host='127.0.0.1', port=53).start(); "
                                "print('LISTENING', flush=True); time.sleep(3600)", str(HERE)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(dns)
        rig.wait_for_line(dns.stdout, "LISTENING", timeout=20)
        greet = subprocess.Popen(["ip", "netns", "exec", ns.h, "socat", "TCP-LISTEN:4321,reuseaddr,fork,bind=127.0.0.1",
                                  "SYSTEM:echo greeting-from-host-service"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(greet)
        ports = SimpleNamespace(tcp_lo=18080, udp_lo=17777, tcp_any=18081, udp_any=17778)
        opts = ("user,id=n0"
                f",hostfwd=tcp:127.0.0.1:{ports.tcp_lo}-:8080,hostfwd=udp:127.0.0.1:{ports.udp_lo}-:7777"
                f",hostfwd=tcp::{ports.tcp_any}-10.0.2.15:8081,hostfwd=udp::{ports.udp_any}-:7778"
                ",guestfwd=tcp:10.0.2.100:1234-tcp:127.0.0.1:4321"
                ",guestfwd=tcp:10.0.2.101:1234-cmd:echo cmd-says,,hi; cat")
        sock = Path(module_workdir) / "vnet.sock"
        args = ["netns", "exec", ns.h, str(rig.vnet_binary()), "user", opts, "--socket", sock,
                "--dns-upstream", "127.0.0.1:53", "--log-level", "info"]
        with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=module_log_dir) as vnet:
            netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
            with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as g:
                lease = g.dhcp()
                assert lease["ip"] == "10.0.2.15"
                yield SimpleNamespace(ns=ns, vnet=vnet, guest=g, ports=ports)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def test_startup_shows_exactly_what_is_bound(fwd):
    out = fwd.vnet.stdout.text
    p = fwd.ports
    assert f"vnet: hostfwd tcp 127.0.0.1:{p.tcp_lo} -> 10.0.2.15:8080" in out
    assert f"vnet: hostfwd udp 127.0.0.1:{p.udp_lo} -> 10.0.2.15:7777" in out
    assert f"vnet: hostfwd tcp 0.0.0.0:{p.tcp_any} -> 10.0.2.15:8081" in out
    assert "vnet: guestfwd tcp 10.0.2.101:1234 -> cmd:echo cmd-says,hi; cat" in out


def test_hostfwd_tcp_from_loopback_reaches_guest_httpd(fwd):
    g = fwd.guest
    g.write_file("/www/index.html", "served by the guest\n")
    g.start_background("httpd -f -p 8080 -h /www", "httpd")
    rig.wait_for(lambda: ":8080 " in g.check("netstat -ltn"), timeout=20, message="guest httpd listening")
    r = in_ns(fwd.ns.h, sys.executable, "-c", HTTP_GET, f"http://127.0.0.1:{fwd.ports.tcp_lo}/index.html")
    assert r.stdout == "served by the guest\n", r.stderr


def test_hostfwd_udp_from_loopback_and_from_outside(fwd):
    g = fwd.guest
    g.start_background("udpecho 7777", "udpecho")
    g.wait_background("udpecho", r"^LISTENING 7777$", timeout=20)
    r = in_ns(fwd.ns.h, sys.executable, "-c", UDP_CLIENT, "127.0.0.1", fwd.ports.udp_lo, "from-loopback")
    assert r.stdout.strip() == "from-loopback", r.stderr
    g.wait_background("udpecho", r"^ECHO from=10\.0\.2\.2 port=\d+ len=13$", timeout=10)
    g.start_background("udpecho 7778", "udpecho2")
    g.wait_background("udpecho2", r"^LISTENING 7778$", timeout=20)
    r = in_ns(fwd.ns.c, sys.executable, "-c", UDP_CLIENT, "192.0.2.1", fwd.ports.udp_any, "from-outside")
    assert r.stdout.strip() == "from-outside", r.stderr
    g.wait_background("udpecho2", r"^ECHO from=192\.0\.2\.2 port=\d+ len=12$", timeout=10)


@pytest.mark.parametrize("where", ["loopback", "outside"])
def test_hostfwd_tcp_client_address_seen_by_guest(fwd, where):
    g = fwd.guest
    g.start_background("nc -l -p 8081", f"nc-{where}")
    rig.wait_for(lambda: ":8081 " in g.check("netstat -ltn"), timeout=20, message="guest nc listening")
    ns, addr, seen = (fwd.ns.h, "127.0.0.1", "10.0.2.2") if where == "loopback" else (fwd.ns.c, "192.0.2.1", "192.0.2.2")
    client = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOLD_CLIENT, addr, str(fwd.ports.tcp_any)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rig.wait_for_line(client.stdout, "CONNECTED", timeout=20)
        g.wait_background(f"nc-{where}", r"^hello guest$", timeout=20)
        conns = g.check("netstat -tn")
        # nc's stdin is empty, so it has already closed its side: the connection may be half-closed.
        pattern = rf":8081\s+(::ffff:)?{re.escape(seen)}:\d+\s"
        assert any(re.search(pattern, l) for l in conns.splitlines()), conns
    finally:
        client.kill()
        client.wait(timeout=10)


def test_guestfwd_to_host_service(fwd):
    rc, out = fwd.guest.run("nc 10.0.2.100 1234 </dev/null", timeout=20)
    assert "greeting-from-host-service" in out, (rc, out)


def test_guestfwd_to_command(fwd):
    rc, out = fwd.guest.run("echo piped-through-cat | nc 10.0.2.101 1234", timeout=20)
    assert "cmd-says,hi" in out and "piped-through-cat" in out, (rc, out)


def test_dns_over_tcp(fwd):
    assert fwd.guest.check("dnstcp 10.0.2.3 tcp.test").strip() == "A 192.0.2.99"
    assert fwd.guest.check("dnsudp 10.0.2.3 tcp.test").strip() == "A 192.0.2.99"
