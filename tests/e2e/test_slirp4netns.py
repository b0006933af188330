"""`vnet slirp4netns`: vnet started by the tools that start slirp4netns, rootless, as they run it.

Everything runs as an unprivileged user created for the test (with subuid/subgid ranges), as rootlesskit and
podman run in real life. vnet is reached through a copy named `slirp4netns` (the argv[0] dispatch).

- The API socket: one script of good and bad requests goes to Debian's slirp4netns 1.2.0 and to vnet, each
  serving a namespace of the test user's own; the replies must be byte-identical.
- rootlesskit 1.x (`--net=slirp4netns --slirp4netns-binary=<vnet>`): the namespace reaches a server on host
  loopback through 10.0.2.2; with --disable-host-loopback it cannot; with --port-driver=slirp4netns,
  `rootlessctl add-ports` publishes a server inside on a host port (through vnet's API socket).
- podman 4.x (containers.conf network_cmd_path = vnet): a container imported from a busybox tarball reaches host
  loopback with allow_host_loopback=true, and `-p 127.0.0.1:PORT:80` with port_handler=slirp4netns publishes
  its httpd.

DNS never leaves loopback: vnet's config file (VNET_SLIRP4NETNS_CONFIG) points its upstream at a port of the
test's own. Nothing here talks to anything but loopback and the test's namespaces.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import rig

USER = "vnet-s4test"
SUBID_START = 300000


def sh(*args, check=True, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=check, **kw)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: apt-get install {package} (scripts/test installs it)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def rootless(module_workdir):
    """The test user (created once, with subuid/subgid ranges), /dev/net/tun usable by it, a home for the run."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("creating the rootless test user needs root on Linux")
    need("newuidmap", "uidmap")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        sh("useradd", "-m", "-s", "/bin/sh", USER)
    for f in ("/etc/subuid", "/etc/subgid"):
        lines = Path(f).read_text().splitlines() if Path(f).exists() else []
        if not any(l.startswith(USER + ":") for l in lines):
            with open(f, "a") as out:
                out.write(f"{USER}:{SUBID_START}:65536\n")
    pw = pwd.getpwnam(USER)
    tun_mode = os.stat("/dev/net/tun").st_mode & 0o777
    os.chmod("/dev/net/tun", 0o666)
    base = Path(module_workdir)
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    os.chown(home, pw.pw_uid, pw.pw_gid)
    # vnet as `slirp4netns`: a copy of the binary under test, in a directory the user can reach (the checkout may
    # sit under a home the user cannot enter, such as /root).
    bindir = base / "bin"
    bindir.mkdir()
    vnet = rig.vnet_binary().resolve()
    assert vnet.exists(), f"vnet binary not found at {vnet}"
    shutil.copy2(vnet, bindir / "slirp4netns")
    os.chmod(bindir / "slirp4netns", 0o755)
    dns = rig.DnsServer({"vnet-s4.test": "192.0.2.44"}).start()
    conf = base / "vnet.conf"
    conf.write_text(f"# keeps DNS on loopback\ndns-upstream 127.0.0.1:{dns.port}\nlog-level info\n")
    os.chmod(conf, 0o644)
    try:
        yield type("Rootless", (), dict(user=USER, uid=pw.pw_uid, gid=pw.pw_gid, home=home, bindir=bindir,
                                        slirp=bindir / "slirp4netns", conf=conf, dns=dns))
    finally:
        dns.stop()
        os.chmod("/dev/net/tun", tun_mode)


def user_env(r, **extra) -> list[str]:
    env = {"HOME": str(r.home), "XDG_RUNTIME_DIR": str(r.home), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "VNET_SLIRP4NETNS_CONFIG": str(r.conf)}
    env.update(extra)
    return ["runuser", "-u", r.user, "--", "env", "-i"] + [f"{k}={v}" for k, v in env.items()]


# ---------------------------------------------------------------------------------------------- command line


def test_help_version_and_refused_flags(rootless):
    out = sh(rootless.slirp, "--help").stdout
    # What rootlesskit 1.1 and podman 4.3 grep for before passing a flag.
    for flag in ("--netns-type", "--cidr", "--api-socket", "--disable-host-loopback", "--enable-sandbox",
                 "--enable-seccomp", "--enable-ipv6", "--outbound-addr", "--userns-path", "--exit-fd", "--ready-fd",
                 "--configure", "--mtu", "--macaddress", "--disable-dns", "--outbound-addr6"):
        assert flag in out, flag
    assert out.startswith("Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]")
    assert sh(rig.vnet_binary(), "slirp4netns", "--help").stdout == out
    version = sh(rootless.slirp, "--version").stdout.splitlines()
    assert version[0] == "slirp4netns version 1.2.0 (vnet)"
    for args, needle in ((["--outbound-addr=192.0.2.1", "1"], "--outbound-addr"),
                         (["--disable-dns", "1"], "--disable-dns"),
                         (["--target-type=bess", "1"], "--target-type=bess"),
                         (["--mtu", "65521", "1"], "--mtu 65521"),
                         (["--netns-type=pid", "notapid"], "PID"),
                         (["--macaddress=02:00:00:00:00:01", "1"], "--macaddress")):
        r = sh(rootless.slirp, *args, check=False)
        assert r.returncode == 2, (args, r)
        assert r.stderr.startswith("vnet: error: ") and needle in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)


def test_configure_ready_fd_exit_fd(rootless, log_dir):
    """podman's way: -c configures the TAP (CIDR's .100, MTU, MAC, default route), "1" arrives on the ready fd,
    and closing the exit fd ends vnet."""
    ns = UserNamespaceHolder(rootless)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    log = open(log_dir / "vnet.log", "w")
    proc = None
    try:
        netns = f"/proc/{ns.pid}/ns/net"
        proc = subprocess.Popen(user_env(rootless) + [
            str(rootless.slirp), "-c", "--cidr=10.0.3.0/24", "--mtu", "9000", "--macaddress=02:00:00:00:00:42",
            "-r", str(ready_w), "-e", str(exit_r), f"--userns-path=/proc/{ns.pid}/ns/user", "--netns-type=path",
            netns, "tap1"], stdout=log, stderr=subprocess.STDOUT, pass_fds=(ready_w, exit_r), start_new_session=True)
        os.close(ready_w)
        os.close(exit_r)
        ready_w = exit_r = -1
        assert os.read(ready_r, 1) == b"1", (log_dir / "vnet.log").read_text()
        look = user_env(rootless) + ["nsenter", "-t", ns.pid, "-U", "-n", "--preserve-credentials"]
        link = json.loads(sh(*look, "ip", "-j", "addr", "show", "tap1").stdout)[0]
        assert link["mtu"] == 9000 and link["address"] == "02:00:00:00:00:42" and "UP" in link["flags"]
        assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [("10.0.3.100", 24)]
        routes = json.loads(sh(*look, "ip", "-j", "route", "show", "default").stdout)
        assert [(r["gateway"], r["dev"]) for r in routes] == [("10.0.3.2", "tap1")]
        assert proc.poll() is None
        os.close(exit_w)
        exit_w = -1
        assert proc.wait(timeout=10) == 0, (log_dir / "vnet.log").read_text()
        assert "vnet: tap offload on" in (log_dir / "vnet.log").read_text()
    finally:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        ns.close()


# ---------------------------------------------------------------------------------------------- API socket


def api_call(path: str, data: bytes, close_write: bool = False) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        if data:
            s.sendall(data)
        if close_write or not data:
            s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except ConnectionResetError:
            out += b"<reset>"
        return out


class UserNamespaceHolder:
    """`unshare -r -n sleep` as the test user: a user + network namespace of its own."""

    def __init__(self, r):
        self.proc = subprocess.Popen(user_env(r) + ["unshare", "-r", "-n", "sleep", "600"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        # runuser forks sleep as its child: the namespace holder is the deepest descendant.
        def holder():
            try:
                kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
                while kids:
                    nxt = Path(f"/proc/{kids[0]}/task/{kids[0]}/children").read_text().split()
                    if not nxt:
                        comm = Path(f"/proc/{kids[0]}/comm").read_text().strip()
                        return kids[0] if comm == "sleep" else None
                    kids = nxt
            except OSError:
                return None
            return None
        self.pid = wait_for(holder, 10, "the namespace holder")

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def run_api_script(r, binary: str, workdir: Path, requests: list[bytes], log: Path) -> list[bytes]:
    ns = UserNamespaceHolder(r)
    api = workdir / f"api-{len(os.listdir(workdir))}.sock"
    proc = subprocess.Popen(user_env(r) + [binary, "--api-socket", str(api), ns.pid, "tap0"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: api.exists() or proc.poll() is not None, 10, f"{binary}'s API socket")
        assert proc.poll() is None, log.read_text()
        replies = []
        for q in requests:
            close_write = q.startswith(b"<shut>")
            replies.append(api_call(str(api), q.removeprefix(b"<shut>"), close_write))
            assert proc.poll() is None, f"{binary} died on {q[:80]!r}: {log.read_text()}"
        return replies
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        ns.close()


def api_script(ports: list[int]) -> list[bytes]:
    p1, p2, p3, p4, p5 = ports
    lines = [
        '{"execute":"list_hostfwd"}',
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_addr":"","guest_port":80}}' % p1,
        '{"execute":"add_hostfwd","arguments":{"proto":"udp","host_addr":"","host_port":%d,"guest_port":53}}' % p2,
        # the same port again: refused
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":%d,"guest_addr":"10.0.2.100","guest_port":80}}' % p1,
        '{"execute":"list_hostfwd"}',
        '{"execute":"add_hostfwd","arguments":{"proto":"sctp","host_port":1,"guest_port":1}}',
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"::1","host_port":%d,"guest_port":80}}' % p3,
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":"%d","guest_port":80}}' % p3,
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_addr":"x","guest_port":80}}' % p3,
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d}}' % p3,
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d.7,"guest_port":80.2}}' % p4,
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_addr":"0.0.0.0","guest_port":80}}' % p5,
        '{"execute":"list_hostfwd"}',
        '{"execute":"remove_hostfwd","arguments":{"id":1}}',
        '{"execute":"remove_hostfwd","arguments":{"id":1}}',
        '{"execute":"remove_hostfwd","arguments":{"id":"2"}}',
        '{"execute":"remove_hostfwd"}',
        '{"execute":"list_hostfwd"}',
        '{"execute":"nope"}',
        '{"execute":5}',
        '{"foo":"bar"}',
        '[1,2]',
        '"str"',
        'not json',
        '{"execute":"list_hostfwd"} trailing garbage',
        '{"execute":"list_hostfwd","execute":"list_hostfwd"}',
        '  {"execute" : "list_hostfwd" }  ',
        '{"execute":"list_hostfwd",}',
        "{'execute':'list_hostfwd'}",
        '{"execute":"list\\u005fhostfwd"}',
        '{"execute":"list_hostfwd","x":01}',
        '{"execute":"list_hostfwd","x":-inf}',
        '{"execute":"list_hostfwd","x":1e999}',
        '{"execute":"list_hostfwd","x":1e5}',
        '{"execute":"list_hostfwd","x":[[[[[[]]]]]]}',
        '{"execute":"list_hostfwd","x":"\\ud800"}',
        '{"execute":"list_hostfwd","x":"\\q"}',
        '{"execute":"list_hostfwd","x":tru}',
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":%d,"guest_port":80},"arguments":{}}' % p3,
        '{"execute":"list_hostfwd","x":-0,"y":1.,"z":0.5e-3,"w":"\\uD83D\\uDE00","v":"\\u00e9","":{"":{}}}',
        '{"execute":"list_hostfwd","x":-01}',
        '{"execute":"list_hostfwd","x":.5}',
        '{"execute":"list_hostfwd","x":+1}',
        '{"execute":"list_hostfwd","x":1e}',
        '{"execute":"list_hostfwd","x":"\\uDE00"}',
        '{"execute":"list_hostfwd","x":[1,]}',
        '{"execute" "list_hostfwd"}',
        '{"execute":"list_hostfwd"',
        '{"execute":"list_hostfwd\\u0000x"}',
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1 ","host_port":1,"guest_port":1}}',
        '{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":5,"host_port":1,"guest_port":0}}',
        '{"execute":"add_hostfwd","arguments":{"proto":"TCP","host_port":1,"guest_port":1}}',
        '{"execute":"remove_hostfwd","arguments":{"id":2.9}}',
        '{"execute":"remove_hostfwd","arguments":{"id":true}}',
        '{"execute":"list_hostfwd"}',
    ]
    reqs = [l.encode() for l in lines]
    reqs += [
        b'{"execute":"list_hostfwd","x":"\t"}',                 # a raw control character in a string
        b'{"execute":"list_hostfwd","x":"\x7f\xff"}',          # DEL and bytes that are not UTF-8: accepted
        b'{"execute":"list_hostfwd"}\x00garbage after a NUL',
        b"<shut>",                                              # connect, send nothing
        b'{"execute":"list_hostfwd"}' + b" " * (4095 - 26),     # 4095 bytes: fits
        b'{"execute":"list_hostfwd"}' + b" " * (4096 - 26),     # 4096 bytes: "too large message"
        b'{"execute":"list_hostfwd"}',                          # still serving
    ]
    return reqs


def test_api_socket_matches_slirp4netns(rootless, module_workdir, log_dir):
    real = need("slirp4netns", "slirp4netns")
    work = Path(module_workdir) / "api"
    work.mkdir()
    os.chown(work, rootless.uid, rootless.gid)
    ports = [free_port() for _ in range(5)]
    script = api_script(ports)
    want = run_api_script(rootless, real, work, script, log_dir / "slirp4netns.log")
    got = run_api_script(rootless, str(rootless.slirp), work, script, log_dir / "vnet.log")
    (log_dir / "replies.txt").write_text("\n".join(f"{q[:100]!r}\n  slirp4netns {w!r}\n  vnet        {g!r}"
                                                   for q, w, g in zip(script, want, got)))
    for q, w, g in zip(script, want, got):
        assert g == w, f"request {q[:100]!r}: slirp4netns answered {w!r}, vnet {g!r}"
    assert any(w.startswith(b'{"return":{"id":') for w in want) and any(b"too large" in w for w in want)


def test_api_socket_where_slirp4netns_crashes(rootless, module_workdir, log_dir):
    """slirp4netns 1.2.0 dies on add_hostfwd without a string proto and truncates ports; vnet answers."""
    work = Path(module_workdir) / "api-extra"
    work.mkdir()
    os.chown(work, rootless.uid, rootless.gid)
    reqs = [b'{"execute":"add_hostfwd","arguments":"x"}',
            b'{"execute":"add_hostfwd","arguments":{"host_port":1,"guest_port":1}}',
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":70000,"guest_port":80}}',
            b'{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_port":80,"guest_port":-1}}',
            b'{"execute":"list_hostfwd"}']
    got = run_api_script(rootless, str(rootless.slirp), work, reqs, log_dir / "vnet.log")
    assert got == [b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}'] * 2 + [
        b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.host_port"}}',
        b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.guest_port"}}',
        b'{"entries":[]}']


# ---------------------------------------------------------------------------------------------- rootlesskit


def rootlesskit(r, state: Path, *flags: str, command: list[str], timeout=60, **popen):
    need("rootlesskit", "rootlesskit")
    args = user_env(r) + ["rootlesskit", "--net=slirp4netns", f"--slirp4netns-binary={r.slirp}", "--copy-up=/etc",
                          f"--state-dir={state}", *flags] + command
    return args


FETCH = ("import socket, sys, urllib.request\n"
         "try:\n"
         "    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
         "except Exception as e:\n"
         "    print('FAILED', type(e).__name__, e)\n"
         "if len(sys.argv) > 2:\n"
         "    print('RESOLVED', socket.gethostbyname(sys.argv[2]))\n")


def test_rootlesskit_reaches_host_loopback(rootless, module_workdir, log_dir):
    token = f"vnet-rootlesskit-{os.getpid()}"
    with rig.HttpServer({"/": token.encode()}) as http:
        state = rootless.home / "rk-state-1"
        r = sh(*rootlesskit(rootless, state, command=["python3", "-c", FETCH, http.url(host="10.0.2.2"), "vnet-s4.test"]),
               timeout=60, check=False)
        (log_dir / "rootlesskit.log").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr
        assert token in r.stdout, r.stdout + r.stderr
        assert any(req[0][0] == "127.0.0.1" for req in http.requests)
        # The namespace's resolver is 10.0.2.3 (rootlesskit writes it), which vnet forwards to the test's server.
        assert "RESOLVED 192.0.2.44" in r.stdout, r.stdout + r.stderr
        assert rootless.dns.count(name="vnet-s4.test") >= 1


def test_rootlesskit_disable_host_loopback(rootless, module_workdir, log_dir):
    with rig.HttpServer({"/": b"must not be reached"}) as http:
        state = rootless.home / "rk-state-2"
        r = sh(*rootlesskit(rootless, state, "--disable-host-loopback",
                            command=["python3", "-c", FETCH, http.url(host="10.0.2.2")]), timeout=60, check=False)
        (log_dir / "rootlesskit.log").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr
        assert "FAILED" in r.stdout and "must not be reached" not in r.stdout, r.stdout
        assert http.requests == []


INNER_SERVER = ("import http.server, os, sys\n"
                "class H(http.server.BaseHTTPRequestHandler):\n"
                "    def do_GET(self):\n"
                "        body = sys.argv[1].encode()\n"
                "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
                "        self.wfile.write(body)\n"
                "    def log_message(self, *a): pass\n"
                "s = http.server.HTTPServer(('0.0.0.0', 8080), H)\n"
                "print('LISTENING', flush=True)\n"
                "s.serve_forever()\n")


def vnet_pid(r) -> int:
    """The pid of the one vnet running as the test's `slirp4netns` copy."""
    pids = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.readlink(f"/proc/{p}/exe") == str(r.slirp):
                pids.append(int(p))
        except OSError:
            continue
    assert len(pids) == 1, pids
    return pids[0]


def test_rootlesskit_port_driver_add_ports(rootless, module_workdir, log_dir):
    need("rootlessctl", "rootlesskit")
    state = rootless.home / "rk-state-3"
    token = f"published-{os.getpid()}"
    log = open(log_dir / "rootlesskit.log", "w")
    # With rootlesskit's sandbox and seccomp flags: vnet serves the API socket from inside its --sandbox.
    proc = subprocess.Popen(rootlesskit(rootless, state, "--port-driver=slirp4netns", "--slirp4netns-sandbox=true",
                                        "--slirp4netns-seccomp=true", command=["python3", "-c", INNER_SERVER, token]),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "LISTENING" in (log_dir / "rootlesskit.log").read_text() or proc.poll() is not None, 30,
                 "the server inside rootlesskit")
        assert proc.poll() is None, (log_dir / "rootlesskit.log").read_text()
        assert re.search(r"^Seccomp:\s+2$", Path(f"/proc/{vnet_pid(rootless)}/status").read_text(), re.M)
        port = free_port()
        ctl = user_env(rootless) + ["rootlessctl", "--socket", str(state / "api.sock")]
        r = sh(*ctl, "add-ports", f"127.0.0.1:{port}:8080/tcp", check=False)
        assert r.returncode == 0, r.stderr
        listed = sh(*ctl, "list-ports").stdout
        assert str(port) in listed
        # vnet's API socket holds the forward rootlesskit asked for.
        entries = json.loads(api_call(str(state / ".s4nn.sock"), b'{"execute":"list_hostfwd"}'))["entries"]
        assert [(e["host_addr"], e["host_port"], e["guest_port"]) for e in entries] == [("127.0.0.1", port, 8080)]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.0 200") and data.endswith(token.encode()), data
        r = sh(*ctl, "remove-ports", "1", check=False)
        assert r.returncode == 0, r.stderr
        assert json.loads(api_call(str(state / ".s4nn.sock"), b'{"execute":"list_hostfwd"}'))["entries"] == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------------------------------------- podman


@pytest.fixture(scope="module")
def podman(rootless, module_workdir):
    """Rootless podman 4.x whose network command is vnet, with an image imported from a busybox tarball."""
    need("podman", "podman")
    need("runc", "runc")
    busybox = shutil.which("busybox") or "/bin/busybox"
    assert os.path.exists(busybox), "busybox not found: apt-get install busybox-static"
    base = Path(module_workdir) / "podman"
    root = base / "image"
    (root / "bin").mkdir(parents=True)
    (root / "www").mkdir()
    shutil.copy(busybox, root / "bin" / "busybox")
    for applet in sh(root / "bin" / "busybox", "--list").stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    token = f"served-by-the-container-{os.getpid()}"
    (root / "www" / "index.html").write_text(token)
    sh("tar", "-C", root, "-cf", base / "busybox.tar", ".")
    os.chmod(base, 0o755)
    os.chmod(base / "busybox.tar", 0o644)
    conf = base / "containers.conf"
    conf.write_text(f'[engine]\nnetwork_cmd_path = "{rootless.slirp}"\ncgroup_manager = "cgroupfs"\n'
                    'events_logger = "file"\nruntime = "runc"\n')
    os.chmod(conf, 0o644)
    home = rootless.home

    def run(*args, vnet_conf: Path | None = None, timeout=120, check=True):
        env = {"CONTAINERS_CONF": str(conf)}
        if vnet_conf is not None:
            env["VNET_SLIRP4NETNS_CONFIG"] = str(vnet_conf)
        cmd = user_env(rootless, **env) + ["podman", "--storage-driver=vfs", "--root", str(home / "storage"),
                                           "--runroot", str(home / "runroot"), *args]
        return sh(*cmd, timeout=timeout, check=check)

    run("import", base / "busybox.tar", "localhost/vnet-busybox")
    try:
        yield type("Podman", (), dict(run=staticmethod(run), token=token, image="localhost/vnet-busybox"))
    finally:
        run("rm", "-a", "-f", "-t", "0", check=False)
        # Rootless podman keeps a pause process holding its user namespace: end it by its pid file.
        pause = home / "libpod" / "tmp" / "pause.pid"
        if pause.exists():
            try:
                os.kill(int(pause.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def vnet_conf_with_pcap(rootless, name: str) -> tuple[Path, Path]:
    """A vnet config for one run: DNS on loopback as in the module's, plus a capture proving vnet carried it."""
    pcap = rootless.home / f"{name}.pcap"
    conf = rootless.home / f"{name}.conf"
    conf.write_text(rootless.conf.read_text() + f"pcap {pcap}\n")
    os.chmod(conf, 0o644)
    return conf, pcap


def test_podman_reaches_host_loopback(rootless, podman, log_dir):
    token = f"host-page-{os.getpid()}"
    conf, pcap = vnet_conf_with_pcap(rootless, "podman-loopback")
    with rig.HttpServer({"/": token.encode()}) as http:
        r = podman.run("run", "--rm", "--network", "slirp4netns:allow_host_loopback=true", podman.image,
                       "wget", "-q", "-O", "-", http.url(host="10.0.2.2"), vnet_conf=conf, check=False)
        (log_dir / "podman.log").write_text(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == token
        # Without allow_host_loopback podman passes --disable-host-loopback: refused.
        r = podman.run("run", "--rm", "--network", "slirp4netns", podman.image,
                       "wget", "-q", "-T", "5", "-O", "-", http.url(host="10.0.2.2"), check=False)
        assert r.returncode != 0 and token not in r.stdout
        assert len(http.requests) == 1
    # vnet carried the container's traffic (podman started it, not a slirp4netns of its own).
    assert pcap.exists() and pcap.stat().st_size > 24 + 16 * 4


def test_podman_publishes_port_with_slirp4netns_port_handler(rootless, podman, log_dir):
    port = free_port()
    conf, pcap = vnet_conf_with_pcap(rootless, "podman-publish")
    r = podman.run("run", "-d", "--name", "vnet-web", "-p", f"127.0.0.1:{port}:80",
                   "--network", "slirp4netns:port_handler=slirp4netns", podman.image,
                   "httpd", "-f", "-p", "80", "-h", "/www", vnet_conf=conf, check=False)
    (log_dir / "podman-run.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr
    try:
        def fetch():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := c.recv(4096):
                        data += chunk
                    return data if data.startswith(b"HTTP/1.") else None
            except OSError:
                return None
        data = wait_for(fetch, 30, "the container's httpd on the published port")
        assert b" 200 " in data.split(b"\r\n")[0] and data.endswith(podman.token.encode()), data
    finally:
        podman.run("rm", "-f", "-t", "0", "vnet-web", check=False)
    assert pcap.exists() and pcap.stat().st_size > 24
