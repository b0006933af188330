"""The control socket, `vnet ctl`, packet capture and the metrics endpoint, against a real QEMU guest.

One guest serves the module. vnet runs with --control, --metrics on a free loopback port and --pcap from the
start, so the capture holds the guest's DHCP exchange; the guest then pings the gateway and fetches a page
from a loopback HTTP server, and tshark reads the capture. Forwards are added and removed at run time with
`vnet ctl`. DNS goes to a test server on loopback only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig


def ctl(net, *words, json_out=False, check=True):
    args = [str(rig.vnet_binary()), "ctl", str(net.ctl), *[str(w) for w in words]]
    if json_out:
        args.append("--json")
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"vnet ctl {' '.join(map(str, words))}: rc={r.returncode}\n{r.stdout}{r.stderr}"
    return r


def ctl_json(net, *words):
    return json.loads(ctl(net, *words, json_out=True).stdout)["return"]


tshark = rig.tshark


class RawClient:
    """A line-oriented client on the control socket (for protocol checks and events)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "control socket closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def host():
    with rig.HttpServer({"/": b"hello through vnet\n"}) as http, \
            rig.DnsServer({"upstream.test": "192.0.2.30"}) as dns:
        yield SimpleNamespace(http=http, dns=dns)


@pytest.fixture(scope="module")
def net(guest_image, module_workdir, module_log_dir, host):
    wd = Path(module_workdir)
    sock, ctl_path, pcap = wd / "vnet.sock", wd / "ctl.sock", wd / "boot.pcap"
    metrics_port = rig.free_tcp_port()
    args = ["user", "user,id=n0", "--socket", sock, "--control", ctl_path, "--pcap", pcap,
            "--metrics", f"127.0.0.1:{metrics_port}", "--dns-upstream", f"127.0.0.1:{host.dns.port}", "--log-level", "info"]
    with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as guest:
            lease = guest.dhcp()
            assert lease["ip"] == "10.0.2.15"
            yield SimpleNamespace(vnet=vnet, guest=guest, ctl=ctl_path, pcap=pcap, metrics_port=metrics_port,
                                  workdir=wd, lease=lease)


def test_control_socket_is_private_and_announced(net):
    assert oct(os.stat(net.ctl).st_mode & 0o777) == "0o600"
    assert f"vnet: control socket {net.ctl}" in net.vnet.stdout.text
    assert f"vnet: metrics on http://127.0.0.1:{net.metrics_port}/metrics" in net.vnet.stdout.text


def test_info_network_has_qemu_shape(net):
    out = ctl(net, "info", "network").stdout
    lines = out.rstrip("\n").split("\n")
    assert re.fullmatch(r"n0: index=0,type=user,net=10\.0\.2\.0,restrict=off", lines[0]), out
    assert re.fullmatch(r" \\ guest0: index=0,type=stream,unix:\S+,connected,macaddr=52:54:00(:[0-9a-f]{2}){3}", lines[1]), out


def test_ports_leases_and_stats(net):
    ports = ctl(net, "ports").stdout
    m = re.search(r"^\s+RX packets (\d+)  bytes (\d+) ", ports, re.M)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > int(m.group(1)) * 42, ports
    assert re.search(r"^\s+TX packets [1-9]\d*  bytes [1-9]\d* ", ports, re.M), ports
    assert re.search(r"^\s+RX errors 0  dropped \d+$", ports, re.M), ports
    leases = ctl_json(net, "leases")
    assert [(l["address"], l["state"]) for l in leases] == [("10.0.2.15", "bound")], leases
    assert ctl(net, "leases").stdout.count("10.0.2.15") == 1
    stats = ctl_json(net, "stats")
    assert stats["served"]["dhcp_replies"] >= 2
    assert "martian_source" in stats["drops"] and "tx_queue_refused" in stats["drops"]
    assert "drops total" in ctl(net, "stats").stdout


def test_hostfwd_added_at_runtime_reaches_guest_and_is_refused_after_removal(net):
    g = net.guest
    port = rig.free_tcp_port()
    g.start_background("nc -l -p 8181", "nc-fwd")
    rig.wait_for(lambda: ":8181 " in g.check("netstat -ltn"), timeout=20, message="guest nc listening")
    added = ctl(net, "hostfwd_add", f"tcp:127.0.0.1:{port}-:8181").stdout
    assert f"hostfwd tcp 127.0.0.1:{port} -> 10.0.2.15:8181" in added
    assert any(f["host_port"] == port and f["guest_port"] == 8181 for f in ctl_json(net, "hostfwd_list"))
    usernet = ctl(net, "info", "usernet").stdout
    assert usernet.startswith("Hub -1 (n0):\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n")
    assert re.search(rf"^  TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+{port}\s+10\.0\.2\.15\s+8181\s+0\s+0$", usernet, re.M), usernet

    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        c.sendall(b"hello guest\n")
        g.wait_background("nc-fwd", r"^hello guest$", timeout=20)
        flows = ctl_json(net, "info", "usernet")["flows"]
        # nc's stdin is empty, so the guest may have closed its side already (CLOSE_WAIT from vnet's view).
        assert any(f["protocol"] == "tcp" and f.get("state") in ("ESTABLISHED", "CLOSE_WAIT") and f["guest_port"] == 8181
                   and f["host_address"] == "10.0.2.2" for f in flows), flows

    removed = ctl(net, "hostfwd_remove", f"tcp:127.0.0.1:{port}").stdout
    assert "removed hostfwd tcp" in removed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not any(f["host_port"] == port for f in ctl_json(net, "hostfwd_list"))
    r = ctl(net, "hostfwd_remove", f"tcp:127.0.0.1:{port}", check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"vnet: error: host forwarding rule for tcp:127.0.0.1:{port} not found"


def test_local_dns_records(net, host):
    g = net.guest
    assert g.check("dnsudp 10.0.2.3 upstream.test").strip() == "A 192.0.2.30"
    ctl(net, "dns", "add", "build.vnet.test", "192.0.2.55")
    ctl(net, "dns", "add", "build.vnet.test", "TXT", "hello")
    listed = ctl_json(net, "dns", "list")
    assert {(r["name"], r["type"], r["value"]) for r in listed} == {("build.vnet.test", "A", "192.0.2.55"),
                                                                    ("build.vnet.test", "TXT", "hello")}
    before = host.dns.query_count
    assert g.check("dnsudp 10.0.2.3 BUILD.vnet.test").strip() == "A 192.0.2.55"
    assert g.check("dnsudp -t TXT 10.0.2.3 build.vnet.test").strip() == 'TXT "hello"'
    assert host.dns.query_count == before, "local names must not reach the upstream"
    ctl(net, "dns", "remove", "build.vnet.test")
    assert ctl(net, "dns", "list").stdout.strip() == "(no local DNS records)"
    rc, out = g.run("dnsudp 10.0.2.3 build.vnet.test")
    assert out.strip() == "RCODE 3" and host.dns.query_count > before, out   # the upstream does not know it


def test_boot_pcap_shows_dhcp_ack_icmp_reply_and_http_200(net, host):
    g = net.guest
    rc, out = g.run("ping -c1 -W5 10.0.2.2")
    assert rc == 0, out
    assert g.check(f"wget -q -O - http://10.0.2.2:{host.http.port}/") == "hello through vnet\n"
    stopped = ctl_json(net, "pcap", "stop")
    assert stopped["file"] == str(net.pcap) and stopped["packets"] > 10
    port = host.http.port
    acks = tshark("-r", net.pcap, "-Y", "dhcp.option.dhcp == 5", "-T", "fields", "-e", "dhcp.ip.your")
    assert "10.0.2.15" in acks.split(), acks
    replies = tshark("-r", net.pcap, "-Y", "icmp.type == 0 && ip.src == 10.0.2.2", "-T", "fields", "-e", "ip.dst")
    assert "10.0.2.15" in replies.split(), replies
    http = tshark("-r", net.pcap, "-d", f"tcp.port=={port},http", "-Y", "http.response.code == 200",
                  "-T", "fields", "-e", "http.response.code")
    assert "200" in http.split(), http


def test_runtime_pcap_start_and_stop(net):
    path = net.workdir / "runtime.pcap"
    assert "capturing guest0 to" in ctl(net, "pcap", "start", path, "--port", "guest0").stdout
    rc, out = net.guest.run("ping -c2 -W5 10.0.2.3")
    assert rc == 0, out
    ctl(net, "pcap", "stop")
    replies = tshark("-r", path, "-Y", "icmp.type == 0", "-T", "fields", "-e", "ip.src")
    assert replies.split() == ["10.0.2.3", "10.0.2.3"], replies
    r = ctl(net, "pcap", "start", path, "--port", "guest7", check=False)
    assert r.returncode == 1 and r.stderr.startswith("vnet: error: no port 'guest7'")


def test_metrics_endpoint_scrape(net):
    try:
        from prometheus_client import parser as prom
    except ImportError:
        pytest.fail("prometheus_client missing: pip install prometheus-client (scripts/test does)", pytrace=False)
    with urllib.request.urlopen(f"http://127.0.0.1:{net.metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    families = {f.name: f for f in prom.text_string_to_metric_families(text)}
    def value(name, **labels):
        fam = families[name]
        for s in fam.samples:
            if all(s.labels.get(k) == v for k, v in labels.items()) and s.name.endswith(("_total", name)):
                return s.value
        raise AssertionError(f"{name} {labels} not in scrape:\n{text}")
    assert families["vnet_port_rx_packets"].type == "counter"
    assert value("vnet_port_rx_packets", port="guest0") > 0
    assert value("vnet_port_tx_bytes", port="guest0") > 0
    assert value("vnet_dhcp_leases") == 1
    assert value("vnet_flows_opened", protocol="tcp") >= 1
    assert value("vnet_drops", reason="martian_source") >= 0
    assert value("vnet_dns_queries") >= 1
    assert families["vnet_flows"].type == "gauge"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{net.metrics_port}/other", timeout=10)
    assert e.value.code == 404


def test_lease_event_reaches_subscriber(net):
    c = RawClient(net.ctl)
    try:
        c.send(b'{"execute": "events"}\n')
        assert c.line() == {"return": {}}
        net.guest.dhcp()
        e = c.line()
        assert e["event"] == "LEASE_GRANTED" and e["data"]["address"] == "10.0.2.15", e
        assert isinstance(e["timestamp"]["seconds"], int)
    finally:
        c.close()


def test_protocol_errors_over_the_real_socket(net):
    bad, good = RawClient(net.ctl), RawClient(net.ctl)
    try:
        bad.send(b'{"execute": "stats"\n')
        assert bad.line()["error"]["desc"].startswith("JSON parse error")
        bad.send(bytes(range(256)).replace(b"\n", b"") + b"\n")
        assert bad.line()["error"]["class"] == "GenericError"
        bad.send(b"x" * 200_000 + b"\n")
        assert "longer than" in bad.line()["error"]["desc"]
        good.send(b'{"execute": "query-commands", "id": "q1"}\n')
        r = good.line()
        assert r["id"] == "q1" and {"info-network", "hostfwd_add", "pcap-start", "stats"} <= {c["name"] for c in r["return"]}
        bad.send(b'{"execute": "leases"}\n')
        assert "return" in bad.line()
    finally:
        bad.close()
        good.close()


def test_ctl_bad_input_is_one_line_and_nonzero(net, workdir):
    r = ctl(net, "frobnicate", check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert re.fullmatch(r"vnet: error: The command frobnicate has not been found; known commands: .*info-network.*\n", r.stderr), r.stderr
    r = ctl(net, "hostfwd_add", "tcp:nonsense", check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("vnet: error: option 'hostfwd'"), r.stderr
    r = ctl(net, "dns", "frob", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("vnet: error:"), r.stderr
    r = subprocess.run([str(rig.vnet_binary()), "ctl", str(Path(workdir) / "absent.sock"), "stats"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith("vnet: error: cannot connect to") and r.stderr.count("\n") == 1, r.stderr


def connect_and_leave(mode: str, sock: Path, ctl_path: Path, log_dir) -> tuple[dict, dict]:
    """Runs `vnet MODE --socket SOCK --control CTL`, subscribes to events, connects a stream client (a QEMU as far
    as the port can tell) and closes it; returns the two events that came."""
    with rig.VnetProcess([mode, "--socket", sock, "--control", ctl_path], log_dir=log_dir):
        events = RawClient(ctl_path)
        try:
            events.send(b'{"execute": "events"}\n')
            assert events.line() == {"return": {}}
            qemu = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            qemu.connect(str(sock))
            connected = events.line()
            qemu.close()
            return connected, events.line()
        finally:
            events.close()


def test_port_events_when_a_qemu_connects_and_leaves(workdir, log_dir):
    """A second vnet (no guest): a stream client on its socket is a QEMU as far as the port can tell."""
    sock, ctl_path = Path(workdir) / "p.sock", Path(workdir) / "p.ctl"
    e, gone = connect_and_leave("user", sock, ctl_path, log_dir)
    assert (e["event"], e["data"]["port"], e["data"]["index"]) == ("PORT_CONNECTED", "guest0", 0), e
    assert e["data"]["peer"] == f"unix:{sock}" and e["data"]["reason"] == "accepted", e
    e = gone
    assert (e["event"], e["data"]["port"], e["data"]["reason"]) == ("PORT_DISCONNECTED", "guest0", "end of stream"), e


def test_port_events_have_one_shape_on_the_switch(workdir, log_dir):
    """`vnet switch` publishes the same PORT_CONNECTED/PORT_DISCONNECTED shape as `vnet user`: the port's name,
    its index, its peer and the reason."""
    sock, ctl_path = Path(workdir) / "sw.sock", Path(workdir) / "sw.ctl"
    e, gone = connect_and_leave("switch", sock, ctl_path, log_dir)
    assert e["event"] == "PORT_CONNECTED" and set(e["data"]) == {"port", "index", "peer", "reason"}, e
    assert e["data"]["port"] == f"port{e['data']['index']}" and e["data"]["peer"] == f"unix:{sock}", e
    index = e["data"]["index"]
    e = gone
    assert e["event"] == "PORT_DISCONNECTED" and set(e["data"]) == {"port", "index", "peer", "reason"}, e
    assert (e["data"]["index"], e["data"]["reason"]) == (index, "disconnected"), e
