"""Offload across the switch (`vnet nat`): a kernel stack behind an offload TAP and a QEMU guest on a stream.

The namespace's kernel hands vnet 64 KiB TCP super-segments with partial checksums (IFF_VNET_HDR). A QEMU
stream carries no virtio-net header, so the switch must cut those into MTU-sized wire frames and finish their
checksums before they leave for the QEMU guest; the other way, the TAP takes the guest's plain frames. QEMU's
own capture of its netdev (`-object filter-dump`) is read by tshark: nothing over the MTU, no bad checksum.
Everything stays in a namespace of the test's own and on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

HERE = Path(__file__).resolve().parent
NETTOOL = HERE / "nettool.py"
LONG = os.environ.get("VNET_LONG") == "1"
BULK_MIB = 128 if LONG else 24

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    ip route replace default via "$router" dev "$interface"
    echo "LEASE ip=$ip mtu=$mtu" ;;
esac
exit 0
"""


def in_ns(ns, *args, timeout=120):
    return subprocess.run(["ip", "netns", "exec", ns, *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def net(guest_image, tun_available, module_workdir, module_log_dir):
    d = Path(module_workdir)
    sock, dump = d / "offload.sock", d / "qemu-netdev.pcap"
    ns = f"vof{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    guest = None
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        with rig.DnsServer({}) as dns:
            args = ["nat", "--socket", sock, "--tap", f"tap0,netns=/run/netns/{ns}", "--mtu", "1500",
                    "--dns-upstream", dns.address, "--log-level", "info"]
            with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
                assert "(offload)" in vnet.stdout.text, vnet.stdout.text
                guest = rig.Guest(guest_image, ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"],
                                  workdir=module_workdir, log_dir=module_log_dir, name="stream-guest", mac="52:54:00:12:05:01",
                                  memory_mb=512, qemu_args=["-object", f"filter-dump,id=f0,netdev=n0,file={dump}"])
                guest.start()
                guest_ip = guest.dhcp()["ip"]
                script = d / "udhcpc.sh"
                script.write_text(UDHCPC_SCRIPT)
                script.chmod(0o755)
                out = in_ns(ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-O", "mtu",
                            "-s", script).stdout
                assert "LEASE ip=" in out, out
                yield SimpleNamespace(vnet=vnet, guest=guest, guest_ip=guest_ip, ns=ns, dump=dump,
                                      tap_ip=out.split("LEASE ip=", 1)[1].split()[0])
    finally:
        if guest:
            guest.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_offload_tap_to_qemu_stream_guest_checked_by_sha256(net):
    size = BULK_MIB << 20
    expected = subprocess.run([sys.executable, NETTOOL, "pattern-sha", str(size)], capture_output=True, text=True,
                              check=True).stdout.strip()
    before = rig.read_counters(net.vnet)
    net.guest.start_background("nc -l -p 7001 > /tmp/from-tap; echo RECEIVED", "from-tap")
    r = in_ns(net.ns, sys.executable, NETTOOL, "raw-send", net.guest_ip, 7001, size, timeout=300)
    assert r.stdout.strip() == "SENT", r.stdout + r.stderr
    net.guest.wait_background("from-tap", r"RECEIVED", timeout=120)
    assert net.guest.check("sha256sum /tmp/from-tap", timeout=60).split()[0] == expected
    net.guest.check("rm /tmp/from-tap")
    c = rig.read_counters(net.vnet)
    # The kernel sent super-segments, and the switch cut them for the stream port.
    assert c.get("switch_software_segmented", 0) > before.get("switch_software_segmented", 0), c
    assert any(k.endswith("_super_segments_in") and v > 0 for k, v in c.items()), c


def test_qemu_stream_guest_to_offload_tap_checked_by_sha256(net):
    mib = BULK_MIB
    net.guest.check(f"dd if=/dev/urandom of=/tmp/to-tap bs=1048576 count={mib} 2>/dev/null", timeout=120)
    expected = net.guest.check("sha256sum /tmp/to-tap", timeout=60).split()[0]
    net.guest.start_background("nc -l -p 7002 < /tmp/to-tap; echo SENT", "to-tap")
    r = in_ns(net.ns, sys.executable, NETTOOL, "raw-recv", net.guest_ip, 7002, timeout=300)
    assert r.stdout.split() == [str(mib << 20), expected], r.stdout + r.stderr
    net.guest.wait_background("to-tap", r"SENT", timeout=60)
    net.guest.check("rm /tmp/to-tap")


def test_the_stream_port_saw_only_wire_frames(net):
    """QEMU's own capture of the stream netdev, read by tshark: every frame within the MTU, every IPv4 and TCP
    checksum good. (Runs after the transfers above.)"""
    # One pass, with the TCP stream analysis off: only lengths and the two checksums are wanted.
    out = subprocess.run(["tshark", "-r", str(net.dump), "-n", "-o", "tcp.analyze_sequence_numbers:FALSE",
                          "-o", "tcp.desegment_tcp_streams:FALSE", "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
                          "-T", "fields", "-E", "separator=,", "-e", "frame.number", "-e", "frame.len", "-e", "ip.checksum.status",
                          "-e", "tcp.checksum.status"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split(",") for line in out.stdout.splitlines()]
    lengths = [int(r[1]) for r in rows]
    assert len(lengths) > (BULK_MIB << 20) // 1460, f"{len(lengths)} frames captured: {out.stderr[-2000:]}"
    assert max(lengths) <= 1514, max(lengths)
    assert lengths.count(1514) > (BULK_MIB << 20) // 1460 // 2, "bulk data travels in MTU-sized frames"
    # Wireshark's checksum status: 0 bad, 1 good, 2 not verified.
    bad = [r[0] for r in rows if "0" in (r[2], r[3])]
    assert bad == [], f"frames with bad checksums: {bad[:20]}"
    assert sum(1 for r in rows if r[3] == "1") > (BULK_MIB << 20) // 1460, "TCP checksums were verified"


def test_nothing_was_dropped_for_size_or_checksum(net):
    c = rig.read_counters(net.vnet)
    assert c.get("switch_drop_malformed", 0) == 0, c
    assert c.get("drop_tcp_bad_checksum", 0) == 0, c
