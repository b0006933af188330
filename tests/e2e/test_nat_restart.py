"""`vnet nat` keeps leases across a restart; QEMU is the stream server, so the NICs come back by themselves.

Two guests listen (`-netdev stream,server=on`) and vnet connects to both. Before the restart A leases first,
then B; after it, B asks first. Without the lease file B would get the first free address (A's); with it
each keeps its own. A corrupt lease file is a clear error, never silently reset.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import rig

A = ("vma", "52:54:00:12:03:01")
B = ("vmb", "52:54:00:12:03:02")


def vnet_args(d: Path, dns: str):
    return ["nat", "--connect", f"unix:{d / 'a.sock'}", "--connect", f"unix:{d / 'b.sock'}",
            "--leases-file", d / "restart.leases", "--dns-upstream", dns, "--log-level", "info"]


def test_leases_survive_a_restart_and_nics_come_back(guest_image, module_workdir, module_log_dir):
    d = Path(module_workdir)
    with rig.DnsServer({}) as dns:
        guests = {}
        try:
            for name, mac in (A, B):
                netdev = ["-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={d / (name[-1] + '.sock')}"]
                guests[name] = rig.Guest(guest_image, netdev, workdir=d, log_dir=module_log_dir, name=name, mac=mac).start()
            with rig.VnetProcess(vnet_args(d, dns.address), log_dir=module_log_dir, name="vnet-1") as vnet:
                first = {n: guests[n].dhcp(extra=f"-x hostname:{n}")["ip"] for n in ("vma", "vmb")}
            assert first["vma"] != first["vmb"]
            saved = json.loads((d / "restart.leases").read_text())
            assert {l["mac"] for l in saved["leases"]} == {A[1], B[1]}, saved
            with rig.VnetProcess(vnet_args(d, dns.address), log_dir=module_log_dir, name="vnet-2") as vnet:
                vnet.wait_for_line("restored 2 of 2 leases", stream="stderr")
                # The NICs reconnect on their own; B asks first now and still gets its own address.
                second_b = guests["vmb"].dhcp()["ip"]   # udhcpc retries for 10 s; vnet reconnects within 1 s
                second_a = guests["vma"].dhcp()["ip"]
                assert (second_a, second_b) == (first["vma"], first["vmb"])
                out = guests["vma"].check("ping -c 1 -W 5 " + second_b)
                assert "1 packets received" in out
        finally:
            for g in guests.values():
                g.close()


def test_a_corrupt_lease_file_is_an_error(module_workdir, module_log_dir):
    d = Path(module_workdir)
    bad = d / "corrupt.leases"
    bad.write_text("{not json")
    r = subprocess.run([str(rig.vnet_binary()), "nat", "--socket", str(d / "c.sock"), "--leases-file", str(bad),
                        "--dns-upstream", "127.0.0.1:9"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1, r
    assert "corrupt" in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert bad.read_text() == "{not json", "the file is left as it was"
