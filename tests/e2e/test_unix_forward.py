"""hostfwd with a unix-socket host end (`hostfwd=unix:PATH-:PORT`), with a real QEMU guest (TCG).

A host client that connects to PATH reaches the guest's TCP port: given on the command line, and added and
removed at run time through `vnet ctl`. The guest runs an echo server (busybox `nc -ll -e cat`), so the bytes are
checked both ways. The socket is 0600 unless `mode=` says otherwise, it is removed with its forward and when vnet
stops, and a path that exists and is not a socket is refused. Nothing leaves loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

SIZE = 1 << 20


def ctl(net, *words, check=True, json_out=False):
    args = [str(rig.vnet_binary()), "ctl", str(net.ctl), *[str(w) for w in words]] + (["--json"] if json_out else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"vnet ctl {' '.join(map(str, words))}: rc={r.returncode}\n{r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def net(guest_image, module_workdir, module_log_dir):
    wd = Path(module_workdir)
    sock, ctl_path, cmd_sock = wd / "vnet.sock", wd / "ctl.sock", wd / "cmd.sock"
    dns_port = rig.free_udp_port()   # nothing answers there: DNS stays on loopback
    args = ["user", f"user,id=n0,hostfwd=unix:{cmd_sock}-:2375", "--socket", sock, "--control", ctl_path,
            "--dns-upstream", f"127.0.0.1:{dns_port}", "--log-level", "info"]
    vnet = rig.VnetProcess(args, log_dir=module_log_dir).start()
    try:
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as guest:
            assert guest.dhcp()["ip"] == "10.0.2.15"
            for port in (2375, 2376):
                guest.start_background(f"nc -ll -p {port} -e cat", f"echo{port}")
            rig.wait_for(lambda: ":2375 " in guest.check("netstat -ltn") and ":2376 " in guest.check("netstat -ltn"),
                         timeout=20, message="guest echo servers listening")
            yield SimpleNamespace(vnet=vnet, guest=guest, ctl=ctl_path, workdir=wd, cmd_sock=cmd_sock)
    finally:
        vnet.stop()
    # vnet removed the socket of its command-line forward on the way out.
    assert not cmd_sock.exists()


def echo_through(path: Path, size: int = SIZE) -> None:
    """Sends `size` pattern bytes through the unix socket and checks the guest's echo, byte for byte."""
    data = rig.HttpServer.pattern_bytes(size)
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(60)
        c.connect(str(path))
        sender = threading.Thread(target=lambda: (c.sendall(data), c.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < size:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join(timeout=60)
    assert len(got) == size and hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), f"{len(got)} bytes back"


def test_command_line_unix_forward_is_private_and_carries_bytes_both_ways(net):
    st = os.stat(net.cmd_sock)
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o600
    assert f"vnet: hostfwd tcp unix:{net.cmd_sock} -> 10.0.2.15:2375" in net.vnet.stdout.text
    echo_through(net.cmd_sock)
    listed = json.loads(ctl(net, "hostfwd_list", json_out=True).stdout)["return"]
    assert [f["unix_path"] for f in listed if "unix_path" in f] == [str(net.cmd_sock)]


def test_unix_forward_added_and_removed_at_run_time(net):
    path = net.workdir / "runtime.sock"
    out = ctl(net, "hostfwd_add", f"unix:{path}-:2376", "mode=0660").stdout
    assert f"hostfwd tcp unix:{path} -> 10.0.2.15:2376" in out
    assert os.stat(path).st_mode & 0o777 == 0o660
    echo_through(path, 256 << 10)
    # The guest sees the client come from the gateway.
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
        c.sendall(b"ping\n")
        c.settimeout(20)
        assert c.recv(16) == b"ping\n"
        conns = net.guest.check("netstat -tn")
        assert any(":2376 " in l and "10.0.2.2:" in l for l in conns.splitlines()), conns
    r = ctl(net, "hostfwd_add", f"unix:{path}-:2376", check=False)
    assert r.returncode == 1 and "already forwarded" in r.stderr
    assert "removed hostfwd" in ctl(net, "hostfwd_remove", f"unix:{path}").stdout
    assert not path.exists()
    with pytest.raises(OSError):
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))


def test_a_path_that_is_not_a_socket_is_refused(net, log_dir):
    plain = net.workdir / "plain-file"
    plain.write_text("keep me")
    r = ctl(net, "hostfwd_add", f"unix:{plain}-:2376", check=False)
    assert r.returncode == 1 and "not a socket" in r.stderr, r.stderr
    assert plain.read_text() == "keep me"
    # The same on the command line: one error line, exit status 1, the file untouched.
    r = subprocess.run([str(rig.vnet_binary()), "user", f"hostfwd=unix:{plain}-:22", "--socket", net.workdir / "other.sock"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith("vnet: error: ") and "not a socket" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    assert plain.read_text() == "keep me"
    r = subprocess.run([str(rig.vnet_binary()), "user", "hostfwd=unix:relative.sock-:22"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "absolute" in r.stderr


def test_nat_port_map_with_unix_host_end(guest_image, workdir, log_dir):
    """`vnet nat --port-map unix:PATH-VM:PORT`: the same for a VM of the NAT network."""
    wd = Path(workdir)
    sock, path = wd / "nat.sock", wd / "docker.sock"
    args = ["nat", "--name", "unixmap", "--socket", sock, "--leases-file", wd / "leases.json",
            "--dns-upstream", f"127.0.0.1:{rig.free_udp_port()}", "--port-map", f"unix:{path}-192.168.122.2:2375"]
    with rig.VnetProcess(args, log_dir=log_dir) as vnet:
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert f"unix:{path} -> 192.168.122.2:2375" in vnet.stdout.text
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=wd, log_dir=log_dir, name="natguest") as g:
            assert g.dhcp()["ip"] == "192.168.122.2"
            g.start_background("nc -ll -p 2375 -e cat", "echo2375")
            rig.wait_for(lambda: ":2375 " in g.check("netstat -ltn"), timeout=20, message="guest echo server listening")
            echo_through(path, 256 << 10)
        vnet.stop()
    assert not path.exists()
