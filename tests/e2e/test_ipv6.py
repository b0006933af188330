"""IPv6 in `vnet user` with a real QEMU guest (TCG): SLAAC in the advertised prefix, the default route via
fe80::2, ping of the gateway, a page from a test server on host ::1 through fec0::2, AAAA answers through the
DNS forwarder at fec0::3, and hostfwd in both directions across the families.

One guest serves the module. Everything stays on loopback: the HTTP server listens on ::1, the DNS upstream is a
test server on 127.0.0.77:53, and the hostfwd clients connect to ::1 and 127.0.0.1.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

# The guest's SLAAC address: the rig's MAC 52:54:00:12:34:56 as a modified EUI-64 in fec0::/64.
GUEST6 = "fec0::5054:ff:fe12:3456"


@pytest.fixture(scope="module")
def net(guest_image, module_workdir, module_log_dir):
    with rig.HttpServer({"/": b"hello over ipv6\n"}, host="::1") as http, rig.UdpEchoServer(host="::1") as udp, \
            rig.DnsServer({"six.test": "192.0.2.60"}, aaaa={"six.test": "2001:db8::60"}, host="127.0.0.77", port=53) as dns:
        fwd6 = rig.free_tcp_port("::1")
        fwd4 = rig.free_tcp_port()
        opts = (f"user,id=n0,hostfwd=tcp:[::1]:{fwd6}-:8061,hostfwd=tcp:127.0.0.1:{fwd4}-[{GUEST6}]:8062")
        sock = Path(module_workdir) / "vnet.sock"
        args = ["user", opts, "--socket", sock, "--dns-upstream", "127.0.0.77:53", "--log-level", "info"]
        with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
            netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
            with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as guest:
                lease = guest.dhcp()
                assert lease["ip"] == "10.0.2.15"
                yield SimpleNamespace(guest=guest, vnet=vnet, http=http, udp=udp, dns=dns, fwd6=fwd6, fwd4=fwd4)


@pytest.fixture(scope="module")
def slaac(net):
    """Waits until the guest's SLAAC address is configured and past duplicate address detection."""
    def ready():
        out = net.guest.run("ip -6 addr show dev eth0").output
        return GUEST6 + "/64" in out and "tentative" not in out
    rig.wait_for(ready, timeout=30, interval=0.3, message=f"the guest to configure {GUEST6} by SLAAC")
    return GUEST6


def test_startup_line_names_the_prefix(net):
    text = net.vnet.stdout.text
    assert "vnet: ipv6 prefix fec0::/64 (SLAAC), router fe80::2, gateway fec0::2, dns fec0::3" in text
    assert f"vnet: hostfwd tcp [::1]:{net.fwd6} -> 10.0.2.15:8061" in text
    assert f"vnet: hostfwd tcp 127.0.0.1:{net.fwd4} -> [{GUEST6}]:8062" in text


def test_slaac_address_and_default_route(net, slaac):
    out = net.guest.check("ip -6 addr show dev eth0")
    assert re.search(rf"inet6 {re.escape(slaac)}/64 scope (site|global) dynamic", out), out   # fec0::/10 is site-local
    routes = net.guest.check("ip -6 route")
    assert re.search(r"^fec0::/64 dev eth0", routes, re.M), routes
    assert re.search(r"^default via fe80::2 dev eth0", routes, re.M), routes


def test_ping_gateway_and_dns_address(net, slaac):
    for target in ("fec0::2", "fec0::3"):
        rc, out = net.guest.run(f"ping -6 -c2 -W5 {target}")
        assert rc == 0 and "2 packets received" in out, out
    rc, out = net.guest.run("ping -6 -c1 -W5 -I eth0 fe80::2")
    assert rc == 0 and "1 packets received" in out, out


def test_large_ping_is_fragmented_both_ways(net, slaac):
    before = rig.read_counters(net.vnet).get("datagrams_reassembled", 0)
    rc, out = net.guest.run("ping -6 -c1 -W5 -s 3000 fec0::2")
    assert rc == 0 and "1 packets received" in out, out
    assert rig.read_counters(net.vnet).get("datagrams_reassembled", 0) > before


def test_page_from_host_ipv6_loopback(net, slaac):
    out = net.guest.check(f"wget -q -O - http://[fec0::2]:{net.http.port}/")
    assert out == "hello over ipv6\n"
    assert net.http.requests and net.http.requests[-1][0][0] == "::1"


def test_bulk_tcp_over_ipv6(net, slaac):
    n = 4 << 20
    out = net.guest.check(f"wget -q -O - http://[fec0::2]:{net.http.port}/bytes/{n} | sha256sum", timeout=120)
    import hashlib
    assert out.split()[0] == hashlib.sha256(rig.HttpServer.pattern_bytes(n)).hexdigest()


def test_udp_round_trip_and_refusal_over_ipv6(net, slaac):
    before = net.udp.count
    rc, out = net.guest.run(f"udpping fec0::2 {net.udp.port} hello-ipv6")
    assert (rc, out) == (0, "REPLY hello-ipv6\n")
    assert net.udp.count == before + 1 and net.udp.peers[-1][0] == "::1"
    # A closed port on host ::1: the host socket's ICMPv6 error (IPV6_RECVERR) comes back as port unreachable.
    closed = rig.free_udp_port("::1")
    rc, out = net.guest.run(f"udpping fec0::2 {closed} anyone 3000")
    assert (rc, out.strip()) == (2, "REFUSED")


def test_aaaa_through_the_forwarder_over_ipv6(net, slaac):
    before = net.dns.query_count
    rc, out = net.guest.run("nslookup -type=aaaa six.test fec0::3")
    assert rc == 0 and "2001:db8::60" in out, out
    assert net.dns.query_count > before


def test_hostfwd_from_ipv6_loopback_to_guest_ipv4(net, slaac):
    g = net.guest
    g.start_background("nc -l -p 8061", "nc6to4")
    rig.wait_for(lambda: ":8061 " in g.check("netstat -ltn"), timeout=20, message="guest nc listening on 8061")
    with socket.create_connection(("::1", net.fwd6), timeout=20) as c:
        c.sendall(b"from ipv6 loopback\n")
        g.wait_background("nc6to4", r"^from ipv6 loopback$", timeout=20)


def test_hostfwd_from_ipv4_loopback_to_guest_ipv6(net, slaac):
    g = net.guest
    g.start_background("nc -l -p 8062", "nc4to6")
    rig.wait_for(lambda: ":8062 " in g.check("netstat -ltn"), timeout=20, message="guest nc listening on 8062")
    with socket.create_connection(("127.0.0.1", net.fwd4), timeout=20) as c:
        c.sendall(b"to the guest over ipv6\n")
        g.wait_background("nc4to6", r"^to the guest over ipv6$", timeout=20)
        conns = g.check("netstat -tn")
        # The loopback client appears as the gateway's IPv6 address.
        assert re.search(rf"{re.escape(GUEST6)}:8062\s+fec0::2:\d+", conns), conns


def test_counters_name_the_ipv6_work(net, slaac):
    c = rig.read_counters(net.vnet)
    assert c.get("router_advertisements", 0) >= 1
    assert c.get("neighbor_advertisements", 0) >= 1
    assert c.get("icmpv6_echo_local", 0) >= 3
