"""`vnet switch` and `vnet nat` ports: VLANs with crafted frames, and every kind of peer on one segment.

1. Crafted frames, written into the switch's stream sockets exactly as QEMU would (4-byte length + frame):
   access ports on different VLANs never see each other; a trunk carries both, tagged; unicast follows
   learning; a port that leaves is forgotten.
2. One `vnet nat` joining a QEMU guest over a unix stream socket, one over `-netdev dgram`, one over
   `-netdev socket,mcast=` (pinned to loopback) and the kernel stack of a namespace behind a TAP: all get
   leases and reach each other.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def send(s: socket.socket, frame: bytes) -> None:
    s.sendall(struct.pack(">I", len(frame)) + frame)


def recv(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        assert chunk, "switch closed the connection"
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        assert chunk, "switch closed the connection"
        body += chunk
    return body


def mac(n: int) -> bytes:
    return bytes([0x52, 0x54, 0x00, 0x77, 0x00, n])


BCAST = b"\xff" * 6


def eth(dst: bytes, src: bytes, payload: bytes, tag: int | None = None) -> bytes:
    head = dst + src + (struct.pack(">HH", 0x8100, tag) if tag is not None else b"")
    return (head + struct.pack(">H", 0x88B5) + payload).ljust(60 + (4 if tag is not None else 0), b"\0")


def payload_of(frame: bytes) -> bytes:
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    return frame[off:].rstrip(b"\0")


@pytest.fixture(scope="module")
def vlans(module_workdir, module_log_dir):
    d = Path(module_workdir)
    paths = {k: d / f"{k}.sock" for k in ("a", "b", "c", "t")}
    ctl = d / "switch.ctl"
    args = ["switch", "--socket", f"{paths['a']},vlan=10", "--socket", f"{paths['b']},vlan=10",
            "--socket", f"{paths['c']},vlan=20", "--socket", f"{paths['t']},trunk=10:20", "--control", ctl, "--log-level", "info",
            "--metrics", f"127.0.0.1:{rig.free_tcp_port()}"]
    with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
        socks = {k: connect(p) for k, p in paths.items()}
        try:
            yield SimpleNamespace(vnet=vnet, s=socks, ctl=ctl)
        finally:
            for s in socks.values():
                s.close()


def test_access_vlans_are_separate_and_the_trunk_tags(vlans):
    s = vlans.s
    send(s["a"], eth(BCAST, mac(1), b"from-a-vlan10"))
    assert payload_of(recv(s["b"])) == b"from-a-vlan10"
    on_trunk = recv(s["t"])
    assert on_trunk[12:16] == struct.pack(">HH", 0x8100, 10) and payload_of(on_trunk) == b"from-a-vlan10"
    # C must not have seen it: the next frame C gets is the VLAN 20 one sent after it.
    send(s["t"], eth(BCAST, mac(9), b"trunk-vlan20", tag=20))
    got = recv(s["c"])
    assert payload_of(got) == b"trunk-vlan20" and got[12:14] != b"\x81\x00", got
    send(s["c"], eth(mac(1), mac(3), b"c-to-a"))   # mac(1) is known only on VLAN 10: flooded on VLAN 20
    on_trunk = recv(s["t"])
    assert on_trunk[12:16] == struct.pack(">HH", 0x8100, 20) and payload_of(on_trunk) == b"c-to-a"
    send(s["b"], eth(BCAST, mac(2), b"marker-vlan10"))
    assert payload_of(recv(s["a"])) == b"marker-vlan10", "A got something from VLAN 20 first"
    assert payload_of(recv(s["t"])) == b"marker-vlan10"


def test_unicast_follows_learning(vlans):
    s = vlans.s
    send(s["b"], eth(mac(1), mac(2), b"b-to-a"))
    assert payload_of(recv(s["a"])) == b"b-to-a"
    send(s["a"], eth(BCAST, mac(1), b"marker"))
    assert payload_of(recv(s["b"])) == b"marker"
    assert payload_of(recv(s["t"])) == b"marker", "the trunk saw only the broadcast, not the unicast"


def vnet_ctl(ctl, *args):
    return subprocess.run([str(rig.vnet_binary()), "ctl", str(ctl), *args], capture_output=True, text=True, timeout=20)


def test_control_socket_shows_ports_and_the_mac_table(vlans):
    import json
    assert oct(os.stat(vlans.ctl).st_mode & 0o777) == "0o600"
    r = vnet_ctl(vlans.ctl, "mac-table", "--json")
    assert r.returncode == 0, r.stderr
    table = json.loads(r.stdout)["return"]
    a_mac = ":".join(f"{b:02x}" for b in mac(1))
    assert any(e["mac"] == a_mac and e["vlan"] == 10 and e["port"] == 0 for e in table), table
    r = vnet_ctl(vlans.ctl, "ports")
    assert r.returncode == 0 and "port0:" in r.stdout and "access vlan 10" in r.stdout and "trunk vlans 10:20" in r.stdout, r.stdout
    assert re.search(r"port0: .*\n\s+RX packets [1-9]", r.stdout), r.stdout
    r = vnet_ctl(vlans.ctl, "frobnicate")
    assert r.returncode != 0 and "mac-table" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_metrics_endpoint_exports_per_port_counters(vlans):
    import urllib.request
    m = re.search(r"vnet: metrics on (http://\S+/metrics)", vlans.vnet.stdout.text)
    assert m, vlans.vnet.stdout.text
    text = urllib.request.urlopen(m.group(1), timeout=20).read().decode()
    rx = re.search(r'^vnet_port_rx_packets_total\{port="port0"\} (\d+)', text, re.M)
    assert rx and int(rx.group(1)) >= 1, text[:2000]
    assert re.search(r'^vnet_drops_total\{reason="switch_vlan_not_carried"\} ', text, re.M), text[:2000]
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pytest.fail("prometheus_client missing: pip install prometheus-client (scripts/test does)", pytrace=False)
    assert any(f.name.startswith("vnet_port_rx_packets") for f in text_string_to_metric_families(text))


def test_a_port_that_leaves_is_forgotten(vlans):
    c = rig.read_counters(vlans.vnet)
    before = c["switch_macs"]
    vlans.s["c"].close()
    vlans.vnet.wait_for_line(r"port \d+ \(.*c\.sock peer\) left", stream="stderr")
    c = rig.read_counters(vlans.vnet)
    assert c["switch_macs"] == before - 1, c   # mac(3) was learned on C


def test_malformed_frames_are_dropped_and_counted(vlans):
    send(vlans.s["a"], b"\x01" * 13)
    send(vlans.s["a"], eth(BCAST, mac(1), b"tagged-on-access", tag=10))
    send(vlans.s["a"], eth(BCAST, mac(1), b"after"))
    assert payload_of(recv(vlans.s["b"])) == b"after"
    c = rig.read_counters(vlans.vnet)
    # A (the first peer, port 0): the runt is dropped by the stream framing, the tagged frame by the switch.
    assert c.get("port0_drop_frame_too_short", 0) >= 1 and c.get("switch_drop_vlan_not_carried", 0) >= 1, c


def test_peers_beyond_the_port_limit_are_refused(module_workdir, module_log_dir):
    path = Path(module_workdir) / "small.sock"
    with rig.VnetProcess(["switch", "--socket", path, "--max-ports", "2", "--log-level", "info"], log_dir=module_log_dir,
                         name="vnet-small") as vnet:
        a, b = connect(path), connect(path)
        try:
            vnet.wait_for_line(r"port 1: a peer connected", stream="stderr")
            c = connect(path)
            c.settimeout(10)
            assert c.recv(1) == b"", "the third peer is closed at once"
            c.close()
            vnet.wait_for_line(r"refused a peer .*the switch is full \(2 ports\)", stream="stderr")
            send(a, eth(BCAST, mac(1), b"still-works"))
            assert payload_of(recv(b)) == b"still-works"
            assert rig.read_counters(vnet)["switch_refused_peers"] == 1
        finally:
            a.close()
            b.close()


# -- every kind of peer on one NAT network ---------------------------------------------------------

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route replace default via "$router" dev "$interface"
    echo "LEASE ip=$ip" ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def mixed(guest_image, tun_available, module_workdir, module_log_dir):
    d = Path(module_workdir)
    sock, dgram, qdgram = d / "mixed.sock", d / "vnet.dgram", d / "qemu.dgram"
    mport = rig.free_udp_port()
    ns = f"vsw{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    guests = []
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        with rig.DnsServer({}) as dns:
            args = ["nat", "--socket", sock, "--dgram", dgram, "--mcast", f"230.0.0.1:{mport},localaddr=127.0.0.1",
                    "--tap", f"tap0,netns=/run/netns/{ns}", "--leases-file", d / "mixed.leases",
                    "--dns-upstream", dns.address, "--log-level", "info"]
            with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
                specs = [
                    ("stream", "52:54:00:12:02:01", ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]),
                    ("dgram", "52:54:00:12:02:02", ["-netdev", f"dgram,id=n0,local.type=unix,local.path={qdgram},"
                                                                f"remote.type=unix,remote.path={dgram}"]),
                    ("mcast", "52:54:00:12:02:03", ["-netdev", f"socket,id=n0,mcast=230.0.0.1:{mport},localaddr=127.0.0.1"]),
                ]
                for name, m, netdev in specs:
                    g = rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name=name, mac=m)
                    g.start()
                    guests.append(g)
                leases = {name: g.dhcp()["ip"] for (name, _, _), g in zip(specs, guests)}
                script = d / "udhcpc.sh"
                script.write_text(UDHCPC_SCRIPT)
                script.chmod(0o755)
                out = subprocess.run(["ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5",
                                      "-T", "2", "-s", str(script)], capture_output=True, text=True, timeout=60).stdout
                assert "LEASE ip=" in out, out
                leases["tap"] = out.split("LEASE ip=", 1)[1].split()[0]
                yield SimpleNamespace(vnet=vnet, guests={n: g for (n, _, _), g in zip(specs, guests)}, leases=leases, ns=ns)
    finally:
        for g in guests:
            g.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_every_kind_of_peer_gets_its_own_lease(mixed):
    assert len(set(mixed.leases.values())) == 4, mixed.leases
    assert all(ip.startswith("192.168.122.") for ip in mixed.leases.values()), mixed.leases


@pytest.mark.parametrize("src", ["stream", "dgram", "mcast"])
def test_qemu_peers_reach_every_other_peer(mixed, src):
    g = mixed.guests[src]
    for dst, ip in mixed.leases.items():
        if dst == src:
            continue
        r = g.run(f"ping -c 1 -W 5 {ip}")
        assert r.rc == 0 and "1 packets received" in r.output, f"{src} -> {dst} ({ip}): {r.output}"


def test_the_tap_namespace_reaches_a_qemu_guest(mixed):
    r = subprocess.run(["ip", "netns", "exec", mixed.ns, "busybox", "ping", "-c", "1", "-W", "5", mixed.leases["mcast"]],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
