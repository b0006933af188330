"""Host-only self-tests of the rig's servers and process helpers (no guest, fast)."""

from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.request

import pytest

import rig


def dns_query(port: int, name: str, qtype: int = 1, tcp: bool = False) -> tuple[int, list[bytes], bool]:
    """(rcode, rdata list, truncated) for one query to 127.0.0.1:port."""
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", qtype, 1)
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            n = struct.unpack("!H", rig._recv_exact(s, 2))[0]
            r = rig._recv_exact(s, n)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(q, ("127.0.0.1", port))
            r = s.recv(65535)
    rid, flags, qd, an = struct.unpack("!HHHH", r[:8])
    assert rid == 0x1234 and flags & 0x8000
    off = len(q)
    rdatas = []
    for _ in range(an):
        rdlen = struct.unpack("!H", r[off + 10:off + 12])[0]
        rdatas.append(r[off + 12:off + 12 + rdlen])
        off += 12 + rdlen
    return flags & 0xF, rdatas, bool(flags & 0x0200)


def test_dns_server(dns_server):
    dns_server.records["a.test"] = "10.1.2.3"
    dns_server.aaaa["a.test"] = "fd00::1"
    assert dns_query(dns_server.port, "a.test") == (0, [bytes([10, 1, 2, 3])], False)
    assert dns_query(dns_server.port, "A.TEST", tcp=True) == (0, [bytes([10, 1, 2, 3])], False)
    assert dns_query(dns_server.port, "a.test", 28)[1] == [socket.inet_pton(socket.AF_INET6, "fd00::1")]
    assert dns_query(dns_server.port, "a.test", 16) == (0, [], False)
    assert dns_query(dns_server.port, "b.test") == (3, [], False)
    dns_server.truncate_udp = True
    assert dns_query(dns_server.port, "a.test") == (0, [], True)
    assert dns_server.count() == 6 and dns_server.count("tcp") == 1 and dns_server.count(name="b.test") == 1


def test_udp_echo_server(udp_echo):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"abc", ("127.0.0.1", udp_echo.port))
        assert s.recv(100) == b"abc"
    assert udp_echo.count == 1


def test_tcp_echo_server(tcp_echo):
    with socket.create_connection(("127.0.0.1", tcp_echo.port), timeout=5) as s:
        s.sendall(b"hello")
        assert rig._recv_exact(s, 5) == b"hello"


def test_http_server(http_server):
    with urllib.request.urlopen(http_server.url("/bytes/1000"), timeout=5) as r:
        assert r.read() == rig.HttpServer.pattern_bytes(1000)
    http_server.pages["/x"] = b"xx"
    with urllib.request.urlopen(http_server.url("/x"), timeout=5) as r:
        assert r.read() == b"xx"
    assert [req[2] for req in http_server.requests] == ["/bytes/1000", "/x"]


def test_free_ports_are_bindable():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", rig.free_tcp_port()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", rig.free_udp_port()))


def test_wait_for():
    start = time.monotonic()
    assert rig.wait_for(lambda: time.monotonic() - start > 0.1 and "done", timeout=5) == "done"
    with pytest.raises(TimeoutError, match="never true"):
        rig.wait_for(lambda: False, timeout=0.2, message="never true")


def test_wait_for_line_on_a_raw_pipe():
    p = subprocess.Popen([sys.executable, "-c", "print('a'); print('port=42', flush=True); print('rest')"],
                         stdout=subprocess.PIPE)
    try:
        m = rig.wait_for_line(p.stdout, r"port=(\d+)", timeout=10)
        assert m.group(1) == "42"
        assert p.stdout.read() == b"rest\n"  # nothing after the match was consumed
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def _fake_vnet(path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_vnet_process_waits_for_ready_and_stops(workdir, log_dir):
    fake = _fake_vnet(workdir / "vnet", "print('starting'); print('vnet: ready', flush=True)\n"
                                        "print('listening on 1.2.3.4:5', flush=True)\ntime.sleep(300)")
    with rig.VnetProcess(["user", "--listen", "x"], binary=fake, log_dir=log_dir) as v:
        assert v.wait_for_line(r"listening on (\S+)", timeout=10).group(1) == "1.2.3.4:5"
        pid = v.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "vnet: ready" in (log_dir / "vnet.stdout.log").read_text()


def test_vnet_process_reports_early_exit(workdir, log_dir):
    fake = _fake_vnet(workdir / "vnet", "print('bad option', file=sys.stderr); sys.exit(2)")
    with pytest.raises(rig.RigError, match=r"(?s)EOF.*exited with 2.*bad option"):
        rig.VnetProcess([], binary=fake, log_dir=log_dir).start()


def test_vnet_process_missing_binary(workdir, log_dir):
    with pytest.raises(rig.RigError, match="VNET_BIN"):
        rig.VnetProcess([], binary=workdir / "nope", log_dir=log_dir).start()
