"""`vnet user` over a unix stream, against a real QEMU guest (TCG): the foundation checks.

One guest serves the whole module. vnet's DNS upstreams come from a resolv.conf file of the test's own that
names test DNS servers on 127.0.0.77:53 and 127.0.0.78:53 (loopback only; never the machine's resolver).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

HOSTNAME = "vnetguest1"


@pytest.fixture(scope="module")
def host():
    with rig.UdpEchoServer() as udp, rig.HttpServer({"/": b"hello through vnet\n"}) as http, \
            rig.DnsServer({"first.test": "192.0.2.10"}, host="127.0.0.77", port=53) as dns1, \
            rig.DnsServer({"first.test": "192.0.2.20", "second.test": "192.0.2.21"}, host="127.0.0.78", port=53) as dns2:
        yield SimpleNamespace(udp=udp, http=http, dns1=dns1, dns2=dns2)


@pytest.fixture(scope="module")
def net(guest_image, module_workdir, module_log_dir, host):
    resolv = Path(module_workdir) / "resolv.conf"
    resolv.write_text("# test resolvers\nnameserver 127.0.0.77\n")
    sock = Path(module_workdir) / "vnet.sock"
    opts = f"user,id=n0,net=10.0.2.0/24,hostname={HOSTNAME},domainname=vnet.test,dnssearch=a.test,dnssearch=b.test"
    with rig.VnetProcess(["user", opts, "--socket", sock, "--resolv-conf", resolv, "--log-level", "info"],
                         log_dir=module_log_dir) as vnet:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as guest:
            yield SimpleNamespace(guest=guest, vnet=vnet, resolv=resolv, sock=sock)


@pytest.fixture(scope="module")
def lease(net):
    return net.guest.dhcp()


counters = rig.read_counters


def test_startup_lines(net):
    text = net.vnet.stdout.text
    assert "guest traffic to 10.0.2.2 reaches host loopback" in text
    assert "vnet: guest port: unix:" in text


def test_dhcp_lease(net, lease):
    assert (lease["ip"], lease["mask"], lease["router"], lease["dns"]) == ("10.0.2.15", "24", "10.0.2.2", "10.0.2.3"), lease
    assert lease["mtu"] == "1500"
    assert lease["hostname"] == HOSTNAME
    assert lease["domain"] == "vnet.test"
    assert lease["search"] == "a.test,b.test"
    assert lease["serverid"] == "10.0.2.2"
    assert re.search(r"^default via 10\.0\.2\.2 dev eth0", net.guest.check("ip -4 route"), re.M)


def test_same_mac_gets_same_address_again(net, lease):
    again = net.guest.dhcp()
    assert again["ip"] == lease["ip"]


def test_ping_gateway_and_dns_address(net, lease):
    rc, out = net.guest.run("ping -c2 -W5 10.0.2.2")
    assert rc == 0 and "2 packets received" in out, out
    rc, out = net.guest.run("ping -c1 -W5 10.0.2.3")
    assert rc == 0 and "1 packets received" in out, out


def test_dns_forwarded_to_resolv_conf_server(net, lease, host):
    before = host.dns1.query_count
    assert net.guest.check("dnsudp 10.0.2.3 first.test").strip() == "A 192.0.2.10"
    assert host.dns1.query_count == before + 1
    rc, out = net.guest.run("nslookup first.test 10.0.2.3")
    assert rc == 0 and "192.0.2.10" in out, out
    rc, out = net.guest.run("dnsudp 10.0.2.3 missing.test")
    assert rc == 1 and "RCODE 3" in out, out


def test_dns_to_other_port_is_not_forwarded(net, lease, host):
    before = host.dns1.query_count + host.dns2.query_count
    rc, out = net.guest.run("dnsudp -p 5353 -w 1000 10.0.2.3 first.test")
    assert rc == 3 and "TIMEOUT" in out, out
    assert host.dns1.query_count + host.dns2.query_count == before


def test_udp_round_trip_to_host_loopback(net, lease, host):
    before = host.udp.count
    rc, out = net.guest.run(f"udpping 10.0.2.2 {host.udp.port} hello-vnet")
    assert (rc, out) == (0, "REPLY hello-vnet\n")
    assert host.udp.count == before + 1
    assert host.udp.peers[-1][0] == "127.0.0.1"


def test_udp_to_closed_host_port_is_refused(net, lease):
    port = rig.free_udp_port()
    rc, out = net.guest.run(f"udpping 10.0.2.2 {port} anyone 3000")
    assert (rc, out.strip()) == (2, "REFUSED")


def test_http_fetch_through_gateway(net, lease, host):
    out = net.guest.check(f"wget -q -O - http://10.0.2.2:{host.http.port}/")
    assert out == "hello through vnet\n"


def test_resolv_conf_change_is_picked_up(net, lease, host):
    assert net.guest.check("dnsudp 10.0.2.3 first.test").strip() == "A 192.0.2.10"
    tmp = net.resolv.with_suffix(".new")
    tmp.write_text("nameserver 127.0.0.78\n")
    os.replace(tmp, net.resolv)   # a new inode, as resolvconf and NetworkManager do
    rig.wait_for(lambda: net.guest.run("dnsudp -w 500 10.0.2.3 first.test").output.strip() == "A 192.0.2.20", 15,
                 interval=0.2, message="the new resolver to answer")
    assert net.guest.check("dnsudp 10.0.2.3 second.test").strip() == "A 192.0.2.21"
    net.resolv.write_text("nameserver 127.0.0.77\n")   # in place, same inode
    rig.wait_for(lambda: net.guest.run("dnsudp -w 500 10.0.2.3 first.test").output.strip() == "A 192.0.2.10", 15,
                 interval=0.2, message="the first resolver to answer again")


def test_counters_name_what_was_served_and_dropped(net, lease):
    c = counters(net.vnet)
    assert c.get("dhcp_replies", 0) >= 4
    assert c.get("icmp_echo_local", 0) >= 3
    assert c.get("drop_dns_wrong_port", 0) >= 1
    assert c.get("frames_from_guest", 0) > 10


def test_udp_datagram_larger_than_the_mtu_both_ways(net, lease, host):
    """The guest fragments a 4000-byte datagram (vnet reassembles it); the echo comes back fragmented by vnet."""
    msg = "x" * 3990 + "end-marker"
    rc, out = net.guest.run(f"udpping 10.0.2.2 {host.udp.port} {msg}")
    assert (rc, out) == (0, f"REPLY {msg}\n")
    assert counters(net.vnet).get("datagrams_reassembled", 0) >= 1


def test_large_ping_of_the_gateway(net, lease):
    """A 4000-byte echo request arrives in fragments; the reply leaves in fragments too."""
    rc, out = net.guest.run("ping -c1 -W5 -s 4000 10.0.2.2")
    assert rc == 0 and "1 packets received" in out, out
