"""`vnet user` over every QEMU transport: TCP stream, `-netdev socket,connect=`, unix and UDP dgram, vnet
connecting to a listening QEMU (and reconnecting after a vnet restart), a second QEMU after the first one
disconnects, the default socket, and an unprivileged vnet. Each guest gets a lease, pings the gateway and
does a UDP round trip to a host echo server on loopback.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
from pathlib import Path

import pytest

import rig


@pytest.fixture(scope="module")
def udp_echo_module():
    with rig.UdpEchoServer() as udp:
        yield udp


def basic_checks(guest: rig.Guest, udp: rig.UdpEchoServer, expect_ip: str = "10.0.2.15") -> None:
    lease = guest.dhcp()
    assert (lease["ip"], lease["router"], lease["dns"]) == (expect_ip, "10.0.2.2", "10.0.2.3"), lease
    rc, out = guest.run("ping -c1 -W5 10.0.2.2")
    assert rc == 0 and "1 packets received" in out, out
    rc, out = guest.run(f"udpping 10.0.2.2 {udp.port} over-the-wire")
    assert (rc, out) == (0, "REPLY over-the-wire\n")


def test_tcp_stream_then_socket_connect_on_the_same_vnet(guest_image, workdir, log_dir, udp_echo_module):
    port = rig.free_tcp_port()
    with rig.VnetProcess(["user", "--listen", f"127.0.0.1:{port}", "--log-level", "info"], log_dir=log_dir) as vnet:
        assert f"vnet: guest port: tcp:127.0.0.1:{port}" in vnet.stdout.text
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="stream") as g:
            basic_checks(g, udp_echo_module)
        # The first QEMU is gone: vnet forgets it and serves the next one (a different MAC gets the next address).
        vnet.wait_for_line(r"QEMU disconnected", stream="stderr", timeout=15)
        netdev = ["-netdev", f"socket,id=n0,connect=127.0.0.1:{port}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="socket", mac="52:54:00:12:34:57") as g:
            basic_checks(g, udp_echo_module, expect_ip="10.0.2.16")


def test_unix_dgram_learns_qemu_address(guest_image, workdir, log_dir, udp_echo_module):
    ours, theirs = Path(workdir) / "vnet.dgram", Path(workdir) / "qemu.dgram"
    with rig.VnetProcess(["user", "--dgram", ours], log_dir=log_dir):
        netdev = ["-netdev", f"dgram,id=n0,local.type=unix,local.path={theirs},remote.type=unix,remote.path={ours}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="dgram") as g:
            basic_checks(g, udp_echo_module)


def test_udp_dgram_with_fixed_peer(guest_image, workdir, log_dir, udp_echo_module):
    ours, theirs = rig.free_udp_port(), rig.free_udp_port()
    with rig.VnetProcess(["user", "--dgram", f"127.0.0.1:{ours}", "--dgram-peer", f"127.0.0.1:{theirs}"], log_dir=log_dir):
        netdev = ["-netdev", f"dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={theirs},"
                             f"remote.type=inet,remote.host=127.0.0.1,remote.port={ours}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="udpdgram") as g:
            basic_checks(g, udp_echo_module)


def test_connect_to_listening_qemu_and_reconnect_after_restart(guest_image, workdir, log_dir, udp_echo_module):
    path = Path(workdir) / "qemu.sock"
    netdev = ["-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={path}"]
    with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="server") as g:
        rig.wait_for(path.exists, 10, message="QEMU's listening socket")
        with rig.VnetProcess(["user", "--connect", f"unix:{path}", "--log-level", "info"], log_dir=log_dir, name="vnet1") as v1:
            v1.wait_for_line(r"connected to QEMU", stream="stderr")
            basic_checks(g, udp_echo_module)
        # vnet restarts; QEMU (the server) keeps its NIC, and the new vnet reconnects to it.
        with rig.VnetProcess(["user", "--connect", f"unix:{path}", "--log-level", "info"], log_dir=log_dir, name="vnet2") as v2:
            v2.wait_for_line(r"connected to QEMU", stream="stderr", timeout=15)
            basic_checks(g, udp_echo_module)


def test_default_socket_prints_qemu_arguments(guest_image, workdir, log_dir, udp_echo_module):
    runtime = Path(workdir) / "xdg"
    runtime.mkdir(mode=0o700)
    with rig.VnetProcess(["user", "id=net7"], log_dir=log_dir, env={"XDG_RUNTIME_DIR": str(runtime)}) as vnet:
        m = re.search(r"start QEMU with: (-netdev \S+) (-device \S+)", vnet.stdout.text)
        assert m, vnet.stdout.text
        sock = runtime / "vnet" / "net7.sock"
        assert m.group(1) == f"-netdev stream,id=net7,server=off,addr.type=unix,addr.path={sock}"
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        with rig.Guest(guest_image, m.group(1).split(" ", 1), workdir=workdir, log_dir=log_dir, netdev_id="net7", name="default") as g:
            basic_checks(g, udp_echo_module)
    assert not sock.exists(), "vnet removes its socket when it stops"


def test_unprivileged_vnet(guest_image, workdir, log_dir, udp_echo_module):
    if os.getuid() != 0:
        pytest.skip("already unprivileged: every other test proves it")
    nobody = pwd.getpwnam("nobody")
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop privileges"
    home = Path(workdir) / "unpriv"
    home.mkdir()
    os.chmod(workdir, 0o711)
    binary = home / "vnet"
    shutil.copy2(rig.vnet_binary(), binary)
    os.chmod(binary, 0o755)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    sock = home / "vnet.sock"
    args = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--", str(binary),
            "user", "--socket", str(sock)]
    with rig.VnetProcess(args, log_dir=log_dir, binary=setpriv) as vnet:
        assert os.stat(sock).st_uid == nobody.pw_uid
        with open(f"/proc/{vnet.pid}/status") as f:
            uids = re.search(r"^Uid:\s+(.*)$", f.read(), re.M).group(1).split()
        assert set(uids) == {str(nobody.pw_uid)}, uids
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=workdir, log_dir=log_dir, name="unpriv") as g:
            basic_checks(g, udp_echo_module)
