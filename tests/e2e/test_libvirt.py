"""libvirt domains on `vnet nat`, with what Debian's libvirt 9.0 has today.

`vnet nat --listen 127.0.0.1:P --dgram 127.0.0.1:Q --libvirt` prints the <interface> elements; the test puts
them, as printed, into two transient domains (TCG, direct kernel boot of the project's guest rig): one
`type='client'` (QEMU's `-netdev socket,connect=`), one `type='udp'` (`-netdev socket,udp=…,localaddr=…`).
Both get leases, reach each other, and reach a server on host loopback through the gateway. The guests' console
is a unix-socket serial port the test drives with the rig's session protocol.

libvirtd runs as root, set up as on a machine without systemd (the `libvirt-qemu` user, a `kvm` group,
`user = "root"` in qemu.conf, `virtlogd -d`, `libvirtd -d`); a libvirtd that was already running is used and
left alone. Nothing leaves loopback.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
URI = "qemu:///system"


def sh(*args, check=True, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: apt-get install {package} (scripts/test installs it)", pytrace=False)
    return path


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def libvirtd():
    if os.geteuid() != 0:
        pytest.skip("the system libvirtd needs root")
    need("virsh", "libvirt-clients")
    need("libvirtd", "libvirt-daemon")
    need("virtlogd", "libvirt-daemon")
    if sh("getent", "passwd", "libvirt-qemu", check=False).returncode != 0:
        sh("useradd", "-r", "libvirt-qemu")
    if sh("getent", "group", "kvm", check=False).returncode != 0:
        sh("groupadd", "-r", "kvm")
    for d in ("/var/log/libvirt", "/var/run/libvirt", "/var/lib/libvirt/qemu"):
        os.makedirs(d, exist_ok=True)
    original_conf = QEMU_CONF.read_text() if QEMU_CONF.exists() else None
    conf = original_conf or ""
    if not re.search(r'^user\s*=\s*"root"', conf, re.M) or not re.search(r'^group\s*=\s*"root"', conf, re.M):
        QEMU_CONF.write_text(conf + '\nuser = "root"\ngroup = "root"\n')
    started = []
    try:
        if pid_alive(Path("/run/virtlogd.pid")) is None:
            sh("virtlogd", "-d")
            started.append(Path("/run/virtlogd.pid"))
        if pid_alive(Path("/run/libvirtd.pid")) is None:
            sh("libvirtd", "-d")
            started.append(Path("/run/libvirtd.pid"))
        rig.wait_for(lambda: sh("virsh", "-c", URI, "version", check=False).returncode == 0, timeout=30,
                     message="libvirtd answering")
        yield
    finally:
        for pidfile in reversed(started):
            pid = pid_alive(pidfile)
            if pid:
                os.kill(pid, signal.SIGTERM)
                rig.wait_for(lambda: pid_alive(pidfile) != pid, timeout=15, message=f"{pidfile} stopping")
        if original_conf is None:
            QEMU_CONF.unlink(missing_ok=True)
        else:
            QEMU_CONF.write_text(original_conf)


class SerialSession:
    """The rig's console session over a domain's unix-socket serial port."""

    def __init__(self, path: Path, log: Path, name: str):
        self.name = name
        self.sock = rig.wait_for(lambda: self._connect(path), timeout=30, message=f"{name}'s serial socket")
        self.console = rig.OutputCollector(self.sock, log, f"{name} console")
        self.console.wait_for(r"__VNET_READY__ kernel=(\S+)\n", 120)

    @staticmethod
    def _connect(path: Path):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(path))
            return s
        except OSError:
            s.close()
            return None

    def run(self, command: str, timeout: float = 30.0) -> rig.CommandResult:
        cid = secrets.token_hex(6)
        start = len(self.console)
        limit = max(1, int(timeout + 0.999))
        self.sock.sendall(f"__VNET_CMD {cid} {limit} {base64.b64encode(command.encode()).decode()}\n".encode())
        begin = self.console.wait_for(rf"__VNET_BEGIN_{cid}\n", limit + 30, start)
        done = self.console.wait_for(rf"__VNET_DONE_{cid} rc=(\d+)\n", limit + 30, begin.end())
        return rig.CommandResult(int(done.group(1)), self.console.text[begin.end():done.start()])

    def check(self, command: str, timeout: float = 30.0) -> str:
        r = self.run(command, timeout)
        assert r.rc == 0, f"{self.name}: {command!r} failed with rc={r.rc}:\n{r.output}"
        return r.output

    def dhcp(self) -> dict[str, str]:
        out = self.check("udhcpc -i eth0 -q -n -f -t 5 -T 2 -s /etc/udhcpc.sh")
        return rig.parse_lease(re.search(r"^LEASE (.*)$", out, re.M).group(1))

    def close(self):
        # shutdown wakes the collector's read; the domain is destroyed by then.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.console.join()
        self.sock.close()


def interfaces(stdout: str) -> list[str]:
    """The <interface> elements vnet printed after its `vnet: libvirt:` line."""
    text = stdout[stdout.index("vnet: libvirt:"):]
    return re.findall(r"^<interface .*?^</interface>$", text, re.M | re.S)


def domain_xml(name: str, image: rig.GuestImage, serial: Path, interface: str, mac: str) -> str:
    interface = interface.replace(">", f">\n  <mac address='{mac}'/>", 1)
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image.vmlinuz}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 no_timer_check</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>{shutil.which('qemu-system-x86_64')}</emulator>
    <serial type='unix'><source mode='bind' path='{serial}'/><target port='0'/></serial>
    {interface}
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def domains(libvirtd, guest_image, module_workdir, module_log_dir):
    wd = Path(module_workdir)
    listen, dgram = rig.free_tcp_port(), rig.free_udp_port()
    with rig.DnsServer() as dns:
        args = ["nat", "--name", f"lv{os.getpid()}", "--listen", f"127.0.0.1:{listen}", "--dgram", f"127.0.0.1:{dgram}",
                "--libvirt", "--leases-file", wd / "leases.json", "--dns-upstream", f"127.0.0.1:{dns.port}"]
        with rig.VnetProcess(args, log_dir=module_log_dir) as vnet:
            printed = interfaces(vnet.stdout.text)
            assert [re.search(r"type='(\w+)'", x).group(1) for x in printed] == ["client", "udp"], vnet.stdout.text
            made, sessions = [], []
            try:
                for k, (kind, xml) in enumerate(zip(("client", "udp"), printed)):
                    name = f"vnet-e2e-{os.getpid()}-{kind}"
                    serial = wd / f"{kind}.serial"
                    path = wd / f"{kind}.xml"
                    path.write_text(domain_xml(name, guest_image, serial, xml, f"52:54:00:76:6e:{k + 1:02x}"))
                    r = sh("virsh", "-c", URI, "create", path, check=False)
                    assert r.returncode == 0, r.stderr
                    made.append(name)
                    sessions.append(SerialSession(serial, module_log_dir / f"{kind}.serial.log", kind))
                yield SimpleNamespace(vnet=vnet, client=sessions[0], udp=sessions[1], printed=printed)
            finally:
                for name in made:
                    sh("virsh", "-c", URI, "destroy", name, check=False)
                for s in sessions:
                    s.close()


def test_libvirt_client_and_udp_domains_get_leases_and_reach_each_other_and_the_host(domains):
    a, b = domains.client.dhcp(), domains.udp.dhcp()
    assert a["router"] == b["router"] == "192.168.122.1"
    assert a["ip"] != b["ip"] and a["ip"].startswith("192.168.122.") and b["ip"].startswith("192.168.122.")
    assert "PING" in domains.client.check(f"ping -c 2 -W 5 {b['ip']}")
    assert "PING" in domains.udp.check(f"ping -c 2 -W 5 {a['ip']}")
    token = f"host-loopback-{os.getpid()}"
    with rig.HttpServer({"/": token.encode()}) as http:
        for s in (domains.client, domains.udp):
            assert s.check(f"wget -q -O - http://192.168.122.1:{http.port}/").strip() == token
        assert len(http.requests) == 2
