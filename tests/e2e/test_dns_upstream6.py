"""An IPv6 upstream resolver serves an IPv4 guest: `vnet user --dns-upstream [::1]:PORT` with a test DNS server on
host ::1 (loopback only). The guest's query to 10.0.2.3 is written into the stream socket as QEMU would deliver
it (scapy), goes out on an IPv6 socket, and the answer comes back to the guest from 10.0.2.3:53."""

from __future__ import annotations

from types import SimpleNamespace

import rig
from test_bad_inputs import DNS_IP, GUEST_IP, IP, UDP, connect, eth  # noqa: F401

from scapy.all import DNS, DNSQR  # noqa: E402


def test_ipv4_guest_query_through_an_ipv6_resolver(workdir, log_dir):
    with rig.DnsServer({"six.test": "192.0.2.66"}, host="::1") as dns:
        sock = workdir / "dns6.sock"
        with rig.VnetProcess(["user", "--socket", sock, "--dns-upstream", f"[::1]:{dns.port}"], log_dir=log_dir) as proc:
            assert f"vnet: dns upstream [::1]:{dns.port}" in proc.stdout.text, proc.stdout.text
            q = connect(SimpleNamespace(proc=proc, sock=sock))
            try:
                q.send(eth(IP(src=GUEST_IP, dst=DNS_IP) / UDP(sport=40053, dport=53) / DNS(id=0x6464, rd=1, qd=DNSQR(qname="six.test"))))
                reply = q.wait_for(lambda p: UDP in p and p[UDP].dport == 40053 and DNS in p, what="the DNS answer")
                assert reply[IP].src == DNS_IP and reply[UDP].sport == 53
                answer = reply[DNS]
                assert answer.id == 0x6464 and answer.rcode == 0 and answer.ancount == 1, answer.show(dump=True)
                assert answer.an[0].rdata == "192.0.2.66"
            finally:
                q.close()
        assert dns.count(proto="udp", name="six.test") == 1
