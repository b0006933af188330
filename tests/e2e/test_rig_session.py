"""Self-tests of the guest command session and the guest-side helpers.

One NIC-less guest serves the module: these checks need no network backend,
only the guest's own loopback.
"""

from __future__ import annotations

import hashlib
import os

import pytest

import rig


@pytest.fixture(scope="module")
def guest(guest_image, module_workdir, module_log_dir):
    with rig.Guest(guest_image, [], nic=False, workdir=module_workdir, log_dir=module_log_dir,
                   name="session") as g:
        yield g


def test_output_and_exit_codes_are_exact(guest):
    assert guest.run("echo out; echo err >&2; exit 7") == (7, "out\nerr\n")
    assert guest.run("printf 'no newline'") == (0, "no newline")
    assert guest.run("true") == (0, "")
    multi = "for i in 1 2 3; do\n  echo \"line $i\"\ndone\n"
    assert guest.run(multi) == (0, "line 1\nline 2\nline 3\n")
    tricky = "echo 'single' \"double\" $((6*7)) \\\\ `echo tick` \u00e9\u4e2d"
    assert guest.run(tricky) == (0, "single double 42 \\ tick \u00e9\u4e2d\n")


def test_long_command(guest):
    payload = "x" * 20000
    assert guest.run(f"v='{payload}'; echo ${{#v}}") == (0, "20000\n")


def test_commands_do_not_read_the_console(guest):
    # stdin is /dev/null: `cat` ends at once instead of eating later commands.
    assert guest.run("cat; echo after") == (0, "after\n")
    assert guest.run("echo still here") == (0, "still here\n")


def test_timeout_kills_the_process_group_and_session_survives(guest):
    rc, out = guest.run("sleep 300 & echo started; sleep 200; echo never", timeout=2)
    assert rc == 137 and out.startswith("started\n") and "never" not in out
    assert guest.run("ps -o args | grep -c '^sleep [23]00$'") == (1, "0\n")
    assert guest.run("echo alive") == (0, "alive\n")


def test_background_jobs_survive_their_command(guest):
    pid = guest.start_background("echo begun; sleep 300", "bgjob")
    guest.wait_background("bgjob", r"^begun$", timeout=10)
    assert guest.run(f"kill -0 {pid}").rc == 0
    guest.check(f"kill {pid}")


def test_write_file_roundtrip(guest):
    data = os.urandom(10000)
    guest.write_file("/tmp/blob/data.bin", data)
    assert guest.check("md5sum /tmp/blob/data.bin").split()[0] == hashlib.md5(data).hexdigest()


def test_helpers_report_usage_errors(guest):
    for cmd in ("udpping", "udpping 10.0.0.1 0 x", "udpping nothost 53 x", "udpecho",
                "dnsudp 127.0.0.1", "dnstcp -t BOGUS 127.0.0.1 x", "dnsudp 127.0.0.1 a..b"):
        rc, out = guest.run(cmd)
        assert rc == 64 and "usage:" in out, (cmd, rc, out)


def test_udp_helpers_on_guest_loopback(guest):
    guest.start_background("udpecho 5555 1", "loecho")
    guest.wait_background("loecho", r"^LISTENING 5555$", timeout=10)
    assert guest.run("udpping 127.0.0.1 5555 'hi there'") == (0, "REPLY hi there\n")
    guest.wait_background("loecho", r"^ECHO from=127\.0\.0\.1 port=\d+ len=8$", timeout=10)
    # Nothing listens on 9: the kernel's ICMP port unreachable -> REFUSED.
    assert guest.run("udpping 127.0.0.1 9 x 3000") == (2, "REFUSED\n")
    assert guest.run("udpping ::1 9 x 3000") == (2, "REFUSED\n")
    assert guest.run("dnsudp -w 3000 127.0.0.1 x.test") == (2, "REFUSED\n")
    assert guest.run("dnstcp -w 3000 127.0.0.1 x.test") == (2, "REFUSED\n")
    # No route at all (no NIC): UNREACHABLE, not a hang.
    rc, out = guest.run("udpping 192.0.2.1 9 x 3000")
    assert rc == 4 and out.startswith("UNREACHABLE"), out


def test_image_contents(guest):
    assert guest.kernel_release and guest.kernel_release.endswith("-cloud-amd64")
    assert guest.check("iperf3 --version").startswith("iperf 3")
    mods = guest.check("ls /lib/modules").split()
    for m in ("virtio_net.ko", "8021q.ko", "garp.ko", "mrp.ko", "stp.ko", "llc.ko", "tun.ko"):
        assert m in mods
    assert "virtio_net" in guest.check("lsmod")
    assert guest.run("test -L /bin/sh && test ! -L /bin/busybox").rc == 0


def test_qemu_start_failure_is_reported(guest_image, workdir):
    g = rig.Guest(guest_image, ["-netdev", "nosuchbackend,id=n0"], workdir=workdir, name="bad")
    with pytest.raises(rig.RigError, match=r"(?s)EOF.*exited with 1.*nosuchbackend"):
        g.start()
    assert not g.alive
