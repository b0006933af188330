"""`vnet run -- qemu-system-x86_64 …`: one command starts the network, QEMU on it, and tears both down.

The rig's own QEMU command line (without its NIC) is handed to `vnet run`, which appends -netdev/-device; the
guest gets a lease and reaches a loopback HTTP server; when the guest powers off, vnet exits with QEMU's
status and its socket folder is gone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import rig


def test_vnet_run_boots_guest_with_network_and_cleans_up(guest_image, workdir, log_dir):
    with rig.HttpServer({"/": b"hello from the host\n"}) as http:
        g = rig.Guest(guest_image, nic=False, workdir=workdir, log_dir=log_dir, name="guest")
        g.argv = [str(rig.vnet_binary()), "run", "user,id=r0", "--log-level", "info", "--", *g.argv]
        with g:
            lease = g.dhcp()
            assert (lease["ip"], lease["router"], lease["dns"]) == ("10.0.2.15", "10.0.2.2", "10.0.2.3"), lease
            assert g.check(f"wget -q -O - http://10.0.2.2:{http.port}/") == "hello from the host\n"
            stderr = Path(g.stderr_log).read_text()
            m = re.search(r"with -netdev stream,id=r0 on (\S+)", stderr)
            assert m, stderr
            sock = Path(m.group(1))
            assert sock.exists()
            proc = g._proc
        # The guest powered off: QEMU exited 0, vnet followed with the same status and removed its socket.
        assert proc.wait(timeout=20) == 0
        assert not sock.exists() and not sock.parent.exists()
        assert "exited with status 0; network torn down" in Path(g.stderr_log).read_text()


def test_vnet_run_without_a_command_or_with_a_transport_is_refused():
    r = subprocess.run([str(rig.vnet_binary()), "run"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("vnet: error: missing QEMU command") and r.stderr.count("\n") == 1
    r = subprocess.run([str(rig.vnet_binary()), "run", "--socket", "/tmp/x.sock", "--", "true"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "chooses the transport itself" in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run([str(rig.vnet_binary()), "run", "--", "/nonexistent/qemu"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip().endswith("cannot start /nonexistent/qemu: No such file or directory"), r.stderr
