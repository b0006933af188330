"""Validates the e2e rig against QEMU's own user-mode networking (libslirp).

libslirp is the behaviour vnet reimplements, so every check here is one that
later runs against vnet. One guest serves the whole module. DNS at 10.0.2.3 is
*not* tested: libslirp forwards it to the machine's resolver, which tests must
never touch. The DNS helpers are checked against the rig's own DNS server on
host loopback, reached through the gateway address 10.0.2.2.
"""

from __future__ import annotations

import hashlib
import re
import socket
import urllib.request
from types import SimpleNamespace

import pytest

import rig

GUEST_UDP_PORT = 7777
GUEST_HTTP_PORT = 8080


@pytest.fixture(scope="module")
def host():
    with rig.UdpEchoServer() as udp, rig.HttpServer() as http, \
            rig.DnsServer({"rig.test": "192.0.2.10", "multi.rig.test": ["192.0.2.11", "192.0.2.12"]}) as dns:
        yield SimpleNamespace(udp=udp, http=http, dns=dns)


@pytest.fixture(scope="module")
def slirp(guest_image, module_workdir, module_log_dir):
    """The guest on -netdev user, with host forwards to guest ports 7777/udp and 8080/tcp."""
    for attempt in range(3):
        fwd = SimpleNamespace(udp=rig.free_udp_port(), tcp=rig.free_tcp_port())
        netdev = (f"user,id=n0,hostfwd=udp:127.0.0.1:{fwd.udp}-:{GUEST_UDP_PORT},"
                  f"hostfwd=tcp:127.0.0.1:{fwd.tcp}-:{GUEST_HTTP_PORT}")
        guest = rig.Guest(guest_image, ["-netdev", netdev], workdir=module_workdir,
                          log_dir=module_log_dir, name=f"slirp{attempt}")
        try:
            guest.start()
        except rig.RigError:
            # free_*_port() can race with another process taking the port.
            if "host forwarding rule" in rig.tail(guest.stderr_log) and attempt < 2:
                continue
            raise
        with guest:
            yield SimpleNamespace(guest=guest, fwd=fwd)
        return


@pytest.fixture(scope="module")
def lease(slirp):
    return slirp.guest.dhcp()


def test_dhcp_lease(slirp, lease):
    g = slirp.guest
    assert (lease["ip"], lease["mask"], lease["router"], lease["dns"]) == ("10.0.2.15", "24", "10.0.2.2", "10.0.2.3"), lease
    assert "inet 10.0.2.15/24" in g.check("ip -4 addr show dev eth0")
    assert re.search(r"^default via 10\.0\.2\.2 dev eth0", g.check("ip -4 route"), re.M)
    assert "nameserver 10.0.2.3" in g.check("cat /etc/resolv.conf")
    assert g.check("cat /run/lease").startswith("LEASE ip=10.0.2.15 ")


def test_ping_gateway(slirp, lease):
    rc, out = slirp.guest.run("ping -c1 -W5 10.0.2.2")
    assert rc == 0, out
    assert "1 packets received" in out


def test_udp_to_host_loopback_via_gateway(slirp, lease, host):
    before = host.udp.count
    rc, out = slirp.guest.run(f"udpping 10.0.2.2 {host.udp.port} hello")
    assert (rc, out) == (0, "REPLY hello\n")
    assert host.udp.count == before + 1
    assert host.udp.peers[-1][0] == "127.0.0.1"


def test_http_fetch_from_host_loopback_via_gateway(slirp, lease, host):
    g = slirp.guest
    out = g.check(f"wget -q -O - {host.http.url('/', host='10.0.2.2')}")
    assert out == host.http.pages["/"].decode()
    assert host.http.requests[-1][0][0] == "127.0.0.1"
    # A larger body, checked end to end by digest.
    n = 300_000
    out = g.check(f"wget -q -O - {host.http.url(f'/bytes/{n}', host='10.0.2.2')} | md5sum")
    assert out.split()[0] == hashlib.md5(rig.HttpServer.pattern_bytes(n)).hexdigest()


def test_dns_helpers_against_host_server(slirp, lease, host):
    g = slirp.guest
    port = host.dns.port
    assert g.run(f"dnsudp -p {port} 10.0.2.2 rig.test") == (0, "A 192.0.2.10\n")
    assert g.run(f"dnstcp -p {port} 10.0.2.2 RIG.test.") == (0, "A 192.0.2.10\n")
    assert g.run(f"dnsudp -p {port} 10.0.2.2 multi.rig.test") == (0, "A 192.0.2.11\nA 192.0.2.12\n")
    assert g.run(f"dnstcp -p {port} 10.0.2.2 missing.rig.test") == (1, "RCODE 3\n")
    assert g.run(f"dnsudp -t AAAA -p {port} 10.0.2.2 rig.test") == (1, "RCODE 0\n")
    # The record set can change at runtime.
    host.dns.records["late.rig.test"] = "192.0.2.99"
    assert g.run(f"dnsudp -p {port} 10.0.2.2 late.rig.test") == (0, "A 192.0.2.99\n")
    assert host.dns.count("tcp") >= 2 and host.dns.count("udp", "late.rig.test") == 1
    # Truncation forces the TCP path; dnsudp reports it.
    host.dns.truncate_udp = True
    try:
        assert g.run(f"dnsudp -p {port} 10.0.2.2 rig.test") == (1, "TRUNCATED\nRCODE 0\n")
        assert g.run(f"dnstcp -p {port} 10.0.2.2 rig.test") == (0, "A 192.0.2.10\n")
    finally:
        host.dns.truncate_udp = False


def test_hostfwd_udp_to_guest_udpecho(slirp, lease):
    g = slirp.guest
    g.start_background(f"udpecho {GUEST_UDP_PORT}", "udpecho")
    g.wait_background("udpecho", rf"^LISTENING {GUEST_UDP_PORT}$", timeout=20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(20)
        s.sendto(b"ping-through-hostfwd", ("127.0.0.1", slirp.fwd.udp))
        data, _ = s.recvfrom(2048)
    assert data == b"ping-through-hostfwd"
    # libslirp hands forwarded traffic to the guest from the gateway address.
    g.wait_background("udpecho", r"^ECHO from=10\.0\.2\.2 port=\d+ len=20$", timeout=10)


def test_hostfwd_tcp_to_guest_httpd(slirp, lease):
    g = slirp.guest
    g.write_file("/www/index.html", "served by the guest\n")
    g.start_background(f"httpd -f -p {GUEST_HTTP_PORT} -h /www", "httpd")
    rig.wait_for(lambda: f":{GUEST_HTTP_PORT} " in g.check("netstat -ltn"), timeout=20,
                 message="guest httpd listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{slirp.fwd.tcp}/index.html", timeout=20) as resp:
        assert resp.read() == b"served by the guest\n"


def test_qemu_monitor_shows_user_netdev(slirp):
    info = slirp.guest.hmp("info network")
    assert re.search(r"virtio-net-pci.*macaddr=52:54:00:12:34:56", info), info
    assert re.search(r"\\ n0: index=\d+,type=user,net=10\.0\.2\.0", info), info
