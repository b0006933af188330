"""restrict=on, as libslirp does it (src/udp.c, tcp_input.c, ip_icmp.c): the guest still gets DHCP, ARP and
answers to ping of 10.0.2.2/10.0.2.3, and may connect to guestfwd targets; hostfwd connections still reach
it. Everything else is cut: no UDP NAT (DNS forwarding included), no TCP NAT (answered with RST), no ICMP NAT.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig


@pytest.fixture(scope="module")
def restricted(guest_image, module_workdir, module_log_dir):
    with rig.UdpEchoServer() as udp, rig.HttpServer({"/": b"must not be reachable\n"}) as http, \
            rig.DnsServer({"blocked.test": "192.0.2.1"}) as dns:
        fwd_port = rig.free_tcp_port()
        sock = Path(module_workdir) / "vnet.sock"
        opts = f"user,restrict=on,hostfwd=tcp:127.0.0.1:{fwd_port}-:8080,guestfwd=tcp:10.0.2.100:1234-cmd:echo allowed-by-guestfwd"
        with rig.VnetProcess(["user", opts, "--socket", sock, "--dns-upstream", dns.address], log_dir=module_log_dir) as vnet:
            netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
            with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as g:
                lease = g.dhcp()
                yield SimpleNamespace(guest=g, vnet=vnet, udp=udp, http=http, dns=dns, fwd_port=fwd_port, lease=lease)


def test_dhcp_and_local_ping_still_work(restricted):
    assert restricted.lease["ip"] == "10.0.2.15"
    rc, out = restricted.guest.run("ping -c1 -W5 10.0.2.2")
    assert rc == 0, out
    assert "restrict=on" in restricted.vnet.stdout.text


def test_udp_nat_and_dns_are_blocked(restricted):
    before = restricted.udp.count
    rc, out = restricted.guest.run(f"udpping 10.0.2.2 {restricted.udp.port} hello 1500")
    assert (rc, out.strip()) == (3, "TIMEOUT")
    assert restricted.udp.count == before
    rc, out = restricted.guest.run("dnsudp -w 1500 10.0.2.3 blocked.test")
    assert rc == 3 and "TIMEOUT" in out, out
    assert restricted.dns.query_count == 0


def test_tcp_nat_is_refused(restricted):
    # (busybox wget crashes on a refused connection in this guest, so nc reports it)
    rc, out = restricted.guest.run(f"nc 10.0.2.2 {restricted.http.port} </dev/null", timeout=20)
    assert rc != 0 and "must not be reachable" not in out, (rc, out)
    assert "refused" in out.lower(), (rc, out)


def test_guestfwd_still_works(restricted):
    rc, out = restricted.guest.run("nc 10.0.2.100 1234 </dev/null", timeout=20)
    assert "allowed-by-guestfwd" in out, (rc, out)


def test_hostfwd_still_works(restricted):
    g = restricted.guest
    g.write_file("/www/index.html", "guest page behind restrict\n")
    g.start_background("httpd -f -p 8080 -h /www", "httpd")
    rig.wait_for(lambda: ":8080 " in g.check("netstat -ltn"), timeout=20, message="guest httpd listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{restricted.fwd_port}/index.html", timeout=20) as resp:
        assert resp.read() == b"guest page behind restrict\n"
