"""The vnet command line: bad input gets one clear line on stderr and a non-zero exit, never a trace."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest

import rig

CASES = [
    (["user", "foo=1"], "unknown option 'foo'"),
    (["user", "smb=/srv/smb"], "option 'smb' is not supported yet"),
    (["user", "user,id=x,ipv6-net=fe80::/64"], "option 'ipv6-net': fe80::/64 is not a usable prefix"),
    (["user", "ipv6-prefixlen=127"], "option 'ipv6-prefixlen': prefix length must be 1 to 126"),
    (["user", "ipv6-host=10.0.2.2"], "option 'ipv6-host': '10.0.2.2' is not an IPv6 address"),
    (["user", "hostfwd=tcp:[::1:2222-:22"], "option 'hostfwd': expected"),
    (["user", "hostfwd=tcp::2222-[2001:db8::1]:22"], "is not a guest address in fec0::/64"),
    (["user", "hostfwd=tcp::2222"], "option 'hostfwd'"),
    (["user", "guestfwd=tcp:10.0.2.100:1-file:/x"], "option 'guestfwd'"),
    (["user", "net=10.0.2.0/24,host=10.0.3.2"], "option 'host'"),
    (["user", "dns=not-an-ip"], "option 'dns'"),
    (["user", "--mtu", "70000"], "--mtu must be between 576 and 65520"),
    (["user", "--listen", "127.0.0.1"], "--listen: expected HOST:PORT"),
    (["user", "--socket", "/a", "--listen", "127.0.0.1:1"], "choose one transport"),
    (["user", "--tap", "tap0"], "--tap and --netns go together"),
    (["user", "--deny", "10.1.2.3/8"], "--deny: '10.1.2.3/8' is not an IPv4 prefix"),
    (["user", "--allow", "300.0.0.0/8"], "--allow: '300.0.0.0/8' is not an IPv4 prefix"),
    (["user", "--allow", "fd00::1/8"], "--allow: 'fd00::1/8' is not an IPv6 prefix"),
    (["user", "--limit", "foo=1"], "--limit: 'foo=1' is not NAME=N"),
    (["user", "--limit", "tcp-half-open=0"], "--limit tcp-half-open must be a number from 1 to 65536"),
    (["user", "--no-such-flag"], "Unknown option '--no-such-flag'"),
    (["switch", "--vxlan", "x"], "--vxlan: expected VNI (0-16777215) first"),
    (["switch", "--vxlan", "1,local=198.18.0.1"], "--vxlan 1: at least one remote=ADDR[:PORT] is required"),
    (["nat", "--vxlan", "1,local=198.18.0.1,remote=2001:db8::1"], "is not of the local address's family"),
    (["switch", "--vxlan", "1,local=127.0.0.1:4000,remote=127.0.0.2", "--vxlan", "1,local=127.0.0.1:4001,remote=127.0.0.2"],
     "--vxlan: VNI 1 given twice"),
    (["frobnicate"], "Unexpected argument 'frobnicate'"),
    (["user", "--socket", "/nonexistent-dir/x.sock"], "No such file or directory"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_nonzero(args, message):
    p = subprocess.run([str(rig.vnet_binary()), *args], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("vnet: error: "), p.stderr
    assert message in lines[0], p.stderr
    assert p.stdout == ""


def test_help_exits_zero():
    p = subprocess.run([str(rig.vnet_binary()), "user", "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "--socket" in p.stdout


def test_hostfwd_on_a_busy_port_is_one_line(workdir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([str(rig.vnet_binary()), "user", f"hostfwd=tcp:127.0.0.1:{port}-:22", "--socket",
                            str(workdir / "v.sock")], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vnet: error: hostfwd tcp:127.0.0.1:{port}"), p.stderr
    assert "Address already in use" in lines[0]


def readme_option_rows():
    """(options, status) from the README's table of libslirp -netdev user options."""
    text = (rig.REPO_ROOT / "README.md").read_text()
    table = text.split("### libslirp `-netdev user` options", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        keys = [(k, v if v in ("on", "off") else "x") for k, v in re.findall(r"`([a-z0-9-]+)=([^`]*)`", cells[0])]
        rows.append((keys, cells[1]))
    return rows


def test_readme_option_table_matches_the_code():
    rows = readme_option_rows()
    assert rows, "README option table not found"
    for keys, status in rows:
        for key, value in keys:
            p = subprocess.run([str(rig.vnet_binary()), "user", f"{key}={value}", "--socket", "/nonexistent-dir/x.sock"],
                               capture_output=True, text=True, timeout=30)
            if status.startswith("not yet"):
                assert f"option '{key}" in p.stderr and "not supported yet" in p.stderr, (key, p.stderr)
            else:
                assert "unknown option" not in p.stderr and "not supported yet" not in p.stderr, (key, p.stderr)
