#!/usr/bin/env python3
"""Flood and fault helpers for tests/e2e/test_floods.py, run inside the test's own namespaces (stdlib only).

Guest side (in the guest namespace, behind vnet's TAP):
  floodtool.py syn IFACE GW_IP OPEN_PORT CLOSED_BASE N
        N TCP SYNs from the interface's own address and MAC, raw (AF_PACKET), half to GW_IP:OPEN_PORT and half
        to GW_IP:CLOSED_BASE+(i % 1000), each from its own source port. Prints "SENT n seconds", then counts
        what comes back until stdin closes: "SEEN synack=A rst=R".
  floodtool.py udp IFACE GW_IP FIRST LAST SPORT
        One UDP datagram to every port FIRST..LAST of GW_IP from source port SPORT; same output (icmp=…).
  floodtool.py dhcp IFACE N HOLDER_IP
        A renewal REQUEST from the interface's own MAC for HOLDER_IP, DHCP DISCOVER/REQUEST from N made-up MACs
        (pipelined), then the renewal again. Prints "RENEW-BEFORE ip", "LEASES k addresses…", "RENEW ip" ("none"
        when unanswered).
  floodtool.py dhcp-one IFACE TAG
        DISCOVER/REQUEST from one fresh MAC (derived from TAG); prints "LEASE ip" or "LEASE none".
  floodtool.py stream HOST PORT STOPFILE MIN_BYTES
        An established transfer both ways (two connections) that runs until STOPFILE exists and each direction
        moved MIN_BYTES: the download is checked against the pattern as it arrives, the upload by the server's
        digest. Prints "PROGRESS down up" lines, then "DOWN ok N" / "UP ok N" (or "... BAD ...").
Host side:
  floodtool.py sink HOST PORT        accepts and closes connections as fast as it can; prints LISTENING
  floodtool.py stream-server HOST PORT   the server end of `stream`; prints LISTENING
  floodtool.py storm HOST PORT N CONCURRENCY
        N connections, CONCURRENCY at a time; each sends b"S" + 8-byte size 64 (nettool's request) and reads
        64 bytes. Prints "STORM ok=… failed=… seconds=…".
  floodtool.py hold HOST PORT N
        Opens N connections and holds them without a word; prints "OPEN n" once connected (the kernel's handshake:
        the other end may not have accepted them yet). On a line "go" from stdin, sends each nettool's request
        (b"S" + size 64), reads 64 bytes from each (60 s deadline) and prints "DONE ok=… failed=…".
  floodtool.py reset-server HOST PORT
        Per connection: reads the request line b"MODE\\n" then
          "send": sends the pattern until 4 MiB went out, then aborts (RST, SO_LINGER 0);
          "stall": reads 1 MiB, then stops reading until a line "go" arrives on stdin, then aborts;
          "stall-resume": the same, but on "go" it reads to EOF and answers "SHA256 LENGTH" of all it read.
        Prints LISTENING, "STALLED" when a stalled reader has stopped, "ABORTED mode" after each abort.
  floodtool.py reset-client HOST PORT MODE
        Guest side of reset-server: MODE send (reads until the reset) or stall (sends until blocked, reports
        "BLOCKED", then waits for the reset). Prints "RESET bytes" or "EOF bytes" or "TIMEOUT".
"""

import hashlib
import os
import select
import selectors
import socket
import struct
import sys
import threading
import time

BLOCK = hashlib.sha256(b"vnet test pattern").digest() * 2048  # 64 KiB, deterministic (as nettool.py)
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800


def pattern_sha(size):
    h = hashlib.sha256()
    while size > 0:
        n = min(size, len(BLOCK))
        h.update(BLOCK[:n])
        size -= n
    return h.hexdigest()


# ---------------------------------------------------------------- raw frames


def csum_add(total, data):
    if len(data) % 2:
        data += b"\0"
    total += sum(struct.unpack("!%dH" % (len(data) // 2), data))
    return total


def csum_fold(total):
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def csum(data, start=0):
    return (~csum_fold(csum_add(start, data))) & 0xFFFF


def ip_header(src, dst, proto, payload_len, ident=0x4242):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0x4000, 64, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def iface_facts(iface):
    mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    return mac


# Classic BPF programs (struct sock_filter: code, jt, jf, k), so the counting socket never sees the bulk of the
# established transfer: only IPv4 from the gateway's MAC of the kind being counted.
def _bpf_ipv4_from_gateway(tail):
    prog = [
        (0x28, 0, 0, 12), (0x15, 0, None, 0x0800),            # ldh [12]; jeq IPv4 else drop
        (0x20, 0, 0, 8), (0x15, 0, None, 0x0A000202),          # ld [8] (source MAC bytes 2-5); jeq 0a:00:02:02
    ] + tail
    drop = len(prog)
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        out.append((code, jt, drop - i - 1 if jf is None else jf, k))
    out += [(0x06, 0, 0, 0)]                                   # drop: ret 0
    return out


ACCEPT = (0x06, 0, 0, 0xFFFF)
BPF_TCP_SYN_OR_RST = _bpf_ipv4_from_gateway([
    (0x30, 0, 0, 23), (0x15, 0, None, 6),                      # ldb [23]; jeq TCP
    (0xb1, 0, 0, 14),                                          # ldxb 4*([14]&0xf)
    (0x50, 0, 0, 27), (0x45, 0, None, 0x06),                   # ldb [x+27] (flags); jset SYN|RST
    ACCEPT])
BPF_ICMP = _bpf_ipv4_from_gateway([(0x30, 0, 0, 23), (0x15, 0, None, 1), ACCEPT])
BPF_DHCP_REPLY = _bpf_ipv4_from_gateway([
    (0x30, 0, 0, 23), (0x15, 0, None, 17), (0xb1, 0, 0, 14),
    (0x48, 0, 0, 14), (0x15, 0, None, 67),                     # ldh [x+14] (UDP source port); jeq 67
    ACCEPT])


def attach_filter(s, prog):
    import ctypes
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, 26, fprog)   # SO_ATTACH_FILTER


def raw_socket(iface, prog=None):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if prog is not None:
        attach_filter(s, prog)
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: counting replies, lose as few as possible
    s.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
    s.bind((iface, 0))
    return s


GW_MAC = bytes.fromhex("52550a000202")


class Seen:
    """Counts frames from vnet on a packet socket in a thread until stopped."""

    def __init__(self, sock, classify):
        self.sock, self.classify = sock, classify
        self.counts = {}
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                f, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING or f[6:12] != GW_MAC:
                continue
            k = self.classify(f)
            if k:
                self.counts[k] = self.counts.get(k, 0) + 1

    def finish(self):
        self.stop = True
        self.t.join()
        return self.counts


def wait_stdin_eof():
    while sys.stdin.buffer.read(65536):
        pass


def tcp_classify(f):
    if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
        return None
    ihl = (f[14] & 15) * 4
    flags = f[14 + ihl + 13]
    if flags & 0x04:
        return "rst"
    if flags & 0x12 == 0x12:
        return "synack"
    return None


def cmd_syn(iface, gw_ip, open_port, closed_base, n):
    mac = iface_facts(iface)
    src = socket.inet_aton(guest_ip(iface))
    dst = socket.inet_aton(gw_ip)
    s = raw_socket(iface, BPF_TCP_SYN_OR_RST)
    seen = Seen(s, tcp_classify)
    eth = GW_MAC + mac + b"\x08\x00"
    iph = ip_header(src, dst, 6, 24)
    pseudo = csum_add(0, src + dst + struct.pack("!HH", 6, 24))
    # TCP header with ports and checksum zero, MSS option; the checksum is finished per frame.
    base = struct.pack("!HHIIBBHHH", 0, 0, 0x11111111, 0, 6 << 4, 0x02, 64240, 0, 0) + b"\x02\x04\x05\xb4"
    base_sum = csum_add(pseudo, base)
    t0 = time.monotonic()
    frames = []
    for i in range(n):
        sport = 10000 + (i // 2) % 50000
        dport = open_port if i % 2 == 0 else closed_base + (i // 2) % 1000
        c = (~csum_fold(base_sum + sport + dport)) & 0xFFFF
        frames.append(eth + iph + struct.pack("!HH", sport, dport) + base[4:16] + struct.pack("!H", c) + base[18:])
        if len(frames) == 1024:
            for fr in frames:
                s.send(fr)
            frames.clear()
    for fr in frames:
        s.send(fr)
    print(f"SENT {n} {time.monotonic() - t0:.2f}", flush=True)
    wait_stdin_eof()
    c = seen.finish()
    print(f"SEEN synack={c.get('synack', 0)} rst={c.get('rst', 0)}", flush=True)


def guest_ip(iface):
    import fcntl
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    req = struct.pack("256s", iface.encode())
    return socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR


def udp_classify(f):
    if len(f) < 34 or f[12:14] != b"\x08\x00":
        return None
    if f[23] == 1 and f[14 + (f[14] & 15) * 4] == 3:
        return "icmp"
    if f[23] == 17:
        return "udp"
    return None


def cmd_udp(iface, gw_ip, first, last, sport):
    mac = iface_facts(iface)
    src, dst = socket.inet_aton(guest_ip(iface)), socket.inet_aton(gw_ip)
    s = raw_socket(iface, BPF_ICMP)
    seen = Seen(s, udp_classify)
    eth = GW_MAC + mac + b"\x08\x00"
    payload = b"sweep!"
    ulen = 8 + len(payload)
    iph = ip_header(src, dst, 17, ulen)
    base_sum = csum_add(csum_add(0, src + dst + struct.pack("!HH", 17, ulen)), struct.pack("!HH", sport, ulen) + payload)
    t0 = time.monotonic()
    n = 0
    for dport in range(first, last + 1):
        c = (~csum_fold(base_sum + dport)) & 0xFFFF or 0xFFFF
        s.send(eth + iph + struct.pack("!HHHH", sport, dport, ulen, c) + payload)
        n += 1
    print(f"SENT {n} {time.monotonic() - t0:.2f}", flush=True)
    wait_stdin_eof()
    c = seen.finish()
    print(f"SEEN icmp={c.get('icmp', 0)} udp={c.get('udp', 0)}", flush=True)


# ---------------------------------------------------------------- DHCP


def dhcp_frame(mac, xid, msgtype, requested=None, ciaddr=b"\0\0\0\0", server=None):
    opts = bytes([53, 1, msgtype])
    if requested:
        opts += bytes([50, 4]) + requested
    if server:
        opts += bytes([54, 4]) + server
    opts += bytes([55, 2, 1, 3, 255])
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000 if ciaddr == b"\0\0\0\0" else 0,
                        ciaddr, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac + b"\0" * 10, b"", b"") + b"\x63\x82\x53\x63" + opts
    src = ciaddr
    dst = b"\xff\xff\xff\xff"
    ulen = 8 + len(bootp)
    udp = struct.pack("!HHHH", 68, 67, ulen, 0) + bootp
    c = csum(udp, csum_add(0, src + dst + struct.pack("!HH", 17, ulen))) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip_header(src, dst, 17, ulen) + udp


def dhcp_parse(f):
    """(xid, message type, yiaddr, server id) of a DHCP reply from the gateway, or None."""
    if len(f) < 14 + 20 + 8 + 240 or f[12:14] != b"\x08\x00" or f[23] != 17 or f[6:12] != GW_MAC:
        return None
    ihl = (f[14] & 15) * 4
    u = 14 + ihl
    if struct.unpack("!H", f[u:u + 2])[0] != 67:
        return None
    b = f[u + 8:]
    xid = struct.unpack("!I", b[4:8])[0]
    yiaddr = b[16:20]
    opts, i, mtype, server = b[240:], 0, None, None
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        code, ln = opts[i], opts[i + 1]
        if code == 53:
            mtype = opts[i + 2]
        if code == 54:
            server = opts[i + 2:i + 2 + ln]
        i += 2 + ln
    return xid, mtype, yiaddr, server


def dhcp_exchange(s, frames_by_xid, want, timeout=3.0):
    """Sends each frame, then collects replies of type `want` by xid until all answered or quiet for 1 s
    after the last reply (bounded by `timeout`). Returns {xid: (yiaddr, server)}."""
    for fr in frames_by_xid.values():
        s.send(fr)
    got = {}
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    s.settimeout(0.05)
    while len(got) < len(frames_by_xid) and time.monotonic() < deadline and time.monotonic() - last < 1.0:
        try:
            f, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        last = time.monotonic()
        r = dhcp_parse(f)
        if r and r[0] in frames_by_xid and r[1] == want:
            got[r[0]] = (r[2], r[3])
    return got


def fake_mac(i, tag=0):
    return bytes([0x52, 0x54, 0xAA, tag & 0xFF, (i >> 8) & 0xFF, i & 0xFF])


def dora(s, macs, xid_base):
    discovers = {xid_base + i: dhcp_frame(m, xid_base + i, 1) for i, m in enumerate(macs)}
    offers = dhcp_exchange(s, discovers, 2, timeout=2.0)
    requests = {x: dhcp_frame(macs[x - xid_base], x, 3, requested=offers[x][0], server=offers[x][1]) for x in offers}
    acks = dhcp_exchange(s, requests, 5, timeout=3.0) if requests else {}
    return {x: socket.inet_ntoa(v[0]) for x, v in acks.items()}


def renew(s, mac, ip, xid):
    got = dhcp_exchange(s, {xid: dhcp_frame(mac, xid, 3, ciaddr=socket.inet_aton(ip))}, 5, timeout=3.0)
    return socket.inet_ntoa(got[xid][0]) if got else "none"


def cmd_dhcp(iface, n, holder_ip):
    s = raw_socket(iface, BPF_DHCP_REPLY)
    mac = iface_facts(iface)
    print(f"RENEW-BEFORE {renew(s, mac, holder_ip, 0x7776)}", flush=True)   # the holder's lease runs from here
    macs = [fake_mac(i) for i in range(n)]
    leases = {}
    for start in range(0, n, 250):   # pipelined in batches: 250 DISCOVERs, their OFFERs, REQUESTs, ACKs
        leases.update(dora(s, macs[start:start + 250], 0x10000 + start))
    print(f"LEASES {len(leases)} {' '.join(sorted(set(leases.values())))}", flush=True)
    print(f"RENEW {renew(s, mac, holder_ip, 0x7777)}", flush=True)


def cmd_dhcp_one(iface, tag):
    s = raw_socket(iface, BPF_DHCP_REPLY)
    got = dora(s, [fake_mac(int(tag), tag=0x77)], 0x900000 + int(tag))
    print(f"LEASE {next(iter(got.values())) if got else 'none'}", flush=True)


# ---------------------------------------------------------------- the established transfer


def cmd_stream_server(host, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    print("LISTENING", flush=True)

    def handle(c):
        with c:
            kind = c.recv(1)
            if kind == b"D":
                try:
                    while True:
                        c.sendall(BLOCK)
                except OSError:
                    return
            elif kind == b"U":
                h, n = hashlib.sha256(), 0
                while True:
                    d = c.recv(1 << 20)
                    if not d:
                        break
                    h.update(d)
                    n += len(d)
                c.sendall(f"{h.hexdigest()} {n}\n".encode())

    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def cmd_stream(host, port, stopfile, min_bytes):
    state = {"down": 0, "up": 0}
    results = {}

    def down():
        h = hashlib.sha256()
        with socket.create_connection((host, port), timeout=60) as s:
            s.sendall(b"D")
            off = 0
            while not (os.path.exists(stopfile) and state["down"] >= min_bytes):
                d = s.recv(1 << 16)
                if not d:
                    results["down"] = f"DOWN BAD eof after {state['down']}"
                    return
                h.update(d)
                state["down"] += len(d)
            results["down"] = (f"DOWN ok {state['down']}" if h.hexdigest() == pattern_sha(state["down"])
                               else f"DOWN BAD digest after {state['down']}")

    def up():
        with socket.create_connection((host, port), timeout=60) as s:
            s.sendall(b"U")
            while not (os.path.exists(stopfile) and state["up"] >= min_bytes):
                s.sendall(BLOCK)
                state["up"] += len(BLOCK)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                d = s.recv(200)
                if not d:
                    break
                reply += d
            digest, _, n = reply.decode().strip().partition(" ")
            ok = n == str(state["up"]) and digest == pattern_sha(state["up"])
            results["up"] = f"UP {'ok' if ok else 'BAD'} {state['up']} (server: {reply.decode().strip()})"

    def guarded(fn, key):
        try:
            fn()
        except Exception as e:  # reported, never hidden
            results[key] = f"{key.upper()} BAD {e!r} after {state[key]}"

    threads = [threading.Thread(target=guarded, args=(f, k)) for f, k in ((down, "down"), (up, "up"))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        print(f"PROGRESS {state['down']} {state['up']}", flush=True)
        for t in threads:
            t.join(0.25)
    print(results.get("down"), flush=True)
    print(results.get("up"), flush=True)


# ---------------------------------------------------------------- host side


def cmd_sink(host, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4096)
    print("LISTENING", flush=True)
    while True:
        c, _ = srv.accept()
        c.close()


def cmd_storm(host, port, n, concurrency):
    sel = selectors.DefaultSelector()
    started = ok = failed = 0
    live = {}
    t0 = time.monotonic()
    request = b"S" + struct.pack("!Q", 64)

    def start_one():
        nonlocal started
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        live[s] = [time.monotonic(), b"", False]
        sel.register(s, selectors.EVENT_WRITE)
        started += 1

    def finish(s, good):
        nonlocal ok, failed
        sel.unregister(s)
        s.close()
        del live[s]
        if good:
            ok += 1
        else:
            failed += 1

    while started < n or live:
        while started < n and len(live) < concurrency:
            start_one()
        for key, ev in sel.select(0.5):
            s = key.fileobj
            st = live[s]
            try:
                if not st[2]:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        finish(s, False)
                        continue
                    s.send(request)
                    st[2] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                d = s.recv(4096)
                if not d:
                    finish(s, len(st[1]) == 64)
                    continue
                st[1] += d
                if len(st[1]) >= 64:
                    finish(s, st[1] == BLOCK[:64])
            except OSError:
                finish(s, False)
        now = time.monotonic()
        for s, st in list(live.items()):
            if now - st[0] > 30:
                finish(s, False)
    print(f"STORM ok={ok} failed={failed} seconds={time.monotonic() - t0:.2f}", flush=True)


def cmd_hold(host, port, n):
    conns = [socket.create_connection((host, port), timeout=30) for _ in range(n)]
    print(f"OPEN {len(conns)}", flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            break
    for c in conns:
        c.sendall(b"S" + struct.pack("!Q", 64))
    ok = failed = 0
    deadline = time.monotonic() + 60
    for c in conns:
        got = b""
        try:
            while len(got) < 64:
                c.settimeout(max(0.1, deadline - time.monotonic()))
                d = c.recv(64 - len(got))
                if not d:
                    break
                got += d
        except OSError:
            pass
        ok, failed = (ok + 1, failed) if got == BLOCK[:64] else (ok, failed + 1)
        c.close()
    print(f"DONE ok={ok} failed={failed}", flush=True)


def abort(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def cmd_reset_server(host, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(16)
    go = threading.Event()

    def control():
        for line in sys.stdin:
            if line.strip() == "go":
                go.set()

    threading.Thread(target=control, daemon=True).start()
    print("LISTENING", flush=True)

    def handle(c):
        line = b""
        while not line.endswith(b"\n"):   # byte by byte: a buffered reader would swallow the data behind it
            d = c.recv(1)
            if not d:
                return
            line += d
        mode = line.strip().decode()
        if mode == "send":
            sent = 0
            while sent < (4 << 20):
                c.sendall(BLOCK)
                sent += len(BLOCK)
            abort(c)
        elif mode in ("stall", "stall-resume"):
            h, got = hashlib.sha256(), 0
            while got < (1 << 20):
                d = c.recv(min(65536, (1 << 20) - got))
                if not d:
                    break
                h.update(d)
                got += len(d)
            print("STALLED", flush=True)
            go.wait(120)
            go.clear()
            if mode == "stall":
                abort(c)
            else:
                while True:
                    d = c.recv(1 << 20)
                    if not d:
                        break
                    h.update(d)
                    got += len(d)
                c.sendall(f"{h.hexdigest()} {got}\n".encode())
                c.close()
                print("RESUMED", flush=True)
                return
        print(f"ABORTED {mode}", flush=True)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def cmd_reset_client(host, port, mode):
    s = socket.create_connection((host, port), timeout=60)
    s.sendall(mode.encode() + b"\n")
    n = 0
    try:
        if mode == "send":
            while True:
                d = s.recv(1 << 16)
                if not d:
                    print(f"EOF {n}", flush=True)
                    return
                n += len(d)
        # stall / stall-resume: send until the window is shut (no progress for 2 s); then wait for the reset, or
        # (stall-resume) go on sending to 16 MiB once the server reads again and check its digest.
        s.setblocking(False)
        blocked_since = None
        while True:
            try:
                off = n % len(BLOCK)
                n += s.send(BLOCK[off:] + BLOCK[:off])   # the pattern stream, wherever the last send stopped
                blocked_since = None
            except BlockingIOError:
                if blocked_since is None:
                    blocked_since = time.monotonic()
                elif time.monotonic() - blocked_since > 2:
                    break
                select.select([], [s], [], 0.1)
        print(f"BLOCKED {n}", flush=True)
        if mode == "stall-resume":
            total = 16 << 20
            s.setblocking(True)
            s.settimeout(60)
            rest = total - n
            off = n % len(BLOCK)
            while rest > 0:
                chunk = (BLOCK[off:] + BLOCK)[:min(rest, len(BLOCK))]
                s.sendall(chunk)
                rest -= len(chunk)
                off = (off + len(chunk)) % len(BLOCK)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                d = s.recv(200)
                if not d:
                    break
                reply += d
            ok = reply.decode().strip() == f"{pattern_sha(total)} {total}"
            print(f"RESUMED {'ok' if ok else 'BAD'} {total} (server: {reply.decode().strip()})", flush=True)
            return
        # The reset comes while we wait to write: select wakes with the error.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r, w, _ = select.select([s], [s], [], 1)
            if r or w:
                try:
                    s.send(b"x")
                    d = s.recv(1)
                    if d == b"":
                        print(f"EOF {n}", flush=True)
                        return
                except BlockingIOError:
                    continue
        print("TIMEOUT", flush=True)
    except (ConnectionResetError, BrokenPipeError):
        print(f"RESET {n}", flush=True)


def main(argv):
    cmd, a = argv[1], argv[2:]
    if cmd == "syn":
        cmd_syn(a[0], a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "udp":
        cmd_udp(a[0], a[1], int(a[2]), int(a[3]), int(a[4]))
    elif cmd == "dhcp":
        cmd_dhcp(a[0], int(a[1]), a[2])
    elif cmd == "dhcp-one":
        cmd_dhcp_one(a[0], a[1])
    elif cmd == "stream":
        cmd_stream(a[0], int(a[1]), a[2], int(a[3]))
    elif cmd == "stream-server":
        cmd_stream_server(a[0], int(a[1]))
    elif cmd == "sink":
        cmd_sink(a[0], int(a[1]))
    elif cmd == "storm":
        cmd_storm(a[0], int(a[1]), int(a[2]), int(a[3]))
    elif cmd == "hold":
        cmd_hold(a[0], int(a[1]), int(a[2]))
    elif cmd == "reset-server":
        cmd_reset_server(a[0], int(a[1]))
    elif cmd == "reset-client":
        cmd_reset_client(a[0], int(a[1]), a[2])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
