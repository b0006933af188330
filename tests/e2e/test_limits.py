"""Per-guest flow limits through the real input path: `vnet user --limit guest-udp-flows=N` caps one guest
address, counts the rest under drop_udp_guest_flows_full, logs it once per interval, and leaves another guest
address (and the guest's existing flows) alone. Frames are crafted with scapy and written into the stream socket
as QEMU would (helpers from test_bad_inputs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import rig
from test_bad_inputs import GW_IP, GUEST_IP, IP, UDP, Healthy, Raw, connect, counters, data, eth, servers  # noqa: F401

OTHER_MAC, OTHER_IP = "52:54:00:12:34:57", "10.0.2.16"


def test_guest_udp_flows_caps_one_guest_and_is_logged_once(workdir, log_dir, servers):
    sock = workdir / "limits.sock"
    with rig.VnetProcess(["user", "--socket", sock, "--limit", "guest-udp-flows=4"], log_dir=log_dir) as proc:
        v = SimpleNamespace(proc=proc, sock=sock)
        assert "guest-udp-flows 4," in proc.stdout.text, proc.stdout.text
        q = connect(v)
        h = Healthy(q, servers)
        h.check()   # the guest's first flow
        for port in range(21000, 21100):
            q.send(eth(IP(src=GUEST_IP, dst=GW_IP) / UDP(sport=40040, dport=port) / Raw(b"sweep")))
        h.check()
        c = counters(v)
        assert c.get("drop_udp_guest_flows_full") == 100 - 3, c
        assert "drop_udp_flow_table_full" not in c, c
        # Another guest address on the same segment still gets a flow and its echo.
        q.send(eth(IP(src=OTHER_IP, dst=GW_IP) / UDP(sport=42000, dport=servers.udp.port) / Raw(b"other-guest"), src=OTHER_MAC))
        reply = q.wait_for(lambda p: UDP in p and p[UDP].dport == 42000 and data(p) == b"other-guest", what="second guest's echo")
        assert reply[IP].dst == OTHER_IP
        line = proc.wait_for_line(r"limit reached: udp_guest_flows_full x(\d+)", timeout=15, stream="stderr")
        assert int(line.group(1)) == 97 and "--limit guest-udp-flows" in line.group(0) + proc.stderr.text
        h.check()
        assert proc.stderr.text.count("limit reached: udp_guest_flows_full") == 1
        q.close()


def test_single_guest_defaults_follow_the_tables(workdir, log_dir):
    """`vnet user` serves one VM: its per-guest flow limits default to the whole table's (also when tcp-flows or
    udp-flows is raised), and an explicit guest-*-flows limit still wins."""
    cases = [
        ([], "tcp-flows 16384,", ("guest-tcp-flows 16384,", "guest-udp-flows 4096,")),
        (["--limit", "tcp-flows=20000", "--limit", "udp-flows=5000"], "tcp-flows 20000,",
         ("guest-tcp-flows 20000,", "guest-udp-flows 5000,")),
        (["--limit", "guest-tcp-flows=7"], "tcp-flows 16384,", ("guest-tcp-flows 7,", "guest-udp-flows 4096,")),
    ]
    for i, (extra, table, expected) in enumerate(cases):
        sock = workdir / f"defaults-{i}.sock"
        with rig.VnetProcess(["user", "--socket", sock, *extra], log_dir=log_dir, name=f"vnet-defaults-{i}") as proc:
            line = next(l for l in proc.stdout.text.splitlines() if l.startswith("vnet: limits:"))
            assert table in line, line
            for e in expected:
                assert e in line, line

