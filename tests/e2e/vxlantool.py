#!/usr/bin/env python3
"""VXLAN helpers run inside test namespaces (stdlib only).

  vxlantool.py bad TRUSTED UNTRUSTED DST PORT VNI
        sends, from TRUSTED (a remote vnet accepts), one datagram of each bad kind to DST:PORT: a short
        header, the I flag clear, another VNI, an inner frame shorter than an Ethernet header, one longer than
        the MTU, an 802.1Q-tagged inner frame; then one good VNI datagram from UNTRUSTED (not a remote).
        Prints "SENT 7".
  vxlantool.py capture IFACE SRC COUNT SECONDS
        reads frames on IFACE (AF_PACKET) and prints one line per outer UDP datagram from SRC (IPv4 or IPv6)
        to port 4789: "DF <0|1> SPORT <n> CSUM <hex> VALID <yes|no|zero>", after "READY"; stops after COUNT
        such datagrams or SECONDS.
"""

import ipaddress
import select
import socket
import struct
import sys
import time


def header(vni, flags=0x08):
    return struct.pack("!B3xI", flags, vni << 8)


def inner(length=60, ethertype=0x0800, src=b"\x52\x54\x00\xba\xdb\xad"):
    frame = b"\xff" * 6 + src + struct.pack("!H", ethertype)
    return frame + b"\x00" * max(0, length - len(frame))


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def bad(trusted, untrusted, dst, port, vni):
    datagrams = [
        header(vni)[:5],                                   # short header
        header(vni, flags=0x00) + inner(),                  # I flag clear
        header(vni + 1) + inner(),                          # another VNI
        header(vni) + inner()[:13],                         # inner frame too short
        header(vni) + inner(length=2000),                   # inner frame too long
        header(vni) + inner(ethertype=0x8100),              # tagged inner frame
    ]
    fam = family_of(dst)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((trusted, 0))
        for d in datagrams:
            s.sendto(d, (dst, port))
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((untrusted, 0))
        s.sendto(header(vni) + inner(), (dst, port))
    print("SENT", len(datagrams) + 1, flush=True)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def capture(iface, src, count, seconds):
    want = ipaddress.ip_address(src)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    s.bind((iface, 0))
    print("READY", flush=True)
    deadline = time.monotonic() + seconds
    seen = 0
    while seen < count and time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        frame, meta = s.recvfrom(65535)
        if meta[2] == socket.PACKET_OUTGOING:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        ip = frame[14:]
        if ethertype == 0x0800 and len(ip) >= 28 and ip[9] == 17:
            ihl = (ip[0] & 0x0F) * 4
            if ipaddress.ip_address(ip[12:16]) != want:
                continue
            df = (struct.unpack("!H", ip[6:8])[0] >> 14) & 1
            udp = ip[ihl:struct.unpack("!H", ip[2:4])[0]]
            pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
        elif ethertype == 0x86DD and len(ip) >= 48 and ip[6] == 17:
            if ipaddress.ip_address(ip[8:24]) != want:
                continue
            df = 1   # IPv6 routers never fragment
            udp = ip[40:40 + struct.unpack("!H", ip[4:6])[0]]
            pseudo = ip[8:40] + struct.pack("!IxxxB", len(udp), 17)
        else:
            continue
        sport, dport, _, csum = struct.unpack("!HHHH", udp[:8])
        if dport != 4789:
            continue
        valid = "zero" if csum == 0 else ("yes" if checksum(pseudo + udp) == 0xFFFF else "no")
        print(f"DF {df} SPORT {sport} CSUM {csum:04x} VALID {valid}", flush=True)
        seen += 1
    print("DONE", seen, flush=True)


def main(argv):
    if argv[1] == "bad":
        bad(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
    elif argv[1] == "capture":
        capture(argv[2], argv[3], int(argv[4]), float(argv[5]))
    else:
        raise SystemExit(f"unknown command {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
