"""Floods and faults (issue 5; BAD-INPUTS 20): vnet under SYN floods, a UDP port sweep, DHCP from 1,000 MACs, a
hostfwd connection storm, a QEMU killed mid-transfer, and host peers that reset or stall.

The guest is the kernel's own stack in a namespace of the test's own, behind `vnet user --netns … --tap tap0`
(as test_user_tap.py); the floods are raw frames from floodtool.py on an AF_PACKET socket in that namespace, so
100k SYNs take seconds. vnet itself runs in a second namespace whose loopback carries every host-side server, so
nothing leaves the two namespaces. Throughout each storm an established transfer (floodtool `stream`, both
directions, checked byte for byte) keeps going; afterwards vnet's flow count and open fds return to their
baseline, its peak RSS (VmHWM) stays under a stated bound, and new connections work again.

Every vnet runs under `prlimit --nofile=N` so the fd budget is the same on every machine (one variant makes it
tiny on purpose: file descriptors run out before the tables do). The QEMU test boots the rig's real guest.
Waits are deadlines on conditions; the counts each test sees are printed (pytest -s) for the record.
`VNET_LONG=1` runs the full-size variants (100k SYNs in every variant, 5,000-connection storm).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

HERE = Path(__file__).resolve().parent
FLOODTOOL = HERE / "floodtool.py"
NETTOOL = HERE / "nettool.py"
LONG = os.environ.get("VNET_LONG") == "1"
GW = "10.0.2.2"
# Host-side ports, on the host namespace's loopback (the guest reaches them through 10.0.2.2).
SERVE_PORT, STREAM_PORT, SINK_PORT, RESET_PORT = 5001, 5002, 7000, 5003
CLOSED_BASE = 20000          # 20000-20999: nothing listens there
# Peak RSS of vnet (a debug build) through any storm here. The tables are preallocated (16384 TCP flow records,
# the 4 MiB guest queue, 16 x 64 KiB reassembly slots); measured peaks are 33-37 MiB in every test here.
RSS_LIMIT_KB = 160 * 1024
# vnet's fd budget unless a test makes it small: 16384, or the hard limit if lower (raising it needs privilege).
FD_BUDGET = min(16384, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

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


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check, **kw)


def in_ns(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def popen_ns(ns, *args, stdin=None):
    return subprocess.Popen(["ip", "netns", "exec", ns, *[str(a) for a in args]], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=rig._die_with_parent)


def stop(proc: subprocess.Popen) -> None:
    """Ends a helper this test started (by its pid), and reaps it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def nets(tun_available, module_workdir, module_log_dir):
    """Two namespaces (vnet's `host`, and `guest`) and the host-side servers, for the whole module."""
    suffix = f"{os.getpid() % 100000}f"
    host_ns, guest_ns = f"vnh{suffix}", f"vng{suffix}"
    made, procs = [], []
    try:
        for ns in (host_ns, guest_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        script = Path(module_workdir) / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        servers = {}
        for name, argv in (("serve", [NETTOOL, "serve", "127.0.0.1", SERVE_PORT]),
                           ("stream", [FLOODTOOL, "stream-server", "127.0.0.1", STREAM_PORT]),
                           ("sink", [FLOODTOOL, "sink", "127.0.0.1", SINK_PORT]),
                           ("reset", [FLOODTOOL, "reset-server", "127.0.0.1", RESET_PORT])):
            p = popen_ns(host_ns, sys.executable, *argv, stdin=subprocess.PIPE)
            procs.append(p)
            servers[name] = SimpleNamespace(proc=p, out=rig.OutputCollector(p.stdout, Path(module_log_dir) / f"{name}.log", name))
            servers[name].out.wait_for(r"LISTENING", 15)
        yield SimpleNamespace(host_ns=host_ns, guest_ns=guest_ns, script=script, servers=servers,
                              workdir=Path(module_workdir))
    finally:
        for p in procs:
            stop(p)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


class Vnet:
    """`vnet user` in the host namespace serving tap0 in the guest namespace, with a control socket, under
    `prlimit --nofile=nofile`. The guest namespace gets its lease (10.0.2.15) from it."""

    def __init__(self, nets, log_dir: Path, extra=(), nofile: int | None = None, name: str = "vnet"):
        nofile = nofile or FD_BUDGET
        self.nets, self.log_dir = nets, Path(log_dir)
        self.ctl_path = nets.workdir / f"{name}-ctl.sock"
        args = ["netns", "exec", nets.host_ns, "prlimit", f"--nofile={nofile}:{nofile}", str(rig.vnet_binary()),
                "user", "--netns", f"/run/netns/{nets.guest_ns}", "--tap", "tap0", "--dns-upstream", "127.0.0.1:53",
                "--control", str(self.ctl_path), "--log-level", "info", *[str(a) for a in extra]]
        self.proc = rig.VnetProcess(args, binary=shutil.which("ip"),
                                    log_dir=self.log_dir, name=name)
        self.ctl: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> "Vnet":
        self.proc.start()
        try:
            out = in_ns(self.nets.guest_ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5", "-T", "2",
                        "-s", self.nets.script).stdout
            assert "LEASE ip=10.0.2.15" in out, out
            # Room in the TAP's queue for a whole flood: every frame the generator writes reaches vnet.
            in_ns(self.nets.guest_ns, "ip", "link", "set", "tap0", "txqueuelen", "200000")
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.ctl.settimeout(30)
            self.ctl.connect(str(self.ctl_path))
            # The control connection stays open for the whole test, so it is part of the fd baseline.
            self.call("stats")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.ctl:
            self.ctl.close()
            self.ctl = None
        self.proc.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, command: str):
        self.ctl.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while b"\n" not in self._buf:
            chunk = self.ctl.recv(1 << 20)
            assert chunk, "control socket closed"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        assert "return" in reply, reply
        return reply["return"]

    def stats(self) -> dict:
        """served and drop counters in one dict (drops as drop_<reason>), plus flows_<proto>."""
        s = self.call("stats")
        out = dict(s["served"])
        out.update({f"drop_{k}": v for k, v in s["drops"].items()})
        out.update({f"flows_{k}": v for k, v in s["flows"].items()})
        return out

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def fds(self) -> int:
        return fd_count(self.pid)

    def peak_rss_kb(self) -> int:
        return proc_status(self.pid, "VmHWM")

    def wait_settled(self, fds: int, tcp: int = 0, udp: int = 0, timeout: float = 60):
        """Flows and fds back to the baseline (after flows closed or expired)."""
        last = {}

        def settled():
            s = self.stats()
            last.update(s, fds=self.fds())
            return s["flows_tcp"] <= tcp and s["flows_udp"] <= udp and last["fds"] <= fds

        rig.wait_for(settled, timeout, interval=0.1,
                     message=lambda: f"flows and fds back to baseline (fds {fds}, tcp {tcp}, udp {udp}): now fds "
                                     f"{last.get('fds')}, tcp {last.get('flows_tcp')}, udp {last.get('flows_udp')}")
        assert self.fds() == fds, "fd count went below its baseline?"


def delta(after: dict, before: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


class Transfer:
    """The established transfer kept going through a storm: guest <-> host both ways (floodtool `stream`), from
    `ns` to HOST:PORT. `finish()` stops it and asserts that both directions arrived intact."""

    def __init__(self, ns: str, host: str, port: int, workdir: Path, log_dir: Path, min_bytes: int = 4 << 20):
        self.stopfile = workdir / f"stop-{port}-{time.monotonic_ns()}"
        self.proc = popen_ns(ns, sys.executable, FLOODTOOL, "stream", host, port, self.stopfile, min_bytes)
        self.out = rig.OutputCollector(self.proc.stdout, Path(log_dir) / f"stream-{port}.log", "stream")
        self.result: tuple[int, int] | None = None

    def progress(self) -> tuple[int, int]:
        m = re.findall(r"^PROGRESS (\d+) (\d+)$", self.out.text, re.M)
        return (int(m[-1][0]), int(m[-1][1])) if m else (0, 0)

    def wait_moving(self, past: tuple[int, int] = (0, 0), timeout: float = 60):
        """Both directions moved past `past` (deadline)."""
        rig.wait_for(lambda: all(a > b for a, b in zip(self.progress(), past)), timeout, interval=0.05,
                     message=lambda: f"the transfer to move past {past} (at {self.progress()}):\n{self.out.text[-500:]}")
        return self.progress()

    def finish(self, timeout: float = 120) -> tuple[int, int]:
        self.stopfile.touch()
        self.proc.wait(timeout=timeout)
        self.out.join()
        text = self.out.text
        down = re.search(r"^DOWN ok (\d+)$", text, re.M)
        up = re.search(r"^UP ok (\d+) ", text, re.M)
        assert down and up, f"the transfer lost or garbled bytes:\n{text[-1500:]}"
        self.result = (int(down.group(1)), int(up.group(1)))
        return self.result

    def close(self):
        self.stopfile.touch()
        stop(self.proc)


def flood(ns: str, *args, log: Path, timeout: float = 180):
    """Starts a floodtool flood in `ns` and waits (deadline) for its SENT line. Returns (proc, collector, n)."""
    p = popen_ns(ns, sys.executable, FLOODTOOL, *args, stdin=subprocess.PIPE)
    out = rig.OutputCollector(p.stdout, log, args[0])
    m = out.wait_for(r"SENT (\d+) ([\d.]+)\n", timeout)
    print(f"\n{args[0]} flood: {m.group(1)} frames sent in {m.group(2)} s")
    return p, out, int(m.group(1))


def flood_seen(p, out, timeout: float = 30) -> str:
    p.stdin.close()
    m = out.wait_for(r"SEEN ([^\n]*)\n", timeout)
    p.wait(timeout=10)
    return m.group(1)


def get_ok(ns: str, host: str, port: int, size: int = 1 << 20) -> None:
    expected = sh(sys.executable, NETTOOL, "pattern-sha", size).stdout.strip()
    r = in_ns(ns, sys.executable, NETTOOL, "get", host, port, size, timeout=120)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


# ------------------------------------------------------------------------ guest side: SYN floods

SYN_VARIANTS = {
    # name: (SYNs, extra vnet args, RLIMIT_NOFILE)
    "default-limits": (100_000, [], None),
    "half-open-cap": (100_000 if LONG else 30_000, ["--limit", "tcp-half-open=64"], None),
    "table-cap": (100_000 if LONG else 30_000, ["--limit", "tcp-flows=64"], None),
    "few-fds": (100_000 if LONG else 30_000, [], 96),
}


@pytest.mark.parametrize("variant", list(SYN_VARIANTS))
def test_syn_flood(nets, log_dir, variant):
    """SYNs to an open port (a listener on host loopback, via 10.0.2.2) and to closed ports, half each. Every SYN
    is accounted for: a flow opened, or refused with RST under a named reason (half-open cap, table cap, or no
    fd left). The established transfer goes on, memory stays bounded, every flow and fd goes away afterwards
    (the guest kernel resets the SYN-ACKs it never asked for; closed ports refuse), and new connections work."""
    n, extra, nofile = SYN_VARIANTS[variant]
    with Vnet(nets, log_dir, extra, nofile=nofile) as v:
        base_fds = v.fds()
        t = Transfer(nets.guest_ns, GW, STREAM_PORT, nets.workdir, log_dir)
        try:
            moving = t.wait_moving()
            before = v.stats()
            t0 = time.monotonic()
            p, out, sent = flood(nets.guest_ns, "syn", "tap0", GW, SINK_PORT, CLOSED_BASE, n, log=log_dir / "syn.log")
            assert sent == n
            keys = ("tcp_flows_opened", "drop_tcp_half_open_full", "drop_tcp_flow_table_full", "drop_host_socket_failed",
                    "drop_tcp_bad_checksum")
            last = {}

            def all_seen():
                last.update(v.stats())
                return sum(delta(last, before, k) for k in keys) >= n

            rig.wait_for(all_seen, 120, interval=0.2, message=lambda: f"vnet to take all {n} SYNs: {last}")
            handled = time.monotonic() - t0
            after = v.stats()
            d = {k: delta(after, before, k) for k in keys + ("tcp_connect_refused", "tcp_resets_from_guest",
                                                             "tcp_resets_to_guest", "drop_tx_queue_full")}
            print(f"{variant}: {n} SYNs handled in {handled:.1f} s: {d}")
            assert sum(d[k] for k in keys) == n and d["drop_tcp_bad_checksum"] == 0, d
            # Each refusal is an RST to the guest (plus one per refused connect).
            assert d["tcp_resets_to_guest"] >= d["drop_tcp_half_open_full"] + d["drop_tcp_flow_table_full"] + d["drop_host_socket_failed"], d
            if variant == "half-open-cap":
                assert d["drop_tcp_half_open_full"] > 0 and d["drop_tcp_flow_table_full"] == 0, d
            if variant == "table-cap":
                assert d["drop_tcp_flow_table_full"] > 0 and d["drop_tcp_half_open_full"] == 0, d
            if variant == "few-fds":
                assert d["drop_host_socket_failed"] > 0 and d["drop_tcp_half_open_full"] == 0, d
            if variant == "default-limits":
                assert d["tcp_flows_opened"] > 0 and d["tcp_connect_refused"] > 0, d
            # The transfer kept moving through the flood, and after it.
            t.wait_moving(moving)
            seen = flood_seen(p, out)
            print(f"{variant}: the guest saw {seen}")
            assert int(re.search(r"rst=(\d+)", seen).group(1)) > 0, seen
            result = t.finish()
            print(f"{variant}: transfer intact: {result[0]} bytes down, {result[1]} up")
        finally:
            t.close()
        v.wait_settled(base_fds)
        get_ok(nets.guest_ns, GW, SERVE_PORT)
        r = in_ns(nets.guest_ns, sys.executable, NETTOOL, "parallel", GW, SERVE_PORT, 20, 65536, timeout=120)
        assert len(r.stdout.split()) == 20 and len(set(r.stdout.split())) == 1, r.stdout[-500:]
        peak = v.peak_rss_kb()
        print(f"{variant}: peak RSS {peak // 1024} MiB, fds back to {base_fds}")
        assert peak < RSS_LIMIT_KB, f"peak RSS {peak} kB"
        assert v.alive()


# ------------------------------------------------------------------------ guest side: UDP sweep


def test_udp_sweep_every_port(nets, log_dir):
    """One datagram to each of the 65,535 ports of 10.0.2.2 (host loopback): 4096 flows (the cap) get host
    sockets, the rest are dropped and counted, closed ports answer with ICMP port unreachable, the transfer goes
    on, and with --limit udp-timeout=3 every socket is gone 3 s later; then UDP works again. The per-guest cap
    (guest-udp-flows; `vnet user` defaults it to the table's) is set above the table's, so the table's own cap is
    what bites here."""
    with Vnet(nets, log_dir, ["--limit", "udp-timeout=3", "--limit", "guest-udp-flows=8192"]) as v:
        assert "udp-timeout 3 s" in v.proc.stdout.text
        base_fds = v.fds()
        t = Transfer(nets.guest_ns, GW, STREAM_PORT, nets.workdir, log_dir)
        try:
            moving = t.wait_moving()
            before = v.stats()
            p, out, sent = flood(nets.guest_ns, "udp", "tap0", GW, 1, 65535, 40000, log=log_dir / "udp.log")
            keys = ("udp_flows_opened", "drop_udp_flow_table_full", "drop_host_socket_failed", "drop_dhcp_malformed",
                    "drop_udp_bad_checksum", "drop_udp_guest_flows_full")
            last = {}

            def all_seen():
                last.update(v.stats())
                return sum(delta(last, before, k) for k in keys) >= sent

            rig.wait_for(all_seen, 120, interval=0.2, message=lambda: f"vnet to take all {sent} datagrams: {last}")
            after = v.stats()
            d = {k: delta(after, before, k) for k in keys + ("icmp_errors_to_guest", "udp_flows_expired")}
            print(f"udp sweep: {d}")
            assert sum(d[k] for k in keys) == sent == 65535, d
            # Port 67 of the gateway is its DHCP server ("sweep!" is no DHCP message); the rest is NAT.
            assert d["drop_dhcp_malformed"] == 1 and d["drop_host_socket_failed"] == 0 and d["drop_udp_bad_checksum"] == 0, d
            assert d["udp_flows_opened"] == 4096 and d["drop_udp_flow_table_full"] == 65535 - 1 - 4096, d
            assert d["drop_udp_guest_flows_full"] == 0, d
            # Every port that got a flow is closed on host loopback and answers with ICMP port unreachable (exactly
            # 4096 here; a kernel that rate-limits ICMP on loopback would send fewer).
            assert 0 < d["icmp_errors_to_guest"] <= 4096, d
            t.wait_moving(moving)
            seen = flood_seen(p, out)
            print(f"udp sweep: the guest saw {seen}")
            assert int(re.search(r"icmp=(\d+)", seen).group(1)) > 0, seen
            t.finish()
        finally:
            t.close()
        v.wait_settled(base_fds, timeout=30)
        after = v.stats()
        assert after["udp_flows_expired"] - before.get("udp_flows_expired", 0) == 4096
        r = in_ns(nets.guest_ns, sys.executable, NETTOOL, "udp-refused", GW, 9)
        assert r.stdout.strip() == "REFUSED", r.stdout + r.stderr
        assert v.peak_rss_kb() < RSS_LIMIT_KB


# ------------------------------------------------------------------------ guest side: DHCP from 1,000 MACs


def test_dhcp_from_1000_macs(nets, log_dir):
    """DISCOVER/REQUEST from 1,000 MACs (in pipelined batches of 250) against the 16-address pool while the guest
    (10.0.2.15) transfers: 15 get leases; in the first batch the extra DISCOVERs are offered addresses reclaimed
    from unconfirmed offers and their REQUESTs lose to the first (NAK); once every address is bound the later
    batches are counted as drop_dhcp_pool_exhausted. The holder renews and keeps its address, and once the
    flood's leases expire (--limit dhcp-lease-time) a new MAC gets an address again."""
    lease = 20
    with Vnet(nets, log_dir, ["--limit", f"dhcp-lease-time={lease}"]) as v:
        t = Transfer(nets.guest_ns, GW, STREAM_PORT, nets.workdir, log_dir)
        try:
            moving = t.wait_moving()
            before = v.stats()
            flooded_at = time.monotonic()   # every lease of the flood is granted after this
            r = in_ns(nets.guest_ns, sys.executable, FLOODTOOL, "dhcp", "tap0", 1000, "10.0.2.15", timeout=120)
            leases = re.search(r"^LEASES (\d+)(.*)$", r.stdout, re.M)
            assert leases, r.stdout + r.stderr
            addrs = leases.group(2).split()
            after = v.stats()
            exhausted = delta(after, before, "drop_dhcp_pool_exhausted")
            print(f"dhcp: {leases.group(1)} leases {addrs}; pool exhausted {exhausted}; {r.stdout.strip().splitlines()[-1]}")
            assert int(leases.group(1)) == 15 and len(set(addrs)) == 15 and "10.0.2.15" not in addrs, r.stdout
            assert exhausted >= 750, after   # batches 2-4: every address bound (batch 1 took the 15)
            assert re.search(r"^RENEW-BEFORE 10\.0\.2\.15$", r.stdout, re.M), r.stdout
            assert re.search(r"^RENEW 10\.0\.2\.15$", r.stdout, re.M), r.stdout
            mine = [l for l in v.call("leases") if l["address"] == "10.0.2.15"]
            assert len(mine) == 1 and mine[0]["state"] == "bound", mine
            t.wait_moving(moving)
            # The flood's leases expire; then a MAC never seen before gets one of their addresses.
            got = {}

            def new_mac_served():
                out = in_ns(nets.guest_ns, sys.executable, FLOODTOOL, "dhcp-one", "tap0", len(got) + 1).stdout
                got[len(got) + 1] = out.strip()
                return "LEASE 10.0.2." in out

            rig.wait_for(new_mac_served, lease + 30, interval=0.5, message=lambda: f"a new MAC to get a lease: {got}")
            waited = time.monotonic() - flooded_at
            print(f"dhcp: a new MAC got {list(got.values())[-1]} {waited:.1f} s after the flood began (lease {lease} s)")
            assert waited >= lease - 0.5, "a lease came back before the flood's leases could have expired"
            t.finish()
        finally:
            t.close()


# ------------------------------------------------------------------------ host side: hostfwd connection storm


STORM = 5000 if LONG else 2000


@pytest.mark.parametrize("variant", ["half-open-cap", "few-fds"])
def test_hostfwd_connection_storm(nets, log_dir, variant):
    """STORM connections (300 at a time) to a hostfwd listener whose guest side is nettool's server in the guest
    namespace, while a forwarded transfer runs. Each connection reaches vnet's accept once and is either forwarded
    or closed at once (half-open cap); the half-open cap holds (sampled from `info usernet`); with 64 fds the
    backlog waits and every connection is served; the forwarded transfer goes on; everything closes afterwards; a
    new forwarded connection works. (Run after another vnet used the same guest ports, this also covers a reused
    4-tuple whose TIME-WAIT the guest still holds: vnet resets it and connects at once.)"""
    guest_port, stream_port = 6001, 6002
    fwd_port, fwd_stream = rig.free_tcp_port(), rig.free_tcp_port()
    cap = 32
    extra = [f"user,hostfwd=tcp:127.0.0.1:{fwd_port}-10.0.2.15:{guest_port},hostfwd=tcp:127.0.0.1:{fwd_stream}-10.0.2.15:{stream_port}"]
    nofile = None
    if variant == "half-open-cap":
        extra += ["--limit", f"tcp-half-open={cap}"]
    else:
        nofile = 64
    guest_procs = [popen_ns(nets.guest_ns, sys.executable, NETTOOL, "serve", "0.0.0.0", guest_port),
                   popen_ns(nets.guest_ns, sys.executable, FLOODTOOL, "stream-server", "0.0.0.0", stream_port)]
    try:
        for i, p in enumerate(guest_procs):
            rig.OutputCollector(p.stdout, log_dir / f"guest-server-{i}.log", "guest server").wait_for(r"LISTENING", 15)
        with Vnet(nets, log_dir, extra, nofile=nofile) as v:
            base_fds = v.fds()
            t = Transfer(nets.host_ns, "127.0.0.1", fwd_stream, nets.workdir, log_dir)
            try:
                moving = t.wait_moving()
                before = v.stats()
                half_open_max = [0]
                sampling = threading.Event()

                def sample():
                    while not sampling.is_set():
                        with sampler_lock:
                            flows = v.call("info-usernet")["flows"]
                        half_open_max[0] = max(half_open_max[0], sum(1 for f in flows if f.get("state") in ("SYN_SENT", "SYN_RCVD", "CONNECTING")))
                        sampling.wait(0.05)

                sampler_lock = threading.Lock()
                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                try:
                    r = in_ns(nets.host_ns, sys.executable, FLOODTOOL, "storm", "127.0.0.1", fwd_port, STORM, 300, timeout=300)
                finally:
                    sampling.set()
                    sampler.join(10)
                m = re.search(r"STORM ok=(\d+) failed=(\d+) seconds=([\d.]+)", r.stdout)
                assert m, r.stdout + r.stderr
                ok, failed = int(m.group(1)), int(m.group(2))
                with sampler_lock:
                    after = v.stats()
                d = {k: delta(after, before, k) for k in ("tcp_forwards_accepted", "drop_tcp_half_open_full",
                                                          "drop_host_socket_failed", "drop_tcp_flow_table_full")}
                print(f"storm {variant}: {STORM} connections in {m.group(3)} s: ok {ok}, failed {failed}; {d}; "
                      f"half-open at most {half_open_max[0]} (sampled)")
                assert ok + failed == STORM and ok > 0, r.stdout
                refused = d["drop_tcp_half_open_full"] + d["drop_host_socket_failed"] + d["drop_tcp_flow_table_full"]
                assert d["tcp_forwards_accepted"] + refused == STORM, d
                assert failed >= refused - 0, (failed, d)
                if variant == "half-open-cap":
                    assert d["drop_tcp_half_open_full"] > 0 and half_open_max[0] <= cap, (d, half_open_max)
                else:
                    # Out of fds, vnet leaves new connections in the listener's backlog and takes them as flows close:
                    # slower, but every one is served.
                    assert ok == STORM and failed == 0, (ok, failed, d)
                t.wait_moving(moving)
                t.finish()
            finally:
                t.close()
            v.wait_settled(base_fds)
            r = in_ns(nets.host_ns, sys.executable, FLOODTOOL, "storm", "127.0.0.1", fwd_port, 50, 10, timeout=120)
            assert "ok=50 failed=0" in r.stdout, r.stdout
            assert v.peak_rss_kb() < RSS_LIMIT_KB
            assert v.alive()
    finally:
        for p in guest_procs:
            stop(p)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_idle_out_of_fds(v, nets, what: str, nofile: int = 32):
    """vnet reaches its fd limit with connections waiting in a listener's backlog; then, over a guest command's
    run time, it must keep serving the guest (3 pings) without spinning (under a quarter of a CPU)."""
    rig.wait_for(lambda: v.fds() == nofile, 20, message=lambda: f"vnet to run out of fds ({v.fds()} of {nofile})")
    cpu0, t0 = cpu_seconds(v.pid), time.monotonic()
    r = in_ns(nets.guest_ns, "busybox", "ping", "-c", "3", "-W", "5", GW, check=False)
    cpu, wall = cpu_seconds(v.pid) - cpu0, time.monotonic() - t0
    print(f"out of fds ({what}): vnet used {cpu:.2f} s of CPU in {wall:.2f} s")
    assert r.returncode == 0 and "3 packets received" in r.stdout, r.stdout + r.stderr
    assert cpu < 0.25 * wall, f"vnet used {cpu:.2f} s of CPU in {wall:.2f} s while out of fds"


def test_hostfwd_out_of_fds_waits_without_spinning(nets, log_dir):
    """More held hostfwd connections than vnet has fds for (--nofile 32): the rest wait in the listener's backlog
    while vnet stays idle (a listener that cannot be accepted from stays readable: vnet pauses it instead of
    polling it in a loop) and keeps serving the guest; once the held connections finish, every waiting one is
    taken and served."""
    guest_port, n = 6003, 60
    fwd_port = rig.free_tcp_port()
    server = popen_ns(nets.guest_ns, sys.executable, NETTOOL, "serve", "0.0.0.0", guest_port)
    try:
        rig.OutputCollector(server.stdout, log_dir / "guest-server.log", "guest server").wait_for(r"LISTENING", 15)
        with Vnet(nets, log_dir, [f"user,hostfwd=tcp:127.0.0.1:{fwd_port}-10.0.2.15:{guest_port}"], nofile=32) as v:
            base_fds = v.fds()
            holder = popen_ns(nets.host_ns, sys.executable, FLOODTOOL, "hold", "127.0.0.1", fwd_port, n, stdin=subprocess.PIPE)
            try:
                out = rig.OutputCollector(holder.stdout, log_dir / "hold.log", "hold")
                out.wait_for(r"OPEN 60\n", 30)
                assert_idle_out_of_fds(v, nets, "hostfwd")
                v.proc.wait_for_line(r"out of file descriptors: accepts paused x\d+ .*\(hostfwd [1-9]", 20, stream="stderr")
                holder.stdin.write(b"go\n")
                holder.stdin.flush()
                done = out.wait_for(r"DONE ok=(\d+) failed=(\d+)\n", 90)
                assert (int(done.group(1)), int(done.group(2))) == (n, 0), done.group(0)
                holder.wait(timeout=10)
            finally:
                stop(holder)
            v.wait_settled(base_fds)
            c = rig.read_counters(v.proc)
            assert c.get("hostfwd_accept_pauses", 0) > 0 and c.get("tcp_forwards_accepted") == n, c
    finally:
        stop(server)


def test_control_socket_out_of_fds_waits_without_spinning(nets, log_dir):
    """Control clients past vnet's fds (--nofile 32, under the 128-client limit): the listener pauses rather
    than spinning on a backlog it cannot accept from, the guest is still served, the pause is logged and counted,
    and once the held clients leave, the waiting ones are served in turn."""
    with Vnet(nets, log_dir, nofile=32) as v:
        base_fds = v.fds()
        # Ten more than vnet has fds for: they wait in the listener's backlog (16 deep; a unix connect past a
        # full backlog would block).
        n = 32 - base_fds + 10
        held = []
        try:
            def connected(c: socket.socket) -> bool:
                try:
                    c.connect(str(v.ctl_path))   # the kernel completes it from the backlog
                    return True
                except BlockingIOError:          # the backlog is full until vnet accepts (a unix socket says EAGAIN)
                    return False

            for i in range(n):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.settimeout(30)
                held.append(c)
                rig.wait_for(lambda: connected(c), 20, message=f"control client {i} to connect")
            assert_idle_out_of_fds(v, nets, "control")
            v.proc.wait_for_line(r"out of file descriptors: accepts paused", 20, stream="stderr")
            # The held clients leave but the last five, which waited in the backlog: they are accepted in turn
            # and served.
            for c in held[:-5]:
                c.close()
            for c in held[-5:]:
                c.sendall(b'{"execute": "stats", "id": 1}\n')
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = c.recv(65536)
                    assert chunk, "the control socket closed a client that waited in the backlog"
                    reply += chunk
                assert b'"return"' in reply and b'"id":1' in reply, reply[:200]
        finally:
            for c in held:
                c.close()
        v.wait_settled(base_fds)
        c = rig.read_counters(v.proc)
        assert c.get("accept_pauses", 0) > 0, c


# ------------------------------------------------------------------------ host peer resets or stalls


def test_host_peer_resets_mid_download(nets, log_dir):
    """The host server aborts (RST) after 4 MiB: the guest's read fails with a reset, and vnet's flow and its
    host socket are gone."""
    with Vnet(nets, log_dir) as v:
        base_fds = v.fds()
        r = in_ns(nets.guest_ns, sys.executable, FLOODTOOL, "reset-client", GW, RESET_PORT, "send", timeout=90)
        m = re.search(r"^RESET (\d+)$", r.stdout, re.M)
        assert m and int(m.group(1)) > 0, r.stdout + r.stderr
        assert int(m.group(1)) <= 4 << 20
        v.wait_settled(base_fds, timeout=15)
        s = v.stats()
        assert s["tcp_resets_to_guest"] >= 1, s
        get_ok(nets.guest_ns, GW, SERVE_PORT)


def test_host_peer_stalls_then_resets(nets, log_dir):
    """The host server stops reading after 1 MiB: the guest's sends stop as the window closes (the flow stays,
    nothing is lost or timed out), then the server aborts: the guest's blocked connection sees the reset, and the
    flow and its socket are gone."""
    with Vnet(nets, log_dir) as v:
        base_fds = v.fds()
        reset = nets.servers["reset"]
        start = len(reset.out)
        client = popen_ns(nets.guest_ns, sys.executable, FLOODTOOL, "reset-client", GW, RESET_PORT, "stall")
        try:
            out = rig.OutputCollector(client.stdout, log_dir / "stall-client.log", "stall client")
            reset.out.wait_for(r"STALLED\n", 30, start)
            m = out.wait_for(r"BLOCKED (\d+)\n", 60)
            blocked = int(m.group(1))
            s = v.stats()
            assert s["flows_tcp"] == 1, s
            assert blocked >= 1 << 20, blocked
            print(f"stall: the guest's sends blocked after {blocked} bytes (window closed)")
            reset.proc.stdin.write(b"go\n")
            reset.proc.stdin.flush()
            reset.out.wait_for(r"ABORTED stall\n", 30, start)
            res = out.wait_for(r"(RESET|EOF|TIMEOUT)[^\n]*\n", 60)
            assert res.group(1) == "RESET", res.group(0)
            client.wait(timeout=10)
        finally:
            stop(client)
        v.wait_settled(base_fds, timeout=15)
        get_ok(nets.guest_ns, GW, SERVE_PORT)


def test_host_peer_stalls_then_resumes(nets, log_dir):
    """The host server stops reading after 1 MiB: the guest's sends block as the window closes, the flow stays;
    the server reads again: the guest's upload resumes and all 16 MiB arrive intact; then the flow closes."""
    with Vnet(nets, log_dir) as v:
        base_fds = v.fds()
        reset = nets.servers["reset"]
        start = len(reset.out)
        client = popen_ns(nets.guest_ns, sys.executable, FLOODTOOL, "reset-client", GW, RESET_PORT, "stall-resume")
        try:
            out = rig.OutputCollector(client.stdout, log_dir / "resume-client.log", "resume client")
            reset.out.wait_for(r"STALLED\n", 30, start)
            blocked = int(out.wait_for(r"BLOCKED (\d+)\n", 60).group(1))
            assert v.stats()["flows_tcp"] == 1 and blocked < 16 << 20, blocked
            reset.proc.stdin.write(b"go\n")
            reset.proc.stdin.flush()
            res = out.wait_for(r"RESUMED (\S+)[^\n]*\n", 90)
            assert res.group(1) == "ok", res.group(0)
            print(f"stall-resume: blocked after {blocked} bytes, resumed, 16 MiB intact")
            client.wait(timeout=10)
        finally:
            stop(client)
        v.wait_settled(base_fds, timeout=15)


# ------------------------------------------------------------------------ QEMU killed mid-transfer


def test_qemu_sigkill_mid_transfer(guest_image, workdir, log_dir):
    """A real guest downloads through `vnet user --socket`; QEMU is killed with SIGKILL mid-transfer. vnet stays
    up, closes the dead guest's flows at once (the host server's connection is reset), its fds return to the
    count it had before any QEMU connected, and the next QEMU connects, gets the same address and fetches."""
    endless = EndlessHttp()
    with rig.HttpServer() as http, endless:
        sock = workdir / "vnet.sock"
        ctl = workdir / "ctl.sock"
        with rig.VnetProcess(["user", "--socket", sock, "--control", ctl, "--dns-upstream", "127.0.0.1:53",
                              "--log-level", "info"], log_dir=log_dir) as vnet:
            base_fds = fd_count(vnet.pid)
            netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]

            def ctl_stats():
                r = sh(rig.vnet_binary(), "ctl", ctl, "stats", "--json", timeout=30)
                return json.loads(r.stdout)["return"]

            g1 = rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="guest1")
            with g1:
                lease = g1.dhcp()
                assert lease["ip"] == "10.0.2.15", lease
                g1.start_background(f"wget -q -O /dev/null http://{GW}:{endless.port}/", "wget")
                rig.wait_for(lambda: endless.sent >= 1 << 20, 60, message="the guest's download to be under way")
                rig.wait_for(lambda: ctl_stats()["flows"]["tcp"] >= 1, 30, message="vnet's TCP flow for the download")
                os.kill(g1.pid, signal.SIGKILL)
                vnet.wait_for_line(r"QEMU disconnected", 30, stream="stderr")
            assert vnet.proc.poll() is None, "vnet died with its QEMU"
            line = vnet.wait_for_line(r"closed (\d+) flows of the disconnected guest", 15, stream="stderr")
            assert int(line.group(1)) >= 1
            rig.wait_for(lambda: fd_count(vnet.pid) == base_fds, 15,
                         message=lambda: f"vnet's fds back to {base_fds} (now {fd_count(vnet.pid)})")
            s = ctl_stats()
            assert s["flows"]["tcp"] == 0 and s["served"]["flows_closed_guest_gone"] >= 1, s
            # The host server's connection was reset by vnet, not left to time out.
            rig.wait_for(lambda: endless.ended is not None, 15, message="the host server's connection to end")
            assert endless.ended == "ConnectionResetError", endless.ended
            print(f"sigkill: fds back to {base_fds}; {s['served']['flows_closed_guest_gone']} flows closed with the guest; "
                  f"the host server sent {endless.sent} bytes, then saw {endless.ended}")
            with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="guest2") as g2:
                lease2 = g2.dhcp()
                assert lease2["ip"] == "10.0.2.15", lease2
                out = g2.check(f"wget -q -O - http://{GW}:{http.port}/", timeout=60)
                assert "hello from the vnet test host" in out
            rig.wait_for(lambda: fd_count(vnet.pid) == base_fds, 15,
                         message=lambda: f"vnet's fds back to {base_fds} after the second guest")


class EndlessHttp:
    """Answers one HTTP GET on host loopback with an endless body; records how the connection ended."""

    def __init__(self):
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.sent = 0
        self.ended: str | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        try:
            c, _ = self.srv.accept()
        except OSError:
            return
        with c:
            try:
                req = b""
                while b"\r\n\r\n" not in req:
                    d = c.recv(4096)
                    if not d:
                        raise EOFError
                    req += d
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                block = bytes(range(256)) * 256
                while True:
                    c.sendall(block)
                    self.sent += len(block)
            except Exception as e:  # how it ended is the result
                self.ended = type(e).__name__

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        try:
            self.srv.shutdown(socket.SHUT_RDWR)   # wakes an accept that never got its connection
        except OSError:
            pass
        self.srv.close()
        self.thread.join(10)
