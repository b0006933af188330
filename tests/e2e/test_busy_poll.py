"""`vnet user --busy-poll USEC`: the opt-in short busy poll, with ACKs that wait for the reply carrying them.

The kernel stack in a namespace behind vnet's TAP is the guest (as in test_user_tap.py). A request/response
exchange must complete with its replies intact, and vnet must show that it caught events by polling and that
replies carried the owed ACKs (`tcp_acks_folded`); a bulk transfer both ways, checked by SHA-256, shows that
ACKs held back for one turn never stall a sender. Nothing leaves the test's two namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig
from test_user_tap import NETTOOL, UDHCPC_SCRIPT, in_ns, sh

BULK = 16 << 20


@pytest.fixture(scope="module")
def polled(tun_available, module_workdir, module_log_dir):
    suffix = f"{os.getpid() % 100000}b"
    host_ns, guest_ns = f"vnh{suffix}", f"vng{suffix}"
    made, procs = [], []
    try:
        for ns in (host_ns, guest_ns):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(host_ns, "ip", "addr", "add", "192.0.2.1/32", "dev", "lo")
        script = Path(module_workdir) / "udhcpc-busy-poll.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        server = subprocess.Popen(["ip", "netns", "exec", host_ns, sys.executable, str(NETTOOL), "serve", "0.0.0.0", "5001"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(server)
        rig.OutputCollector(server.stdout, Path(module_log_dir) / "nettool-server.log", "nettool server").wait_for(r"LISTENING", 15)
        args = ["netns", "exec", host_ns, str(rig.vnet_binary()), "user", "--netns", f"/run/netns/{guest_ns}", "--tap", "tap0",
                "--dns-upstream", "127.0.0.1:53", "--busy-poll", "200", "--log-level", "info"]
        with rig.VnetProcess(args, binary=shutil.which("ip"), log_dir=Path(module_log_dir) / "busy-poll") as vnet:
            out = in_ns(guest_ns, "busybox", "udhcpc", "-i", "tap0", "-q", "-n", "-f", "-t", "5", "-T", "2", "-s", script).stdout
            assert "LEASE ip=10.0.2.15" in out, out
            yield SimpleNamespace(host_ns=host_ns, guest_ns=guest_ns, vnet=vnet)
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def test_request_response_folds_acks_into_replies(polled):
    before = rig.read_counters(polled.vnet)
    r = in_ns(polled.guest_ns, sys.executable, NETTOOL, "pingpong", "192.0.2.1", 5001, 2000, timeout=120)
    assert r.stdout.strip() == "ROUNDS 2000 OK", r.stdout + r.stderr
    c = rig.read_counters(polled.vnet)
    assert c.get("busy_poll_catches", 0) > before.get("busy_poll_catches", 0), c
    assert c.get("tcp_acks_folded", 0) > before.get("tcp_acks_folded", 0), c
    assert c.get("tcp_retransmits", 0) == before.get("tcp_retransmits", 0), c


@pytest.mark.parametrize("direction", ["host-to-guest", "guest-to-host"])
def test_bulk_tcp_is_not_held_up(polled, direction):
    expected = sh(sys.executable, NETTOOL, "pattern-sha", BULK).stdout.strip()
    verb = "get" if direction == "host-to-guest" else "put"
    r = in_ns(polled.guest_ns, sys.executable, NETTOOL, verb, "192.0.2.1", 5001, BULK, timeout=300)
    assert r.stdout.strip() == expected, r.stdout + r.stderr


def test_busy_poll_out_of_range_is_refused():
    r = subprocess.run([str(rig.vnet_binary()), "user", "--busy-poll", "5000"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and r.stderr.startswith("vnet: error: ") and "--busy-poll" in r.stderr and "Traceback" not in r.stderr, r.stderr
