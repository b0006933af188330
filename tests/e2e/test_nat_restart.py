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


def test_one_config_file_is_all_it_needs(module_workdir, module_log_dir):
    d = Path(module_workdir)
    port = rig.free_tcp_port()
    cfg = d / "net.yaml"
    cfg.write_text(f"""# a NAT network for a lab
network: 10.77.0.0/24
dhcp-range: 10.77.0.100-10.77.0.150
static-lease: ["52:54:00:aa:00:01,10.77.0.120,db"]
host: ["files=10.77.0.9"]
dns-record: ["_pg._tcp.lab SRV 0 0 5432 db.lab", "v6.lab AAAA 2001:db8::5", "lab TXT hello"]
control: {d / 'cfg.ctl'}
deny: ["192.0.2.0/24"]
limit: ["udp-flows=64"]
port-map: ["tcp:127.0.0.1:{port}-db:5432"]
socket: [{d / 'cfg.sock'}]
leases-file: {d / 'cfg.leases'}
dns-upstream: 127.0.0.1:9
""")
    with rig.VnetProcess(["nat", "--config", cfg], log_dir=module_log_dir, name="vnet-config") as vnet:
        out = vnet.stdout.text
        assert "vnet: nat network 10.77.0.0/24, gateway 10.77.0.1, dns 10.77.0.1, dhcp 10.77.0.100+51" in out, out
        assert f"vnet: port map tcp 127.0.0.1:{port} -> db:5432" in out, out
        assert f"addr.path={d / 'cfg.sock'}" in out, out
        r = subprocess.run([str(rig.vnet_binary()), "ctl", str(d / "cfg.ctl"), "dns", "list"], capture_output=True, text=True, timeout=20)
        assert "_pg._tcp.lab 60 IN SRV 0 0 5432 db.lab" in r.stdout and "v6.lab 60 IN AAAA 2001:db8::5" in r.stdout, r.stdout + r.stderr
        assert "files 10 IN A 10.77.0.9" in r.stdout, r.stdout


@pytest.mark.parametrize("text,message", [
    ("network: [1, 2\n", "not valid YAML"),
    ("netwrok: 10.0.0.0/24\n", "unknown setting 'netwrok'"),
    ("static-lease: ['52:54:00:aa:00:01,192.168.1.5']\n", "outside the DHCP range"),
    ("port-map: ['tcp::99999-db:80']\n", "port map"),
    ("dns-record: ['x.lab MX 10 mail']\n", "TYPE one of A, AAAA, SRV or TXT"),
    ("deny: ['300.1.1.0/24']\n", "is not an IPv4 prefix"),
    ("limit: ['frobs=3']\n", "is not NAME=N"),
    ("dns-record: ['x.lab AAAA 10.0.0.1']\n", "needs an IPv6 address"),
])
def test_bad_config_files_are_one_line_errors(module_workdir, text, message):
    cfg = Path(module_workdir) / "bad.yaml"
    cfg.write_text(text)
    r = subprocess.run([str(rig.vnet_binary()), "nat", "--config", str(cfg), "--socket", str(Path(module_workdir) / "bad.sock"),
                        "--leases-file", str(Path(module_workdir) / "bad.leases")], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
