"""`vnet user --sandbox`: after set-up vnet holds no capability and runs under a seccomp allow-list, and the
network still works.

The guest is the kernel stack in a namespace of the test's own (`--netns … --tap tap0`). vnet runs in the
test's namespace, so guest traffic to 10.0.2.2 reaches the test's loopback: a DNS server and a TCP server there
stand in for the outside, and a hostfwd rule on 127.0.0.1 reaches a server inside the guest namespace. Nothing
leaves loopback or the namespace.
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
SIZE = 8 << 20

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route replace default via "$router" dev "$interface"
    echo "LEASE ip=$ip mask=$mask router=$router dns=$dns" ;;
esac
exit 0
"""


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check, **kw)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def serve(args, log: Path, name: str) -> tuple[subprocess.Popen, rig.OutputCollector]:
    p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = rig.OutputCollector(p.stdout, log, name)
    out.wait_for(r"LISTENING", 15)
    return p, out


@pytest.fixture(scope="module")
def net(tun_available, module_workdir, module_log_dir):
    guest_ns = f"vnsb{os.getpid() % 100000}"
    work = Path(module_workdir)
    made, procs = [], []
    try:
        sh("ip", "netns", "add", guest_ns)
        made.append(guest_ns)
        in_ns(guest_ns, "ip", "link", "set", "lo", "up")
        script = work / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        with rig.DnsServer({"sandboxed.test": "192.0.2.77"}) as dns:
            tcp_port = rig.free_tcp_port()
            p, _ = serve([sys.executable, NETTOOL, "serve", "127.0.0.1", tcp_port], Path(module_log_dir) / "host-server.log", "host server")
            procs.append(p)
            p, _ = serve(["ip", "netns", "exec", guest_ns, sys.executable, NETTOOL, "serve", "0.0.0.0", "5001"],
                         Path(module_log_dir) / "guest-server.log", "guest server")
            procs.append(p)
            fwd_port = rig.free_tcp_port()
            control = work / "control.sock"
            args = ["user", f"hostfwd=tcp:127.0.0.1:{fwd_port}-10.0.2.15:5001", "--netns", f"/run/netns/{guest_ns}",
                    "--tap", "tap0", "--dns-upstream", dns.address, "--control", control, "--sandbox", "--log-level", "info"]
            with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
                out = in_ns(guest_ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-s", script).stdout
                lease = dict(kv.split("=", 1) for kv in out.split("LEASE ", 1)[1].split()) if "LEASE " in out else {}
                yield SimpleNamespace(ns=guest_ns, vnet=vnet, lease=lease, dhcp_out=out, dns=dns, tcp_port=tcp_port,
                                      fwd_port=fwd_port, control=control)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def ctl(net, *args):
    return sh(rig.vnet_binary(), "ctl", net.control, *args, check=False)


def test_process_is_confined(net):
    s = status_fields(net.vnet.pid)
    assert s["Seccomp"] == "2", s
    assert s["NoNewPrivs"] == "1", s
    for k in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(s[k], 16) == 0, (k, s[k])
    if os.geteuid() == 0:
        assert int(s["CapBnd"], 16) == 0, s["CapBnd"]
    text = net.vnet.stdout.text
    assert "vnet: sandbox: capabilities dropped" in text and "seccomp filter of" in text, text


def test_lease(net):
    assert net.lease.get("ip") == "10.0.2.15", net.dhcp_out
    assert net.lease.get("router") == "10.0.2.2" and net.lease.get("dns") == "10.0.2.3", net.lease


def test_ping_gateway(net):
    r = in_ns(net.ns, "busybox", "ping", "-c", "2", "-W", "5", "10.0.2.2", check=False)
    assert r.returncode == 0 and "2 packets received" in r.stdout, r.stdout + r.stderr


def test_dns_forwarded(net):
    before = net.dns.query_count
    r = in_ns(net.ns, "dig", "+short", "+time=3", "+tries=2", "@10.0.2.3", "sandboxed.test", "A", check=False)
    assert r.stdout.strip() == "192.0.2.77", r.stdout + r.stderr
    assert net.dns.query_count > before


@pytest.mark.parametrize("verb", ["get", "put"])
def test_tcp_transfer_through_nat(net, verb):
    expected = sh(sys.executable, NETTOOL, "pattern-sha", SIZE).stdout.strip()
    r = in_ns(net.ns, sys.executable, NETTOOL, verb, "10.0.2.2", net.tcp_port, SIZE, timeout=300)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


def test_hostfwd_reaches_the_guest(net):
    expected = sh(sys.executable, NETTOOL, "pattern-sha", SIZE).stdout.strip()
    r = sh(sys.executable, NETTOOL, "get", "127.0.0.1", net.fwd_port, SIZE, timeout=300)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


def test_hostfwd_add_above_the_privileged_range_works(net):
    port = rig.free_tcp_port()
    r = ctl(net, "hostfwd_add", f"tcp:127.0.0.1:{port}-10.0.2.15:5001")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = sh(sys.executable, NETTOOL, "pattern-sha", 1 << 20).stdout.strip()
    assert sh(sys.executable, NETTOOL, "get", "127.0.0.1", port, 1 << 20, timeout=120).stdout.strip() == expected
    assert ctl(net, "hostfwd_remove", f"tcp:127.0.0.1:{port}").returncode == 0


def test_refused_at_run_time_with_a_clear_message(net):
    r = ctl(net, "pcap-start", "file=" + str(Path(net.control).parent / "late.pcap"))
    assert r.returncode != 0 and "--sandbox: pcap-start would create a new file" in r.stderr, r.stdout + r.stderr
    assert not (Path(net.control).parent / "late.pcap").exists()
    r = ctl(net, "hostfwd_add", "tcp:127.0.0.1:80-10.0.2.15:5001")
    assert r.returncode != 0 and "--sandbox: port 80 is below" in r.stderr, r.stdout + r.stderr
    # vnet is still serving after refusing.
    assert status_fields(net.vnet.pid)["Seccomp"] == "2"
    assert ctl(net, "stats").returncode == 0


@pytest.mark.parametrize("extra,message", [
    (["guestfwd=tcp:10.0.2.100:4444-cmd:cat"], "--sandbox: guestfwd"),
    (["--pcap", "CAPTURE", "--pcap-rotate", "100000"], "--sandbox: --pcap-rotate creates new files"),
])
def test_refused_at_start_with_a_clear_message(workdir, extra, message):
    extra = [str(Path(workdir) / "c.pcap") if a == "CAPTURE" else a for a in extra]
    sock = Path(workdir) / "s.sock"
    r = sh(rig.vnet_binary(), "user", *extra, "--socket", sock, "--sandbox", check=False, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr   # one line, no trace


@pytest.mark.parametrize("sandbox", [False, True])
def test_unlink_is_denied_after_the_drop(workdir, log_dir, sandbox):
    """The filter really is in force: at exit vnet removes its control socket, except in the sandbox, where
    unlink fails with EPERM (and vnet still exits cleanly); the next start replaces the stale socket."""
    sock, control = Path(workdir) / "s.sock", Path(workdir) / "c.sock"
    args = ["user", "--socket", sock, "--control", control] + (["--sandbox"] if sandbox else [])
    for round in range(2):
        with rig.VnetProcess(args, log_dir=log_dir, name=f"vnet-{round}") as vnet:
            assert control.exists()
            rc = vnet.stop()
        assert rc == 0, vnet.describe()
        assert control.exists() == sandbox and sock.exists() == sandbox


def test_switch_sandbox_forwards_frames_and_refuses_pcap_start(workdir, log_dir):
    """`vnet switch --sandbox`: confined like `vnet user`, and a frame from one stream port reaches the other."""
    import socket
    import struct
    a, b, control = (Path(workdir) / n for n in ("a.sock", "b.sock", "c.sock"))
    with rig.VnetProcess(["switch", "--socket", a, "--socket", b, "--control", control, "--sandbox"], log_dir=log_dir) as vnet:
        s = status_fields(vnet.pid)
        assert s["Seccomp"] == "2" and s["NoNewPrivs"] == "1" and int(s["CapEff"], 16) == 0 and int(s["CapPrm"], 16) == 0, s
        ca, cb = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        try:
            ca.connect(str(a))
            cb.connect(str(b))
            cb.settimeout(10)
            frame = (b"\xff" * 6 + bytes([0x52, 0x54, 0, 0x77, 0, 1]) + b"\x88\xb5" + b"through-the-sandbox").ljust(60, b"\0")
            got = b""

            def arrived():
                nonlocal got
                ca.sendall(struct.pack(">I", len(frame)) + frame)   # resent until the switch has both ports
                try:
                    cb.settimeout(0.2)
                    got += cb.recv(4096)
                except socket.timeout:
                    pass
                return b"through-the-sandbox" in got
            rig.wait_for(arrived, 10)
        finally:
            ca.close()
            cb.close()
        r = sh(rig.vnet_binary(), "ctl", control, "pcap-start", f"file={Path(workdir) / 'x.pcap'}", check=False)
        assert r.returncode != 0 and "--sandbox: pcap-start would create a new file" in r.stderr, r.stderr
        assert "vnet: sandbox: capabilities dropped" in vnet.stdout.text


def test_nat_refuses_sandbox_with_a_clear_message(workdir):
    r = sh(rig.vnet_binary(), "nat", "--socket", Path(workdir) / "n.sock", "--leases-file", Path(workdir) / "l", "--sandbox",
           check=False, timeout=30)
    assert r.returncode == 1 and "--sandbox: vnet nat writes its lease file" in r.stderr, r.stdout + r.stderr
