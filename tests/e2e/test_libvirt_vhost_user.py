"""libvirt 9.0 domains on `vnet nat --vhost-user`: libvirt as a real vhost-user client.

Two transient TCG domains (direct kernel boot of the guest rig), each with
`<interface type='vhostuser'><source type='unix' path=… mode='client'/>` on a `--vhost-user` port of one
`vnet nat`, and the guest RAM in a shared memfd (`<memoryBacking><source type='memfd'/><access
mode='shared'/></memoryBacking>`), which vhost-user needs. libvirt's interface XML has no `vectors`; QEMU 7.2
without KVM needs `vectors=0` with vhost-user (it crashes in vhost_net_start -> msix_set_vector_notifiers with
MSI-X), so `<qemu:override>` sets it on the device by its user alias. Both get leases, ping each other, and
reach a server on host loopback through the gateway. libvirtd is set up as in test_libvirt.py (the same fixture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig
from test_libvirt import URI, SerialSession, libvirtd, sh  # noqa: F401 (libvirtd is a fixture)


def vhost_domain_xml(name: str, image: rig.GuestImage, serial: Path, socket_path: Path, mac: str) -> str:
    """The domain as a user writes it (README's libvirt section shows the same elements)."""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
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
    <interface type='vhostuser'>
      <mac address='{mac}'/>
      <source type='unix' path='{socket_path}' mode='client'/>
      <model type='virtio'/>
      <alias name='ua-vnet0'/>
    </interface>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-vnet0'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


@pytest.fixture(scope="module")
def domains(libvirtd, guest_image, module_workdir, module_log_dir):
    wd = Path(module_workdir)
    socks = [wd / "lv-a.vhost", wd / "lv-b.vhost"]
    with rig.DnsServer() as dns:
        args = ["nat", "--name", f"lvv{os.getpid()}", "--vhost-user", socks[0], "--vhost-user", socks[1],
                "--dns-upstream", f"127.0.0.1:{dns.port}"]
        with rig.VnetProcess(args, log_dir=module_log_dir, name="vnet-nat-vhost") as vnet:
            vnet.wait_for_line(r"^vnet: ready$", timeout=10)
            made, sessions = [], []
            try:
                for k, sock in enumerate(socks):
                    name = f"vnet-e2e-{os.getpid()}-vhost{k}"
                    serial = wd / f"vhost{k}.serial"
                    path = wd / f"vhost{k}.xml"
                    path.write_text(vhost_domain_xml(name, guest_image, serial, sock, f"52:54:00:76:76:{k + 1:02x}"))
                    r = sh("virsh", "-c", URI, "create", path, check=False)
                    assert r.returncode == 0, r.stderr
                    made.append(name)
                    # At once: the console socket drops what the guest prints before someone is connected.
                    sessions.append(SerialSession(serial, module_log_dir / f"vhost{k}.serial.log", name))
                yield SimpleNamespace(vnet=vnet, a=sessions[0], b=sessions[1], names=made)
            finally:
                for name in made:
                    sh("virsh", "-c", URI, "destroy", name, check=False)
                for s in sessions:
                    s.close()


def test_libvirt_vhost_user_domains_get_leases_and_reach_each_other_and_the_host(domains):
    a, b = domains.a.dhcp(), domains.b.dhcp()
    assert a["router"] == b["router"] == "192.168.122.1"
    assert a["ip"] != b["ip"] and a["ip"].startswith("192.168.122.") and b["ip"].startswith("192.168.122.")
    assert "2 packets received" in domains.a.check(f"ping -c 2 -W 5 {b['ip']}")
    assert "2 packets received" in domains.b.check(f"ping -c 2 -W 5 {a['ip']}")
    token = f"host-loopback-{os.getpid()}"
    with rig.HttpServer({"/": token.encode()}) as http:
        for s in (domains.a, domains.b):
            assert s.check(f"wget -q -O - http://192.168.122.1:{http.port}/").strip() == token
    # libvirt's QEMU really runs vhost-user, with vectors=0 (the override) and its RAM in a shared memfd.
    for name in domains.names:
        cmdline = Path(f"/var/log/libvirt/qemu/{name}.log").read_text()
        assert '"vhost-user"' in cmdline and '"vectors":0' in cmdline, cmdline
        assert '"memory-backend-memfd"' in cmdline and '"share":true' in cmdline, cmdline
    c = rig.read_counters(domains.vnet)
    assert c.get("port0_vhost_ring_errors", 0) == 0 and c.get("port1_vhost_ring_errors", 0) == 0, c
