"""BAD-INPUTS (docs/hostile-input.md) end to end: frames crafted with scapy, written into a real
`vnet user --socket` exactly as QEMU's stream netdev delivers them (4-byte big-endian length, then the frame).

The test plays QEMU: it connects to vnet's unix socket, sends hostile frames, and checks
- the RFC behaviour (drops, reassembly, trimming) from what comes back and from what host servers receive;
- the named drop counters (SIGUSR1 counter block);
- a healthy flow (UDP through 10.0.2.2 to a loopback echo server) working between the hostile frames;
- that every frame vnet sends back comes from the gateway's MAC, is at least 60 bytes with zero padding, and
  never carries the canary bytes the hostile frames are stuffed with.
Each test opens its own connection; vnet serves one QEMU at a time and must take the next one after each.
Unit-level versions of every case are in Tests/VNetGatewayTests/BadInputTests.swift.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import time
from types import SimpleNamespace

import pytest

import rig

try:
    from scapy.all import ARP, BOOTP, DHCP, ICMP, IP, TCP, UDP, Ether, Raw, fragment
except ImportError:   # installable, so a loud failure rather than a skip
    pytest.fail("scapy is missing: python3 -m pip install scapy (scripts/test does this)", pytrace=False)

GUEST_MAC = "52:54:00:12:34:56"
GW_MAC = "52:55:0a:00:02:02"
GUEST_IP, GW_IP, DNS_IP = "10.0.2.15", "10.0.2.2", "10.0.2.3"
CANARY = bytes([0xC4, 0x7A, 0x11, 0x9E, 0x5D, 0x3B, 0xE0, 0x42])
QEMU_LIMIT = 65536 + 4096


def canary(n: int) -> bytes:
    return (CANARY * (n // 8 + 1))[:n]


def has_canary(frame: bytes) -> bool:
    cycle = CANARY + CANARY
    return any(cycle[k:k + 4] in frame for k in range(8))


def data(p) -> bytes:
    """The layer-4 payload of a frame from vnet: bytes up to the IPv4 total length (scapy's payload would also
    carry the Ethernet padding)."""
    raw = bytes(p)[14:]
    ihl, total = (raw[0] & 15) * 4, struct.unpack(">H", raw[2:4])[0]
    l4 = raw[ihl:total]
    if raw[9] == 6:
        return l4[(l4[12] >> 4) * 4:]
    return l4[8:]   # UDP and ICMP headers are 8 bytes


def eth(payload, dst=GW_MAC, src=GUEST_MAC):
    return Ether(dst=dst, src=src) / payload


class QemuLink:
    """One connection to vnet's socket, speaking QEMU's stream framing. Every frame received is checked."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.closed = False

    def close(self):
        self.sock.close()

    def send(self, frame) -> None:
        data = bytes(frame)
        self.sock.sendall(struct.pack(">I", len(data)) + data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        r, _, _ = select.select([self.sock], [], [], left)
        if r:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                self.closed = True
            self.buf += chunk

    def _next_frame(self) -> bytes | None:
        if len(self.buf) < 4:
            return None
        n = struct.unpack(">I", self.buf[:4])[0]
        if len(self.buf) < 4 + n:
            return None
        f, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        check_vnet_frame(f)
        return f

    def frames(self, timeout: float = 0.3) -> list[bytes]:
        """Everything that arrives within `timeout` seconds."""
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            while (f := self._next_frame()) is not None:
                out.append(f)
            self._read(deadline)
        while (f := self._next_frame()) is not None:
            out.append(f)
        return out

    def wait_for(self, predicate, timeout: float = 5.0, what: str = "a frame") -> Ether:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            while (f := self._next_frame()) is not None:
                pkt = Ether(f)
                if predicate(pkt):
                    return pkt
            self._read(deadline)
        raise AssertionError(f"no {what} from vnet within {timeout} s (connection closed: {self.closed})")

    def wait_closed(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self.buf = b""
            self._read(deadline)
        assert self.closed, "vnet kept the connection open"


def check_vnet_frame(f: bytes) -> None:
    """A frame from vnet: from the gateway's MAC, >= 60 bytes, zero padding, no canary bytes."""
    assert len(f) >= 60, f"short frame from vnet: {f.hex()}"
    assert f[6:12] == bytes.fromhex(GW_MAC.replace(":", "")), f"frame not from the gateway: {f.hex()}"
    etype = struct.unpack(">H", f[12:14])[0]
    if etype == 0x0806:
        content = 42
    elif etype == 0x86DD:
        content = 14 + 40 + struct.unpack(">H", f[18:20])[0]
    else:
        assert etype == 0x0800, f"ethertype {etype:#x} from vnet"
        content = 14 + struct.unpack(">H", f[16:18])[0]
    assert len(f) == max(60, content), f"frame of {len(f)} bytes for {content} bytes of content"
    assert all(b == 0 for b in f[content:]), f"non-zero padding: {f[content:].hex()}"
    assert not has_canary(f), f"vnet sent guest bytes it should not have read: {f.hex()}"


@pytest.fixture(scope="module")
def servers():
    with rig.UdpEchoServer() as udp, rig.TcpEchoServer() as tcp, rig.DnsServer({"ok.test": "192.0.2.10"}) as dns, \
            rig.UdpEchoServer(host="::1") as udp6:
        yield SimpleNamespace(udp=udp, tcp=tcp, dns=dns, udp6=udp6)


@pytest.fixture(scope="module")
def vnet(module_workdir, module_log_dir, servers):
    sock = module_workdir / "vnet.sock"
    args = ["user", "net=10.0.2.0/24", "--socket", sock, "--dns-upstream", f"{servers.dns.host}:{servers.dns.port}"]
    with rig.VnetProcess(args, log_dir=module_log_dir) as proc:
        yield SimpleNamespace(proc=proc, sock=sock)


def counters(vnet) -> dict[str, int]:
    """vnet's counters (SIGUSR1): the block between its header and "vnet: end of counters" (empty on a fresh vnet)."""
    start = len(vnet.proc.stderr)
    os.kill(vnet.proc.pid, signal.SIGUSR1)
    m = vnet.proc.stderr.wait_for(re.compile(r"^vnet: counters\n((?:  \S+ \d+\n)*)vnet: end of counters\n", re.M), 10, start=start)
    return {k: int(v) for k, v in re.findall(r"^  (\S+) (\d+)$", m.group(1), re.M)}


def connect(vnet, timeout: float = 10.0) -> QemuLink:
    """A new connection that vnet has taken. vnet serves one QEMU at a time: a connection that arrives before it
    has seen the previous one close is turned away (counted), so try again until it is taken."""
    deadline = time.monotonic() + timeout
    while True:
        before = counters(vnet)
        q = QemuLink(vnet.sock)

        def settled():
            c = counters(vnet)
            if c.get("port_connections", 0) > before.get("port_connections", 0):
                return "taken"
            if c.get("port_rejected_connections", 0) > before.get("port_rejected_connections", 0):
                return "rejected"
            return None

        if rig.wait_for(settled, 10, interval=0.05, message="vnet to take or refuse the connection") == "taken":
            return q
        q.close()
        assert time.monotonic() < deadline, "vnet kept refusing new connections"


@pytest.fixture
def link(vnet):
    q = connect(vnet)
    yield q
    q.close()


def test_startup_names_the_egress_policy_and_limits(vnet):
    text = vnet.proc.stdout.text
    assert "vnet: egress: deny 169.254.0.0/16" in text and "169.254.169.254 (cloud metadata) is denied" in text, text
    assert "vnet: limits: tcp-flows 16384, tcp-half-open 1024, udp-flows 4096" in text, text


def test_case_20_udp_sweep_hits_the_limit_logged_once_per_interval(workdir, log_dir, servers):
    """A UDP sweep past --limit udp-flows=4: the rest is dropped and counted, the healthy flow (opened first)
    keeps working, and the log says so once for the interval, not once per datagram."""
    sock = workdir / "sweep.sock"
    with rig.VnetProcess(["user", "--socket", sock, "--limit", "udp-flows=4"], log_dir=log_dir) as proc:
        v = SimpleNamespace(proc=proc, sock=sock)
        assert "udp-flows 4," in proc.stdout.text
        q = connect(v)
        h = Healthy(q, servers)
        h.check()
        for port in range(20000, 20200):
            q.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=40030, dport=port) / Raw(b"sweep")))
        h.check()
        c = counters(v)
        assert c.get("drop_udp_flow_table_full") == 200 - 3, c
        line = proc.wait_for_line(r"limit reached: udp_flow_table_full x(\d+)", timeout=15, stream="stderr")
        assert int(line.group(1)) == 197
        h.check()
        assert proc.stderr.text.count("limit reached: udp_flow_table_full") == 1
        q.close()


class Healthy:
    """UDP guest:41000 -> 10.0.2.2:<echo port> (host loopback), one round trip per check."""

    def __init__(self, link: QemuLink, servers):
        self.link, self.port, self.n = link, servers.udp.port, 0

    def check(self) -> None:
        self.n += 1
        payload = b"healthy-%d" % self.n
        self.link.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=41000, dport=self.port) / Raw(payload)))
        self.link.wait_for(lambda p: UDP in p and p[UDP].dport == 41000 and data(p) == payload,
                           what="healthy-flow echo")


def deltas(vnet, before: dict[str, int]) -> dict[str, int]:
    after = counters(vnet)
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0) and k.startswith("drop_")}


def test_cases_1_2_4_5_lengths_and_sources(vnet, link, servers):
    """1: lengths 0-74, truncated ARP, NC-SI; 2: IHL and total length; 4: UDP lengths; 5: UDP from 0.0.0.0:0."""
    h = Healthy(link, servers)
    h.check()
    before = counters(vnet)
    udp = bytes(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=40000, dport=9) / Raw(b"x" * 33)))
    arp = bytes(eth(ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST_IP, pdst=GW_IP), dst="ff:ff:ff:ff:ff:ff"))[:42]
    ncsi = bytes(Ether(dst=GW_MAC, src=GUEST_MAC, type=0x88F8))
    for n in range(0, 75):
        link.send(udp[:n])
        if n < 42:
            link.send(arp[:n])
        if n >= 14:
            link.send(ncsi + canary(n - 14))
    h.check()
    # 2: IHL below 5 / past the frame, total length past the frame / below the header.
    for ihl in range(0, 5):
        f = bytearray(udp)
        f[14] = 0x40 | ihl
        link.send(bytes(f))
    link.send(eth(IP(src=GUEST_IP, dst=GW_IP, ihl=15) / Raw(b"ab")))
    for total in (19, len(udp) - 14 + 1, 0xFFFF):
        link.send(eth(IP(src=GUEST_IP, dst=GW_IP, len=total) / UDP(sport=40000, dport=9) / Raw(b"x" * 33)))
    # Padding is legal and never echoed.
    link.send(bytes(eth(IP(src=GUEST_IP, dst=GW_IP) / ICMP(type=8, id=0x4242, seq=1) / Raw(b"ping"))) + canary(40))
    reply = link.wait_for(lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].id == 0x4242, what="echo reply")
    assert data(reply) == b"ping"
    # 4: UDP cut inside its header, length past the IP payload, length below 8; shorter than the payload is legal.
    for n in range(0, 8):
        link.send(bytes(eth(IP(src=GUEST_IP, dst=GW_IP, proto=17) / Raw(bytes(UDP(sport=40001, dport=9, len=8))[:n]))) + canary(30))
    link.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=40001, dport=servers.udp.port, len=50) / Raw(b"y" * 10)))
    link.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=40001, dport=servers.udp.port, len=7) / Raw(b"y" * 10)))
    short = UDP(sport=40002, dport=servers.udp.port, chksum=0) / Raw(b"exact")   # no checksum (legal in IPv4)
    link.send(eth(IP(src=GUEST_IP, dst=GW_IP, proto=17) / Raw(bytes(short) + canary(16))))
    echoed = link.wait_for(lambda p: UDP in p and p[UDP].dport == 40002, what="echo of the short UDP datagram")
    assert data(echoed) == b"exact"
    # 5: UDP from 0.0.0.0 port 0.
    link.send(eth(IP(src="0.0.0.0", dst=GW_IP) / UDP(sport=0, dport=servers.udp.port) / Raw(b"nobody")))
    h.check()
    d = deltas(vnet, before)
    assert d.get("drop_port_frame_too_short") == 2 * 14 + 0, d   # udp and arp prefixes of 0..13 bytes
    assert d.get("drop_ipv4_malformed") == (75 - 14) + 5 + 1 + 3, d
    assert d.get("drop_arp_malformed") == 42 - 14, d
    assert d.get("drop_unknown_ethertype") == 75 - 14, d
    assert d.get("drop_udp_malformed") == 8 + 2, d
    assert d.get("drop_udp_source_port_zero") == 1, d
    assert not link.frames(0.2), "nothing else came back"


def test_case_6_7_dhcp(vnet, link, servers):
    h = Healthy(link, servers)
    before = counters(vnet)

    def discover(mac: str, xid: int, options=None):
        chaddr = bytes.fromhex(mac.replace(":", "")) + bytes(10)
        return eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
                   BOOTP(op=1, chaddr=chaddr, xid=xid) / DHCP(options=options or [("message-type", "discover"), "end"]),
                   dst="ff:ff:ff:ff:ff:ff", src=mac)

    good = bytes(discover("52:54:00:aa:00:01", 1)[UDP].payload)
    for n in (0, 100, 235, 239):   # shorter than BOOTP, cookie cut
        link.send(eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(good[:n]), dst="ff:ff:ff:ff:ff:ff"))
    body = good[:240]
    for opts in (bytes([53, 1, 1, 12, 200]) + canary(8), bytes([53, 1, 1]) + bytes(40)):   # overrun, no END
        link.send(eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(body + opts), dst="ff:ff:ff:ff:ff:ff"))
    bad_cookie = bytearray(good)
    bad_cookie[236] ^= 0xFF
    link.send(eth(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(bytes(bad_cookie)), dst="ff:ff:ff:ff:ff:ff"))
    h.check()
    # 7: more MACs than the pool (16) holds. An offer nobody confirmed does not keep a newcomer out (the oldest
    # unconfirmed offer is reclaimed for it), so every DISCOVER is answered or counted; the offers only ever name
    # the pool's 16 addresses (10.0.2.15-30).
    for i in range(40):
        link.send(discover(f"52:54:00:bb:00:{i:02x}", 1000 + i))
    offers = [f for f in link.frames(1.0) if UDP in Ether(f) and Ether(f)[UDP].sport == 67]
    h.check()
    d = deltas(vnet, before)
    assert d.get("drop_dhcp_malformed") == 7, d
    assert d.get("drop_dhcp_pool_exhausted", 0) + len(offers) == 40, (d, len(offers))
    offered = {Ether(f)[BOOTP].yiaddr for f in offers}
    pool = {f"10.0.2.{n}" for n in range(15, 31)}
    assert len(offers) > 16 and offered <= pool, (sorted(offered), d)


def test_cases_11_12_fragments(vnet, link, servers):
    h = Healthy(link, servers)
    before = counters(vnet)
    payload = bytes(range(256)) * 12
    frags = fragment(IP(src=GUEST_IP, dst=GW_IP, id=0x1111) / UDP(sport=40011, dport=servers.udp.port) / Raw(payload), fragsize=1024)
    assert len(frags) == 4
    for f in [frags[3], frags[1], frags[1], frags[0], frags[2], frags[0]]:   # out of order, duplicated
        link.send(eth(f))
    parts = {}

    def collect(p):
        if IP in p and p[IP].src == GW_IP and p[IP].proto == 17 and (p[IP].flags.MF or p[IP].frag):
            raw = bytes(p)[14:]
            ihl, total = (raw[0] & 15) * 4, struct.unpack(">H", raw[2:4])[0]
            parts[p[IP].frag * 8] = raw[ihl:total]
            return sum(len(v) for v in parts.values()) == 8 + len(payload)
        return False

    link.wait_for(collect, what="the fragmented echo")
    whole = b"".join(parts[k] for k in sorted(parts))
    assert whole[8:] == payload
    # A fragment that rewrites bytes: the datagram is dropped. Offset + length past 65535: dropped.
    frags = fragment(IP(src=GUEST_IP, dst=GW_IP, id=0x2222) / UDP(sport=40012, dport=servers.udp.port) / Raw(payload), fragsize=1024)
    evil = frags[0].copy()
    evil[Raw].load = canary(len(evil[Raw].load))
    for f in (frags[0], evil, frags[1], frags[2], frags[3]):
        link.send(eth(f))
    link.send(eth(IP(src=GUEST_IP, dst=GW_IP, id=0x3333, frag=8191, flags=0, proto=17) / Raw(b"z" * 16)))
    h.check()
    assert not [f for f in link.frames(0.3) if UDP in Ether(f) and Ether(f)[UDP].dport == 40012]
    d = deltas(vnet, before)
    assert d.get("drop_ipv4_fragment_overlap") == 1 and d.get("drop_ipv4_fragment_invalid") == 1, d


def test_case_15_tcp_segments(vnet, link, servers):
    """Data offset below 5, past the segment; out-of-window; an overlapping segment is trimmed."""
    h = Healthy(link, servers)
    before = counters(vnet)
    tcp = lambda **kw: IP(src=GUEST_IP, dst=GW_IP) / TCP(sport=50015, dport=servers.tcp.port, **kw)  # noqa: E731
    link.send(eth(tcp(seq=999, flags="S", options=[("MSS", 1460)])))
    synack = link.wait_for(lambda p: TCP in p and p[TCP].dport == 50015 and p[TCP].flags == "SA", what="SYN-ACK")
    ours = synack[TCP].seq + 1
    link.send(eth(tcp(seq=1000, ack=ours, flags="A")))
    for off in (4, 15):
        bad = bytearray(bytes(eth(tcp(seq=1000, ack=ours, flags="PA") / Raw(b"bad"))))
        bad[46] = (off << 4) | (bad[46] & 0x0F)
        link.send(bytes(bad))
    link.send(eth(tcp(seq=1000, ack=ours, flags="PA") / Raw(b"hello ")))
    link.send(eth(tcp(seq=1003, ack=ours, flags="PA") / Raw(b"lo world")))   # overlaps "lo "
    link.send(eth(tcp(seq=1000 + 5_000_000, ack=ours, flags="PA") / Raw(b"far ahead")))
    got = b""

    def echoed(p):
        nonlocal got
        if TCP in p and p[TCP].dport == 50015 and data(p):
            got += data(p)
            link.send(eth(tcp(seq=1000 + 11, ack=p[TCP].seq + len(data(p)), flags="A")))
        return got == b"hello world"

    link.wait_for(echoed, what="the echo of the trimmed stream")
    link.send(eth(tcp(seq=1011, ack=ours + 11, flags="R")))
    h.check()
    d = deltas(vnet, before)
    assert d.get("drop_tcp_malformed") == 2 and d.get("drop_tcp_out_of_order") == 1, d


def test_cases_16_18_19_icmp_broadcast_dns_port(vnet, link, servers):
    h = Healthy(link, servers)
    before = counters(vnet)
    quoted = bytes(IP(src=GUEST_IP, dst="192.0.2.1", len=1500, proto=17))
    link.send(eth(IP(src=GUEST_IP, dst="192.0.2.1") / ICMP(type=3, code=3) / Raw(quoted[:12] + canary(4))))
    link.send(eth(IP(src=GUEST_IP, dst="255.255.255.255") / UDP(sport=40018, dport=9) / Raw(b"b"), dst="ff:ff:ff:ff:ff:ff"))
    link.send(eth(IP(src=GUEST_IP, dst="10.0.2.255") / UDP(sport=40018, dport=9) / Raw(b"b"), dst="ff:ff:ff:ff:ff:ff"))
    queries = servers.dns.query_count
    link.send(eth(IP(src=GUEST_IP, dst=DNS_IP) / UDP(sport=40019, dport=5353) / Raw(b"\x12\x34" + bytes(10))))
    link.send(eth(IP(src=GUEST_IP, dst=DNS_IP) / TCP(sport=40019, dport=853, flags="S", seq=5)))
    link.wait_for(lambda p: TCP in p and p[TCP].dport == 40019 and "R" in str(p[TCP].flags), what="RST for DNS on port 853")
    # Egress policy: the cloud metadata address is denied by default, with ICMP "administratively prohibited".
    link.send(eth(IP(src=GUEST_IP, dst="169.254.169.254") / UDP(sport=40020, dport=80) / Raw(b"GET")))
    link.wait_for(lambda p: ICMP in p and p[ICMP].type == 3 and p[ICMP].code == 13, what="ICMP administratively prohibited")
    h.check()
    assert servers.dns.query_count == queries
    d = deltas(vnet, before)
    assert d.get("drop_icmp_type_ignored") == 1 and d.get("drop_martian_destination") == 1, d
    assert d.get("drop_udp_to_unknown_local_address") == 1 and d.get("drop_dns_wrong_port") == 2, d
    assert d.get("drop_egress_denied") == 1, d


def test_framing_short_oversize_desync_and_cut(vnet, servers):
    """Lengths 0-13 and > MTU+18 are skipped (connection stays up); > 65536+4096 resets that connection only;
    a connection cut mid-frame loses the partial frame and the next connection works."""
    before = counters(vnet)
    q = connect(vnet)
    h = Healthy(q, servers)
    h.check()
    for n in range(14):
        q.send(canary(n))
    q.send(canary(1519))
    q.send_raw(struct.pack(">I", QEMU_LIMIT) + canary(QEMU_LIMIT))
    h.check()
    q.send_raw(struct.pack(">I", QEMU_LIMIT + 1) + canary(64))
    q.wait_closed()
    q.close()
    # The port takes the next QEMU; a cut mid-frame is forgotten.
    q = connect(vnet)
    frame = bytes(eth(IP(src=GUEST_IP, dst=GW_IP) / ICMP(type=8, id=7, seq=7) / Raw(canary(20))))
    q.send_raw(struct.pack(">I", len(frame)) + frame[:30])
    q.close()
    q = connect(vnet)
    Healthy(q, servers).check()
    q.close()
    d = deltas(vnet, before)
    c = counters(vnet)
    assert d.get("drop_port_frame_too_short") == 14 and d.get("drop_port_frame_too_long") == 2, d
    assert c.get("port_desync_resets", 0) - before.get("port_desync_resets", 0) == 1
    assert "drop_icmp_malformed" not in d and "drop_ipv4_malformed" not in d, d


def test_cases_8_9_10_tftp(workdir, log_dir, servers):
    """8: TFTP shorter than its opcode, requests without NUL terminators, names `../x`, `a/../../b`, `..\\x`,
    absolute, trailing `/`; 9: blksize 0, huge, non-numeric at MTU 576; 10: file-not-found. Each is answered
    with a TFTP ERROR from port 69 and counted; a real file is still served, and the healthy flow works."""
    root = workdir / "tftproot"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f").write_bytes(b"tftp-file-body")
    (workdir / "secret").write_bytes(b"outside the root")
    sock = workdir / "tftp.sock"
    with rig.VnetProcess(["user", f"tftp={root}", "--mtu", "576", "--socket", sock], log_dir=log_dir) as proc:
        v = SimpleNamespace(proc=proc, sock=sock)
        q = connect(v)
        h = Healthy(q, servers)
        h.check()
        before = counters(v)
        sport = [50000]

        def ask(payload: bytes) -> tuple[int, bytes]:
            sport[0] += 1
            q.send(bytes(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=sport[0], dport=69) / Raw(payload))) + canary(24))
            p = q.wait_for(lambda p: UDP in p and p[UDP].sport == 69 and p[UDP].dport == sport[0], what="TFTP reply")
            body = data(p)
            return struct.unpack(">H", body[:2])[0], body

        def rrq(name: bytes, *opts: bytes) -> bytes:
            return b"\x00\x01" + name + b"\x00octet\x00" + b"".join(o + b"\x00" for o in opts)

        malformed = [b"", b"\x00", b"\x00\x01", b"\x00\x01dir/f", b"\x00\x01dir/f\x00octet"]
        paths = [b"../secret", b"a/../../secret", b"..\\secret", b"/etc/passwd", b"dir/../../secret"]
        for payload in malformed + [rrq(p) for p in paths]:
            op, body = ask(payload)
            assert op == 5 and body.endswith(b"\x00"), body
            assert b"outside the root" not in body and b"root:" not in body
        op, body = ask(rrq(b"dir/"))
        assert (op, body[2:4]) == (5, b"\x00\x02"), body        # a directory is not served
        op, body = ask(rrq(b"missing"))
        assert (op, body[2:4]) == (5, b"\x00\x01"), body        # 10: file not found
        for value in (b"0", b"7", b"abc", b""):
            op, body = ask(rrq(b"dir/f", b"blksize", value))
            assert (op, body[2:4]) == (5, b"\x00\x08"), (value, body)
        op, body = ask(rrq(b"dir/f", b"blksize", b"65464"))  # huge: clamped to 576 - 20 - 8 - 4
        assert body == b"\x00\x06blksize\x00544\x00", body
        q.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=sport[0], dport=69) / Raw(b"\x00\x04\x00\x00")))
        p = q.wait_for(lambda p: UDP in p and p[UDP].sport == 69 and data(p)[:2] == b"\x00\x03", what="TFTP DATA")
        assert data(p) == b"\x00\x03\x00\x01tftp-file-body"
        q.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=sport[0], dport=69) / Raw(b"\x00\x04\x00\x01")))
        h.check()
        d = deltas(v, before)
        assert d.get("drop_tftp_malformed") == len(malformed), d
        assert d.get("drop_tftp_path_refused") == len(paths) + 1, d      # + the directory
        assert d.get("drop_tftp_refused") == 1 + 4, d                    # missing + 4 bad blksize values
        assert set(d) == {"drop_tftp_malformed", "drop_tftp_path_refused", "drop_tftp_refused"}, d
        c = counters(v)
        assert c.get("tftp_transfers_completed") == 1, c
        q.close()


GUEST6, GW6, GW6_LL = "fec0::5054:ff:fe12:3456", "fec0::2", "fe80::2"


def test_cases_3_9_14_ipv6(vnet, link, servers):
    """3: IPv6 payload length past the frame, echo padding never echoed; 9: a DHCPv6 CLIENTID larger than the reply
    space; 14: IPv6 fragments out of order (reassembled, to a host ::1 echo server), overlapping, past 65535."""
    from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6, IPv6ExtHdrFragment,
                                    ICMPv6NDOptSrcLLAddr)
    from scapy.layers.dhcp6 import DHCP6_InfoRequest, DHCP6OptClientId
    h = Healthy(link, servers)
    h.check()
    # Announce the guest (its neighbour solicitation for the gateway), and take the NA and the first RA.
    link.send(Ether(dst="33:33:ff:00:00:02", src=GUEST_MAC) / IPv6(src=GUEST6, dst="ff02::1:ff00:2", hlim=255)
              / ICMPv6ND_NS(tgt=GW6) / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))
    link.frames(0.5)
    before = counters(vnet)
    # 3: payload length one byte past the frame, then a good echo stuffed with canary padding.
    bad = bytearray(bytes(eth(IPv6(src=GUEST6, dst=GW6) / ICMPv6EchoRequest(id=7, seq=1, data=b"abcd"))))
    bad[18:20] = struct.pack(">H", struct.unpack(">H", bad[18:20])[0] + 1)
    link.send(bytes(bad))
    link.send(bytes(eth(IPv6(src=GUEST6, dst=GW6) / ICMPv6EchoRequest(id=7, seq=2, data=b"abcd"))) + canary(100))
    reply = link.wait_for(lambda p: ICMPv6EchoReply in p and p[ICMPv6EchoReply].seq == 2, what="IPv6 echo reply")
    assert reply[IPv6].plen == 8 + 4 and bytes(reply[ICMPv6EchoReply].data) == b"abcd"
    h.check()
    # 9: a CLIENTID that cannot fit a reply within the MTU.
    link.send(Ether(dst="33:33:00:01:00:02", src=GUEST_MAC) / IPv6(src="fe80::5054:ff:fe12:3456", dst="ff02::1:2")
              / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=5) / DHCP6OptClientId(duid=Raw(canary(1440))))
    h.check()
    # 14: a datagram to the host ::1 echo server, in fragments sent last-first (and one duplicated).
    payload = b"".join(b"frag-%04d" % i for i in range(120))
    pkt = IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrFragment(id=0xABCD) / UDP(sport=40600, dport=servers.udp6.port) / Raw(payload)
    frags = fragment6_list(pkt, 600)
    for f in reversed(frags):
        link.send(eth(f))
    link.send(eth(frags[0]))
    echo = link.wait_for(lambda p: UDP in p and p[UDP].dport == 40600, timeout=10, what="reassembled datagram's echo")
    # 1,200 bytes fit the MTU: the echo comes back whole, from the gateway's IPv6 address.
    assert IPv6ExtHdrFragment not in echo and echo[IPv6].src == GW6 and bytes(echo[UDP].payload) == payload
    assert servers.udp6.peers[-1][0] == "::1"
    # An overlapping fragment with other bytes, and one past 65535.
    pkt2 = IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrFragment(id=0xABCE, nh=17, m=1, offset=0) / Raw(bytes(UDP(sport=40601, dport=9)) + canary(56))
    link.send(eth(pkt2))
    link.send(eth(IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrFragment(id=0xABCE, nh=17, m=1, offset=2) / Raw(b"\x55" * 64)))
    link.send(eth(IPv6(src=GUEST6, dst=GW6) / IPv6ExtHdrFragment(id=0xABCF, nh=17, m=0, offset=8191) / Raw(canary(16))))
    h.check()
    d = deltas(vnet, before)
    assert d.get("drop_ipv6_malformed") == 1, d
    assert d.get("drop_dhcpv6_malformed") == 1, d
    assert d.get("drop_ipv6_fragment_overlap") == 1, d
    assert d.get("drop_ipv6_fragment_invalid") == 1, d
    assert counters(vnet).get("datagrams_reassembled", 0) >= 1


def fragment6_list(pkt, size):
    from scapy.layers.inet6 import fragment6
    return fragment6(pkt, size)
