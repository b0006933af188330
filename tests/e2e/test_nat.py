"""`vnet nat`: three real QEMU guests on one NAT network (switch + gateway), run as an unprivileged user.

One vnet, started as `nobody`, serves three guests over one unix socket (one switch port each). The checks
share the booted guests: distinct leases, guest-to-guest ping, lease host names in DNS, a page from a host
loopback server through the gateway, a port map to one VM by host name, and the switch's counters.
DNS upstream is a test server on loopback; nothing leaves the machine.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

VMS = [("vm1", "52:54:00:12:01:01"), ("vm2", "52:54:00:12:01:02"), ("vm3", "52:54:00:12:01:03")]
# vm3's SLAAC address in the default fec0::/64 (its MAC as a modified EUI-64).
VM3_SLAAC = "fec0::5054:ff:fe12:103"


def unprivileged(workdir: Path, home: Path):
    """How to start vnet as `nobody` (as root), or as ourselves (already unprivileged): binary, argv prefix, user."""
    if os.getuid() != 0:
        return rig.vnet_binary(), [], pwd.getpwuid(os.getuid())
    nobody = pwd.getpwnam("nobody")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop privileges"
    os.chmod(workdir, 0o711)
    binary = home / "vnet"
    shutil.copy2(rig.vnet_binary(), binary)
    os.chmod(binary, 0o755)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    return setpriv, [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--", str(binary)], nobody


@pytest.fixture(scope="module")
def nat(guest_image, module_workdir, module_log_dir):
    home = Path(module_workdir) / "nobody-home"
    home.mkdir(mode=0o700)
    sock = home / "nat.sock"
    leases = home / "nat.leases"
    map_port = rig.free_tcp_port()
    map_port6 = rig.free_tcp_port("::1")
    with rig.HttpServer({"/": b"hello from the host\n"}) as http, \
            rig.DnsServer({"upstream.test": "192.0.2.55"}) as dns:
        launcher, prefix, nobody = unprivileged(Path(module_workdir), home)
        args = prefix + ["nat", "--socket", sock, "--leases-file", leases, "--dns-upstream", f"{dns.address}", "--control", home / "nat.ctl", "--pcap", home / "nat.pcap",
                         "--port-map", f"tcp:127.0.0.1:{map_port}-vm2:8080", "--port-map", f"tcp:[::1]:{map_port6}-[{VM3_SLAAC}]:8080", "--domain", "vnet.test", "--log-level", "info"]
        with rig.VnetProcess(args, log_dir=module_log_dir, binary=launcher, env={"HOME": str(home)}) as vnet:
            guests = []
            try:
                for name, mac in VMS:
                    netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
                    g = rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name=name, mac=mac)
                    g.start()
                    guests.append(g)
                leases_by_name = {}
                for (name, _), g in zip(VMS, guests):
                    leases_by_name[name] = g.dhcp(extra=f"-x hostname:{name} -O mtu -O search")
                yield SimpleNamespace(vnet=vnet, guests=dict(zip([n for n, _ in VMS], guests)), leases=leases_by_name,
                                      http=http, dns=dns, map_port=map_port, map_port6=map_port6, leases_file=leases, nobody=nobody, sock=sock,
                                      ctl=home / "nat.ctl", pcap=home / "nat.pcap")
            finally:
                for g in guests:
                    g.close()


def test_vnet_runs_unprivileged_and_prints_qemu_args(nat):
    status = Path(f"/proc/{nat.vnet.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert set(uids) == {str(nat.nobody.pw_uid)}, uids
    out = nat.vnet.stdout.text
    assert "vnet: nat network 192.168.122.0/24, gateway 192.168.122.1" in out
    m = re.search(r"-device virtio-net-pci,netdev=n0,mac=(52:54:00:[0-9a-f:]{8})", out)
    assert m, out
    assert os.stat(nat.sock).st_uid == nat.nobody.pw_uid


def test_each_vm_gets_a_distinct_lease_in_the_network(nat):
    ips = [nat.leases[n]["ip"] for n, _ in VMS]
    assert len(set(ips)) == 3, nat.leases
    for n, _ in VMS:
        lease = nat.leases[n]
        assert lease["ip"].startswith("192.168.122."), lease
        assert lease["router"] == "192.168.122.1" and lease["dns"] == "192.168.122.1", lease


def test_vms_ping_each_other(nat):
    for a, b in (("vm1", "vm2"), ("vm2", "vm3"), ("vm3", "vm1")):
        r = nat.guests[a].run(f"ping -c 2 -W 5 {nat.leases[b]['ip']}")
        assert r.rc == 0 and "2 packets received" in r.output, r.output


def test_lease_host_names_resolve_from_another_vm(nat):
    for asker, name in (("vm1", "vm2"), ("vm3", "vm1")):
        out = nat.guests[asker].check(f"nslookup {name} 192.168.122.1")
        assert nat.leases[name]["ip"] in out, out
        out = nat.guests[asker].check(f"nslookup {name}.vnet.test 192.168.122.1")
        assert nat.leases[name]["ip"] in out, out
    # Names that are not ours still go upstream (the test's resolver), answered from there.
    out = nat.guests["vm2"].check("nslookup upstream.test 192.168.122.1")
    assert "192.0.2.55" in out, out


def test_each_vm_fetches_a_page_from_host_loopback(nat):
    for n, _ in VMS:
        out = nat.guests[n].check(f"wget -q -O - http://192.168.122.1:{nat.http.port}/")
        assert out == "hello from the host\n", out


def test_port_map_by_host_name_reaches_the_right_vm(nat):
    for n, _ in VMS:
        g = nat.guests[n]
        g.write_file("/www/index.html", f"served by {n}\n")
    g = nat.guests["vm2"]
    g.start_background("httpd -f -p 8080 -h /www", "httpd")
    rig.wait_for(lambda: ":8080 " in g.check("netstat -ltn"), timeout=20, message="vm2 httpd listening")
    with socket.create_connection(("127.0.0.1", nat.map_port), timeout=20) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.endswith(b"served by vm2\n"), data


def test_leases_are_saved_with_host_names(nat):
    import json
    saved = json.loads(nat.leases_file.read_text())
    by_mac = {l["mac"]: l for l in saved["leases"]}
    for n, mac in VMS:
        assert by_mac[mac]["ip"] == nat.leases[n]["ip"] and by_mac[mac]["hostname"] == n, saved
    assert oct(nat.leases_file.stat().st_mode & 0o777) == "0o600"


def test_control_socket_lists_leases_with_names_and_port_maps(nat):
    import json
    run = lambda *a: subprocess.run([str(rig.vnet_binary()), "ctl", str(nat.ctl), *a], capture_output=True, text=True, timeout=20)
    r = run("leases", "--json")
    assert r.returncode == 0, r.stderr
    by_mac = {l["mac"]: l for l in json.loads(r.stdout)["return"]}
    for n, mac in VMS:
        assert by_mac[mac]["hostname"] == n and by_mac[mac]["address"] == nat.leases[n]["ip"], by_mac
    r = run("port-maps")
    assert f"-> vm2:8080 (now {nat.leases['vm2']['ip']})" in r.stdout, r.stdout
    r = run("dns-add", "name=files.lab", "value=192.0.2.99")
    assert r.returncode == 0, r.stderr
    out = nat.guests["vm1"].check("nslookup files.lab 192.168.122.1")
    assert "192.0.2.99" in out, out


def test_the_segment_capture_opens_in_tshark(nat):
    if shutil.which("tshark") is None:
        pytest.fail("tshark not found: apt-get install tshark (scripts/test installs it)", pytrace=False)
    r = subprocess.run([str(rig.vnet_binary()), "ctl", str(nat.ctl), "pcap", "stop"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "packets in" in r.stdout, r.stdout + r.stderr

    def tshark(*args):
        t = subprocess.run(["tshark", "-r", str(nat.pcap), *args], capture_output=True, text=True, timeout=60)
        complaints = [l for l in t.stderr.splitlines() if l.strip() and "Running as user" not in l and "could be dangerous" not in l]
        assert t.returncode == 0 and not complaints, t.stderr
        return t.stdout.split()

    acks = tshark("-Y", "dhcp.option.dhcp == 5", "-T", "fields", "-e", "dhcp.ip.your")
    assert {nat.leases[n]["ip"] for n, _ in VMS} <= set(acks), acks
    replies = tshark("-Y", f"icmp.type == 0 && ip.src == {nat.leases['vm2']['ip']}", "-T", "fields", "-e", "ip.dst")
    assert nat.leases["vm1"]["ip"] in replies, replies   # vm1 pinged vm2: a frame between two VM ports
    http = tshark("-d", f"tcp.port=={nat.http.port},http", "-Y", "http.response.code == 200", "-T", "fields", "-e", "ip.dst")
    assert set(http) >= {nat.leases[n]["ip"] for n, _ in VMS}, http


def test_switch_counters(nat):
    c = rig.read_counters(nat.vnet)
    assert c.get("switch_forwarded", 0) > 0 and c.get("switch_flooded", 0) > 0, c
    assert c.get("switch_macs", 0) >= 4, c   # three VMs and the gateway
    assert c.get("dns_local_answers", 0) >= 4, c


def test_ipv6_slaac_ping_and_host_loopback(nat):
    """The gateway serves IPv6 on the segment too: each VM forms its SLAAC address in fec0::/64, pings the
    gateway and another VM over IPv6, and reaches host loopback ([::1] here is served by the IPv4 test server's
    twin below) through fec0::2."""
    def slaac(mac: str) -> str:
        b = [int(x, 16) for x in mac.split(":")]
        b[0] ^= 0x02
        return "fec0::%x:%x:%x:%x" % (b[0] << 8 | b[1], b[2] << 8 | 0xFF, 0xFE << 8 | b[3], b[4] << 8 | b[5])
    addrs = {n: slaac(mac) for n, mac in VMS}
    for n, _ in VMS:
        def ready(n=n):
            out = nat.guests[n].run("ip -6 addr show dev eth0").output
            return addrs[n] + "/64" in out and "tentative" not in out
        rig.wait_for(ready, timeout=30, interval=0.3, message=f"{n} to form {addrs[n]} by SLAAC")
    r = nat.guests["vm1"].run("ping -6 -c2 -W5 fec0::2")
    assert r.rc == 0 and "2 packets received" in r.output, r.output
    r = nat.guests["vm1"].run(f"ping -6 -c2 -W5 {addrs['vm3']}")
    assert r.rc == 0 and "2 packets received" in r.output, r.output
    with rig.HttpServer({"/": b"hello over ipv6 from the host\n"}, host="::1") as http6:
        out = nat.guests["vm2"].check(f"wget -q -O - http://[fec0::2]:{http6.port}/")
        assert out == "hello over ipv6 from the host\n", out


def test_ipv6_port_map_from_host_ipv6_loopback_to_a_vm_over_ipv6(nat):
    g = nat.guests["vm3"]
    rig.wait_for(lambda: VM3_SLAAC + "/64" in g.run("ip -6 addr show dev eth0").output, timeout=30, interval=0.3,
                 message="vm3's SLAAC address")
    g.write_file("/www6/index.html", "vm3 over ipv6\n")
    g.start_background("httpd -f -p 8080 -h /www6", "httpd6")
    rig.wait_for(lambda: ":8080 " in g.check("netstat -ltn"), timeout=20, message="vm3 httpd listening")
    with socket.create_connection(("::1", nat.map_port6), timeout=20) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.endswith(b"\r\n\r\nvm3 over ipv6\n"), data
    assert f"vnet: port map tcp [::1]:{nat.map_port6} -> [{VM3_SLAAC}]:8080" in nat.vnet.stdout.text


def test_a_vm_that_goes_away_takes_its_flows(nat):
    """vm1's QEMU is killed (SIGKILL) while it holds a TCP connection to a host loopback server through the
    gateway: its switch port's peer is gone, so the gateway closes vm1's flows at once (the host server sees a
    reset, not a connection left open until some timeout), counts them, and the other VMs keep their network.
    Runs last in this file: vm1 is gone after it."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(30)
        port = srv.getsockname()[1]
        before = rig.read_counters(nat.vnet).get("flows_closed_guest_gone", 0)
        g = nat.guests["vm1"]
        g.start_background(f"sleep 600 | nc 192.168.122.1 {port}", "holder")
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(30)
            conn.sendall(b"hold\n")
            rig.wait_for(lambda: "hold" in g.background_output("holder"), timeout=20, message="vm1's nc to get the bytes")
            os.kill(g.pid, signal.SIGKILL)
            try:
                ended = conn.recv(1)
            except ConnectionResetError:
                ended = b""
            assert ended == b"", f"the connection stayed open after its VM went away: {ended!r}"
        c = rig.read_counters(nat.vnet)
        assert c.get("flows_closed_guest_gone", 0) > before, c
        nat.vnet.wait_for_line(r"closed \d+ flows of 52:54:00:12:01:01", 10, stream="stderr")
        r = nat.guests["vm2"].run("ping -c1 -W5 192.168.122.1")
        assert r.rc == 0 and "1 packets received" in r.output, r.output
