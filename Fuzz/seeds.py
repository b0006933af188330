#!/usr/bin/env python3
"""Builds the fuzz seed corpora (Fuzz/Corpus/<Target>/) from a directory of pcaps of real QEMU guest traffic
(Ethernet or Linux cooked captures; libslirp's fuzzing seeds, fuzzing/IN in its repository, are such captures).
Standard library only; run from anywhere:

    python3 Fuzz/seeds.py PCAP_DIR

Each target gets inputs in its own format (see the target's header comment): whole frames, IPv4 packets as
records, ICMP/UDP/DHCP/DNS payloads, TCP segments as records, a QEMU stream per capture, and a record sequence
per capture for the whole gateway. File names are content hashes, so re-running is idempotent.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")


def frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "I", data[off + 8:off + 12])[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype == 1:
            out.append(pkt)
        elif linktype == 276 and len(pkt) >= 20:   # Linux cooked v2: protocol, then 18 more bytes
            out.append(GW_MAC + GUEST_MAC + pkt[0:2] + pkt[20:])
    return out


def record(selector: int, body: bytes) -> bytes:
    return bytes([selector]) + struct.pack(">H", len(body)) + body


def ipv4(frame: bytes):
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    total = struct.unpack(">H", frame[16:18])[0]
    packet = frame[14:14 + total]
    return packet, packet[9], packet[ihl:]


def write(target: str, data: bytes) -> None:
    d = HERE / "Corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def ipv6_seeds() -> list[bytes]:
    """Hand-made FuzzIPv6 inputs for what the captures lack: NDP, RS, DHCPv6, fragments, TCP over IPv6."""
    gw = bytes.fromhex("fec00000000000000000000000000002")
    ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + gw + bytes([1, 1]) + GUEST_MAC          # NS for fec0::2 with SLLA
    rs = bytes([133, 0, 0, 0, 0, 0, 0, 0]) + bytes([1, 1]) + GUEST_MAC
    echo = bytes([128, 0, 0, 0, 0, 7, 0, 1]) + b"ping6-payload"
    info = bytes([11, 1, 2, 3, 0, 1, 0, 10, 0, 3, 0, 1]) + GUEST_MAC + bytes([0, 6, 0, 4, 0, 23, 0, 24])
    dns = struct.pack(">HHHH", 5353, 53, 8 + 29, 0) + bytes.fromhex("123401000001000000000000") + b"\x03six\x04test\x00\x00\x1c\x00\x01"
    syn = struct.pack(">HHIIBBHHH", 40000, 8080, 1000, 0, 0x60, 0x02, 65535, 0, 0) + bytes([2, 4, 5, 0xa0])
    udp = struct.pack(">HHHH", 4000, 9, 8 + 64, 0) + bytes(range(64))
    return [
        record(1 | (1 << 3) | (7 << 3), ns) + record(1 | (5 << 3) | (8 << 3), rs) + record(1 | (1 << 3), echo),
        record(2, info) + record(7, b"\x04") + record(2, info[:9]),
        record(3 | (2 << 3), dns) + record(6 | (0 << 3), b"answer") + record(3 | (3 << 3), udp),
        record(4 | (3 << 3), udp[:32]) + record(4 | (3 << 3) | (1 << 3), udp[32:]),
        record(5 | (1 << 3), syn) + record(5 | (3 << 3), syn) + record(6 | (2 << 3), b"data") + record(7, b"\x10"),
        record(0, bytes([0x60, 0, 0, 0, 0, 8, 0, 64]) + bytes(32) + bytes([59, 0, 0, 0, 0, 0, 0, 0])),
    ]


def fast_path_seeds() -> list[bytes]:
    """Hand-made FuzzFastPaths inputs (see its header for the records): a TCP connection whose data arrives in
    held frames of one read (the gather), the same through TAP offload frames with partial checksums and a
    64 KiB super-segment, a burst of same-size UDP datagrams (GSO batching), raw TAP reads, and a connection
    whose segments arrive out of order (held by the gateway until the hole fills)."""
    data = bytes((i * 7 + 3) & 0xFF for i in range(1000))
    syn, ack, psh, fin = b"\x02\x00", b"\x10\x00", b"\x18\x00", b"\x11\x00"
    connected = record(7, b"") + record(5 | (24 << 3), b"\xff")         # end the read; flow 0 connects (80 KiB space)
    gather = (record(2, syn) + connected + record(2, ack) + b"".join(record(2, psh + data) for _ in range(6))
              + record(7, b"") + record(4, b"response bytes") + record(2, ack) + record(2, fin) + record(7, b"")
              + record(6 | (8 << 3), b"\x01"))
    off = 2 | (4 << 3)   # connection 0 as TAP offload frames (partial checksum)
    offload = (record(off, syn) + connected + record(off, ack) + record(off, psh + data * 30)
               + record(off, psh + data[:500]) + record(4, data * 20) + record(off, ack) + record(off, fin))
    udp = b"".join(record(3, data) for _ in range(12)) + record(3 | (1 << 3), data[:300]) + record(3, data) + record(7, b"")
    udp_frame = (b"\xff" * 6 + GUEST_MAC + b"\x08\x00" + struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + 16, 1, 0x4000, 64, 17, 0,
                                                                    bytes([10, 0, 2, 15]), bytes([192, 0, 2, 1]))
                 + struct.pack(">HHHH", 41000, 5000, 8 + 16, 0) + bytes(range(16)))
    vnet_header = bytes([1, 0, 0, 0, 0, 0, 34, 0, 6, 0])   # NEEDS_CSUM, unsegmented, csum_start 34, offset 6
    tap = record(1 | (1 << 3), vnet_header + udp_frame) + record(1, bytes(10) + udp_frame) + record(0 | (1 << 3), udp_frame)
    # Reordered delivery (flags | 0x80: held back behind the next segment): the out-of-order store.
    late = b"\x98\x00"
    reorder = (record(2, syn) + connected + record(2, ack)
               + b"".join(record(2, late + data) + record(2, psh + data[:700]) for _ in range(4))
               + record(7, b"") + record(2, late + data) + record(2, psh + data) + record(7, b"") + record(2, fin) + record(7, b""))
    return [gather, offload, udp, tap, gather + offload + udp, reorder]


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python3 Fuzz/seeds.py PCAP_DIR (a directory of pcaps of QEMU guest traffic)")
    pcaps = Path(sys.argv[1])
    for pcap in sorted(pcaps.glob("*.pcap")):
        fs = frames(pcap)
        stream, gateway, fragments, tcp, ipv6 = b"", b"", b"", b"", b""
        for f in fs:
            if len(f) >= 54 and f[12:14] == b"\x86\xdd":
                # FuzzIPv6: the packet as sent (selector 0), and its upper layer re-sent with checksums fixed
                # (1: ICMPv6, 3: UDP, 5: TCP) when no extension header sits in between.
                packet = f[14:]
                ipv6 += record(0, packet)
                nh, body = packet[6], packet[40:40 + struct.unpack(">H", packet[4:6])[0]]
                kind = {58: 1, 17: 3, 6: 5}.get(nh)
                if kind is not None:
                    ipv6 += record(kind | (1 << 3), body)

            write("FuzzEthernetARP", f)
            stream += struct.pack(">I", len(f)) + f
            gateway += record(0, f) + record(1, f)
            p = ipv4(f)
            if not p:
                continue
            packet, proto, l4 = p
            fragments += record(0, packet)
            if proto == 1:
                write("FuzzICMP", l4)
            elif proto == 17 and len(l4) >= 8:
                write("FuzzUDP", l4)
                sport, dport = struct.unpack(">HH", l4[:4])
                if 67 in (sport, dport) or 68 in (sport, dport):
                    write("FuzzDHCP", l4[8:])
                if 53 in (sport, dport):
                    write("FuzzDNS", l4[8:])
            elif proto == 6:
                tcp += record(0, l4) + record(4, b"\x00") + record(5, b"hello")
        for target, data in (("FuzzStreamFraming", stream), ("FuzzGateway", gateway),
                             ("FuzzIPv4Fragments", fragments), ("FuzzTCP", tcp), ("FuzzIPv6", ipv6)):
            if data:
                write(target, data)
    for data in ipv6_seeds():
        write("FuzzIPv6", data)
    for data in fast_path_seeds():
        write("FuzzFastPaths", data)
    for target in sorted(p.name for p in (HERE / "Corpus").iterdir()):
        print(f"{target}: {len(list((HERE / 'Corpus' / target).iterdir()))} seeds")


if __name__ == "__main__":
    main()
