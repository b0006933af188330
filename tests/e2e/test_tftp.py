"""TFTP and network-boot DHCP fields (`tftp=DIR,bootfile=NAME,tftp-server-name=NAME`) against a real QEMU
guest: busybox's tftp client fetches files larger than 64 KiB with the default 512-byte blocks and with
`-b 1400` (blksize, RFC 2348), the bytes match by SHA-256, and traversal out of the root is refused. The
guest's udhcpc sees siaddr, the file field and options 66/67. And a guest with no -kernel network-boots through
QEMU's iPXE ROM: an iPXE script, the kernel and the initrd all come over vnet's TFTP.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import rig


@pytest.fixture(scope="module")
def tftp_guest(guest_image, module_workdir, module_log_dir):
    base = Path(module_workdir)
    root = base / "tftproot"
    (root / "sub").mkdir(parents=True)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret, never served\n")
    files = {
        "big.bin": os.urandom(100 * 1024 + 17),   # > 64 KiB, not a multiple of either block size
        "exact.bin": os.urandom(1400 * 50),       # a multiple of 1400: ends with an empty block
        "sub/inner.bin": os.urandom(5000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "link-in").symlink_to("sub/inner.bin")
    (root / "link-out").symlink_to("../outside/secret")
    (root / "abs-out").symlink_to(outside / "secret")
    sock = base / "vnet.sock"
    opts = f"user,tftp={root},bootfile=big.bin,tftp-server-name=10.0.2.2"
    with rig.VnetProcess(["user", opts, "--socket", sock], log_dir=module_log_dir) as vnet:
        netdev = ["-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"]
        with rig.Guest(guest_image, netdev, workdir=module_workdir, log_dir=module_log_dir, name="guest") as g:
            g.write_file("/tmp/boot.sh", '#!/bin/sh\n/etc/udhcpc.sh "$@"\n'
                         'echo "BOOT siaddr=$siaddr boot_file=$boot_file tftp=$tftp bootfile=$bootfile"\n', mode="755")
            out = g.check("udhcpc -i eth0 -q -n -f -t 5 -T 2 -O tftp -O bootfile -s /tmp/boot.sh", timeout=30)
            yield SimpleNamespace(guest=g, vnet=vnet, files=files, dhcp=out)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(g, name: str, block: int | None = None, local: str = "/tmp/got") -> tuple[int, str]:
    g.run(f"rm -f {local}")
    b = f"-b {block} " if block else ""
    return g.run(f"tftp -g {b}-r {name} -l {local} 10.0.2.2", timeout=60)


def test_dhcp_carries_boot_fields(tftp_guest):
    # The script runs for "deconfig" first (no lease yet); the last line is the bound lease.
    lines = re.findall(r"^BOOT (.*)$", tftp_guest.dhcp, re.M)
    assert lines, tftp_guest.dhcp
    facts = dict(kv.split("=", 1) for kv in lines[-1].split())
    assert facts["siaddr"] == "10.0.2.2"
    assert facts["boot_file"] == "big.bin"
    assert facts["bootfile"] == "big.bin"
    assert facts["tftp"] == "10.0.2.2"
    assert "tftp 10.0.2.2:69 serves" in tftp_guest.vnet.stdout.text


@pytest.mark.parametrize("name,block", [("big.bin", None), ("big.bin", 1400), ("exact.bin", 1400),
                                        ("sub/inner.bin", None), ("link-in", 512)])
def test_fetch_matches_sha256(tftp_guest, name, block):
    g = tftp_guest.guest
    rc, out = fetch(g, name, block)
    assert rc == 0, out
    want = tftp_guest.files["sub/inner.bin" if name == "link-in" else name]
    got = g.check("sha256sum /tmp/got").split()[0]
    assert got == sha256(want), (name, block)


@pytest.mark.parametrize("name", ["../outside/secret", "/etc/passwd", "link-out", "abs-out", "sub/../../outside/secret",
                                  "a\\\\b", "missing"])
def test_traversal_and_missing_are_refused(tftp_guest, name):
    g = tftp_guest.guest
    rc, out = fetch(g, name, local="/tmp/refused")
    assert rc != 0, out
    assert "error" in out.lower() or "not found" in out.lower() or "violation" in out.lower(), out
    rc, contents = g.run("cat /tmp/refused 2>/dev/null")
    assert "secret" not in contents and "root:" not in contents


PXE_ROM = Path("/usr/lib/ipxe/qemu/pxe-virtio.rom")


def test_network_boot_with_ipxe(guest_image, workdir, log_dir):
    """QEMU's own iPXE ROM, no -kernel: DHCP gives bootfile=boot.ipxe, iPXE runs the script, fetches the rig's
    kernel and initrd over TFTP and boots them to the ready marker.

    Debian's ipxe-qemu builds pxe-virtio.rom for the modern virtio-net ID (1af4:1041), and SeaBIOS runs a PCI
    ROM only when its IDs match the device, so the NIC is modern-only (disable-legacy=on)."""
    if not PXE_ROM.exists():
        pytest.skip(f"{PXE_ROM} missing (apt-get install ipxe-qemu)")
    root = Path(workdir) / "netboot"
    root.mkdir()
    # Copies, not symlinks: links that lead out of the root are refused by design.
    (root / "vmlinuz").write_bytes(Path(guest_image.vmlinuz).read_bytes())
    (root / "initrd.gz").write_bytes(Path(guest_image.initrd).read_bytes())
    (root / "boot.ipxe").write_text("#!ipxe\n"
                                    "kernel tftp://10.0.2.2/vmlinuz console=ttyS0 quiet panic=-1 no_timer_check\n"
                                    "initrd tftp://10.0.2.2/initrd.gz\n"
                                    "boot\n")
    sock = Path(workdir) / "vnet.sock"
    serial_log = Path(log_dir) / "netboot.serial.log"
    with rig.VnetProcess(["user", f"user,tftp={root},bootfile=boot.ipxe", "--socket", sock], log_dir=log_dir):
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={sock}",
                "-device", f"virtio-net-pci,netdev=n0,mac={rig.DEFAULT_MAC},romfile={PXE_ROM},disable-legacy=on",
                "-boot", "n"]
        with open(Path(log_dir) / "netboot.qemu-stderr.log", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    cwd=workdir, preexec_fn=rig._die_with_parent)
        rig._track(proc.pid)
        try:
            console = rig.OutputCollector(proc.stdout, serial_log, "netboot console")
            console.wait_for(r"__VNET_READY__ kernel=(\S+)\n", 120)
        finally:
            rig._kill_process(proc)
