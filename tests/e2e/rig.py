"""End-to-end test rig for vnet: a real Linux guest under QEMU, vnet itself,
and small host-side servers, all on loopback or in namespaces a test creates.

Theory of operation
-------------------
* ``scripts/guest/build.sh`` produces a kernel and an initramfs whose /init
  serves a *command session* on the serial console. One booted ``Guest`` runs
  many checks: ``run()`` sends ``__VNET_CMD <id> <limit_s> <base64 script>``
  and reads the console until ``__VNET_DONE_<id> rc=<n>``. Ids are random per
  command, so stale output and echoes can never complete a later command.
  The guest kills a command's whole process group after ``limit_s`` seconds,
  so a hung command costs one failure, not the whole guest.
* Every wait is a deadline on a condition (a marker in the console stream, a
  line on a process's stdout, a predicate). There are no fixed sleeps.
* Every process started here (QEMU, vnet) is tracked and killed by its pid on
  close, on context-manager exit, and at interpreter exit as a last resort.
  QEMU and vnet also get PR_SET_PDEATHSIG=SIGKILL, so they die with the test
  process even if it is killed outright.
* Everything that a failure needs (serial console, QEMU stderr, vnet
  stdout/stderr) goes to log files; failures quote their tails.

Only the standard library (plus pytest in conftest.py) is used.
"""

from __future__ import annotations

import atexit
import base64
import codecs
import contextlib
import ctypes
import http.server
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Pattern, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "guest" / "build.sh"
DEFAULT_GUEST_CACHE = REPO_ROOT / ".cache" / "guest"
DEFAULT_LOG_ROOT = REPO_ROOT / ".cache" / "e2e-logs"
DEFAULT_MAC = "52:54:00:12:34:56"
READY_MARKER = "__VNET_READY__"


class RigError(AssertionError):
    """A rig-level failure. Subclasses AssertionError so pytest shows it plainly."""


# --------------------------------------------------------------------------
# Small helpers


def tail(path: Path | str | None, lines: int = 60) -> str:
    """The last `lines` lines of a text file, or a note if it is missing."""
    if path is None:
        return "(no log)"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace").replace("\r", "")
    except OSError as e:
        return f"(cannot read {path}: {e})"
    out = data.splitlines()[-lines:]
    return "\n".join(out) if out else "(empty)"


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02,
             message: str | Callable[[], str] = "condition") -> object:
    """Poll `predicate` until it returns something truthy; return that value.

    Polls every `interval` seconds (growing to at most 0.2 s) until the
    deadline, then raises TimeoutError naming `message` (a string, or a
    callable producing one, e.g. to quote a log tail).
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {text}")
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 1.5, 0.2)


def _free_port(kind: int, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, then release)."""
    return _free_port(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago (bind to port 0, then release)."""
    return _free_port(socket.SOCK_DGRAM, host)


def short_tempdir(prefix: str = "vnet-e2e-") -> Path:
    """A fresh directory under /tmp with a short path.

    Unix socket paths are limited to 107 bytes, which pytest's tmp_path can
    exceed. The caller removes it (see `removing`, or the conftest fixtures).
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.contextmanager
def removing(path: Path):
    """Context manager that removes `path` (a directory tree) on exit."""
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# Process tracking: kill by pid on every exit path.

_live_pids: set[int] = set()
_live_lock = threading.Lock()


def _track(pid: int) -> None:
    with _live_lock:
        _live_pids.add(pid)


def _untrack(pid: int) -> None:
    with _live_lock:
        _live_pids.discard(pid)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        pids = list(_live_pids)
        _live_pids.clear()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1
try:  # resolved here, not in the child: no dlopen between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _kill_process(proc: subprocess.Popen, term_timeout: float = 5.0, sig=signal.SIGTERM) -> int | None:
    """Stop `proc` by pid: `sig`, wait up to term_timeout, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    _untrack(proc.pid)
    return proc.returncode


# --------------------------------------------------------------------------
# Reading a child's output: a thread copies a pipe into a log file and an
# in-memory buffer; waiters block on a condition with a deadline.


class OutputCollector:
    """Collects a binary pipe into a log file and a text buffer ('\\r' dropped).

    `wait_for(regex, timeout, start=...)` searches the buffer (not line by
    line), so a marker is found even if output before it had no newline.
    """

    def __init__(self, pipe, log_path: Path, name: str = "output"):
        self.name = name
        self.log_path = Path(log_path)
        self._pipe = pipe
        self._text = ""
        self._cond = threading.Condition()
        self.eof = False
        self._log = open(self.log_path, "ab", buffering=0)
        self._thread = threading.Thread(target=self._pump, name=f"collect-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        fd = self._pipe.fileno()
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self._log.write(chunk)
                text = decoder.decode(chunk).replace("\r", "")
                with self._cond:
                    self._text += text
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._text += decoder.decode(b"", final=True)
                self.eof = True
                self._cond.notify_all()
            with contextlib.suppress(OSError):
                self._log.close()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def __len__(self) -> int:
        with self._cond:
            return len(self._text)

    def __bool__(self) -> bool:  # a collector is truthy even before any output
        return True

    def wait_for(self, pattern: str | Pattern[str], timeout: float, start: int = 0,
                 describe: Callable[[], str] | None = None) -> re.Match:
        """Wait until `pattern` matches the text from offset `start` on.

        Returns the match (offsets relative to the whole text). Raises
        RigError on EOF without a match or on the deadline.
        """
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._text, start)
                if m:
                    return m
                if self.eof:
                    reason = f"{self.name} ended (EOF) before /{rx.pattern}/ appeared"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = f"timed out after {timeout:.1f}s waiting for /{rx.pattern}/ on {self.name}"
                    break
                self._cond.wait(left)
        extra = describe() if describe else f"--- tail of {self.log_path} ---\n{tail(self.log_path)}"
        raise RigError(f"{reason}\n{extra}")

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)


def wait_for_line(stream, pattern: str | Pattern[str], timeout: float, start: int = 0) -> re.Match:
    """Wait (with a deadline) for a complete line of `stream` matching `pattern`.

    `stream` is an OutputCollector (searched from text offset `start`), an
    object with a `stdout` collector (such as VnetProcess), or a raw binary
    pipe. A raw pipe is read byte by byte (select + os.read) so nothing after
    the matching line is consumed. Returns the re.Match against that line.
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    if isinstance(getattr(stream, "stdout", None), OutputCollector):
        stream = stream.stdout
    if isinstance(stream, OutputCollector):
        line_rx = re.compile(r"^[^\n]*?(?:%s)[^\n]*\n" % rx.pattern, re.M)
        m = stream.wait_for(line_rx, timeout, start)
        return rx.search(m.group(0).rstrip("\n"))
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    seen: list[str] = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RigError(f"timed out after {timeout:.1f}s waiting for a line matching "
                               f"/{rx.pattern}/; last lines:\n" + "\n".join(seen[-20:]))
            if not sel.select(left):
                continue
            b = os.read(fd, 1)
            if not b:
                raise RigError(f"EOF before a line matching /{rx.pattern}/; last lines:\n"
                               + "\n".join(seen[-20:]))
            if b != b"\n":
                line += b
                continue
            text = line.decode("utf-8", "replace").rstrip("\r")
            line.clear()
            seen.append(text)
            m = rx.search(text)
            if m:
                return m


# --------------------------------------------------------------------------
# The guest


@dataclass(frozen=True)
class GuestImage:
    vmlinuz: Path
    initrd: Path


def build_guest_image(cache_dir: Path | None = None, generic: bool = False) -> GuestImage:
    """Run scripts/guest/build.sh (idempotent) and return the image paths.

    `generic=True` builds the second image (`build.sh --generic`): Debian's generic kernel with the drivers of
    QEMU's other NIC models, cached in `<cache>/generic`.
    """
    cache = Path(cache_dir or os.environ.get("VNET_GUEST_CACHE") or DEFAULT_GUEST_CACHE)
    argv = [str(BUILD_SCRIPT), str(cache)]
    if generic:
        argv = [str(BUILD_SCRIPT), "--generic", str(cache if cache_dir else cache / "generic")]
    proc = subprocess.run(argv, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    if proc.returncode != 0:
        raise RigError(f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    values = dict(line.split("=", 1) for line in proc.stdout.splitlines() if re.match(r"^[A-Z_]+=", line))
    return GuestImage(Path(values["VMLINUZ"]), Path(values["INITRD"]))


class CommandResult(NamedTuple):
    """Exit code and combined stdout+stderr of a guest command; a plain tuple."""
    rc: int
    output: str


class Guest:
    """A QEMU guest (TCG) running the rig's initramfs, driven over its console.

    `netdev_args` are QEMU arguments, e.g. ``["-netdev", "user,id=n0"]`` or
    ``["-netdev", "stream,id=n0,server=off,addr.type=unix,addr.path=/x.sock"]``.
    With `nic=True` a ``-device virtio-net-pci,netdev=<netdev_id>,mac=<mac>`` is
    added. More NICs or devices go in `qemu_args`.

    Use as a context manager; `close()` is safe to call more than once.
    """

    def __init__(self, image: GuestImage, netdev_args: Sequence[str] = (), *,
                 workdir: Path, log_dir: Path | None = None, name: str = "guest",
                 mac: str = DEFAULT_MAC, nic: bool = True, netdev_id: str = "n0",
                 nic_model: str = "virtio-net-pci", append: str = "",
                 qemu_args: Sequence[str] = (), memory_mb: int = 256,
                 boot_timeout: float = 90.0, qmp: bool = True,
                 qemu_binary: str = "qemu-system-x86_64"):
        self.image = image
        self.name = name
        self.workdir = Path(workdir)
        self.log_dir = Path(log_dir) if log_dir else self.workdir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.serial_log = self.log_dir / f"{name}.serial.log"
        self.stderr_log = self.log_dir / f"{name}.qemu-stderr.log"
        self.qmp_path = self.workdir / f"{name}.qmp" if qmp else None
        self.mac = mac
        self.boot_timeout = boot_timeout
        self.kernel_release: str | None = None
        self._proc: subprocess.Popen | None = None
        self._console: OutputCollector | None = None
        self._stdin = None
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._closed = False

        args = [qemu_binary, "-accel", "tcg", "-m", str(memory_mb),
                "-nodefaults", "-no-user-config", "-display", "none",
                "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-kernel", str(image.vmlinuz), "-initrd", str(image.initrd),
                # no_timer_check: under TCG on a busy host the kernel's IO-APIC timer probe can miss its ticks
                # and panic ("IO-APIC + timer doesn't work!"); the check proves nothing for a virtual board.
                "-append", f"console=ttyS0 quiet panic=-1 no_timer_check {append}".strip()]
        if self.qmp_path:
            args += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        args += list(netdev_args)
        if nic:
            args += ["-device", f"{nic_model},netdev={netdev_id},mac={mac}"]
        args += list(qemu_args)
        self.argv = args

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "Guest":
        """Boot the guest and wait (deadline) for the session's ready marker."""
        if self._proc is not None:
            raise RigError("guest already started")
        with open(self.serial_log, "wb") as f:
            f.write(("# " + " ".join(self.argv) + "\n").encode())
        stderr = open(self.stderr_log, "wb")
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=stderr, cwd=self.workdir, preexec_fn=_die_with_parent)
        finally:
            stderr.close()
        _track(self._proc.pid)
        self._stdin = self._proc.stdin
        self._console = OutputCollector(self._proc.stdout, self.serial_log, f"{self.name} console")
        try:
            m = self._console.wait_for(r"__VNET_READY__ kernel=(\S+)\n", self.boot_timeout,
                                       describe=self.describe)
            self.kernel_release = m.group(1)
            boot_text = self._console.text[:m.start()]
            if "__VNET_INIT_ERROR" in boot_text:
                errors = re.findall(r"__VNET_INIT_ERROR.*", boot_text)
                raise RigError(f"guest init reported errors: {errors}\n{self.describe()}")
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "Guest":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self, poweroff_timeout: float = 10.0) -> None:
        """Power the guest off (bounded wait), then kill QEMU by pid if needed."""
        if self._closed or self._proc is None:
            return
        self._closed = True
        proc = self._proc
        try:
            # Graceful only if the session is up and idle; otherwise QEMU is just killed.
            if proc.poll() is None and self._broken is None and self.kernel_release and self._stdin:
                with contextlib.suppress(OSError, ValueError):
                    self._stdin.write(b"__VNET_EXIT\n")
                    self._stdin.flush()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=poweroff_timeout)
        finally:
            _kill_process(proc, term_timeout=5.0, sig=signal.SIGKILL)
            with contextlib.suppress(OSError, ValueError):
                self._stdin.close()
            if self._console:
                self._console.join()
            with contextlib.suppress(OSError, ValueError):
                proc.stdout.close()

    # -- diagnostics -------------------------------------------------------

    def describe(self, lines: int = 60) -> str:
        """QEMU status plus the tails of the serial log and QEMU's stderr."""
        status = "not started"
        if self._proc is not None:
            if self._console and self._console.eof:
                # The console closed: let QEMU finish exiting so its status and stderr are complete.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
            rc = self._proc.poll()
            status = f"pid {self._proc.pid} " + ("running" if rc is None else f"exited with {rc}")
        return (f"--- guest {self.name}: qemu {status} ---\n"
                f"--- tail of {self.serial_log} ---\n{tail(self.serial_log, lines)}\n"
                f"--- tail of {self.stderr_log} ---\n{tail(self.stderr_log, 20)}")

    @property
    def console_text(self) -> str:
        return self._console.text if self._console else ""

    # -- commands ----------------------------------------------------------

    def run(self, command: str, timeout: float = 30.0, check: bool = False) -> CommandResult:
        """Run `command` with the guest's sh; return (rc, combined output).

        The guest kills the command's process group after `timeout` seconds
        (rc 137); the harness itself gives up `timeout + 30` seconds later and
        then marks the guest broken. `check=True` raises RigError on rc != 0.
        Output is stdout+stderr with '\\r' removed, exactly as printed.
        """
        if self._proc is None:
            raise RigError("guest not started")
        if self._broken:
            raise RigError(f"guest is unusable: {self._broken}\n{self.describe()}")
        limit = max(1, int(timeout + 0.999))
        cid = secrets.token_hex(6)
        payload = base64.b64encode(command.encode()).decode()
        with self._lock:
            start = len(self._console)
            try:
                self._stdin.write(f"__VNET_CMD {cid} {limit} {payload}\n".encode())
                self._stdin.flush()
            except (OSError, ValueError) as e:
                self._broken = f"cannot write to the console: {e}"
                raise RigError(f"{self._broken}\n{self.describe()}") from e
            try:
                begin = self._console.wait_for(rf"__VNET_BEGIN_{cid}\n", limit + 30, start,
                                               describe=self.describe)
                done = self._console.wait_for(rf"__VNET_DONE_{cid} rc=(\d+)\n", limit + 30,
                                              begin.end(), describe=self.describe)
            except RigError as e:
                self._broken = f"no answer to {command!r}"
                raise RigError(f"guest command {command!r} (limit {limit}s) got no answer: {e}") from None
        result = CommandResult(int(done.group(1)), self._console.text[begin.end():done.start()])
        if check and result.rc != 0:
            raise RigError(f"guest command {command!r} failed with rc={result.rc}; output:\n"
                           f"{result.output}\n{self.describe(30)}")
        return result

    def check(self, command: str, timeout: float = 30.0) -> str:
        """`run(..., check=True)` returning only the output."""
        return self.run(command, timeout, check=True).output

    def dhcp(self, iface: str = "eth0", timeout: float = 30.0, extra: str = "-O mtu -O search") -> dict[str, str]:
        """Run udhcpc once (quit after the lease) and return the LEASE facts.

        Keys: ip mask router dns domain mtu hostname search serverid lease
        (router/dns/search comma-joined; empty string when not offered).
        """
        out = self.check(f"udhcpc -i {iface} -q -n -f -t 5 -T 2 {extra} -s /etc/udhcpc.sh", timeout)
        m = re.search(r"^LEASE (.*)$", out, re.M)
        if not m:
            raise RigError(f"udhcpc succeeded but printed no LEASE line:\n{out}")
        return parse_lease(m.group(1))

    def write_file(self, path: str, data: bytes | str, mode: str | None = None) -> None:
        """Create `path` (and its directory) in the guest with `data`, in console-sized chunks."""
        if isinstance(data, str):
            data = data.encode()
        quoted = shlex_quote(path)
        parent = shlex_quote(path.rsplit("/", 1)[0] or "/")
        self.check(f"mkdir -p {parent} && : > {quoted}")
        for i in range(0, len(data), 3000):
            chunk = base64.b64encode(data[i:i + 3000]).decode()
            self.check(f"echo {chunk} | base64 -d >> {quoted}")
        if mode:
            self.check(f"chmod {mode} {quoted}")

    def start_background(self, command: str, name: str) -> int:
        """Start `command` in the background with output to /tmp/bg/<name>.log.

        Returns the guest pid. Read the log with `background_output(name)` or
        wait for a line with `wait_background(name, regex, timeout)`.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"bad background name {name!r}")
        out = self.check(f"mkdir -p /tmp/bg; ({command}) </dev/null >/tmp/bg/{name}.log 2>&1 & echo $!")
        return int(out.strip().splitlines()[-1])

    def background_output(self, name: str) -> str:
        return self.run(f"cat /tmp/bg/{name}.log").output

    def wait_background(self, name: str, pattern: str, timeout: float = 30.0) -> re.Match:
        """Poll the background log of `name` until `pattern` matches."""
        rx = re.compile(pattern, re.M)
        last = {"text": ""}

        def probe():
            last["text"] = self.background_output(name)
            return rx.search(last["text"])

        try:
            return wait_for(probe, timeout, interval=0.1, message=f"/{pattern}/ in guest /tmp/bg/{name}.log")
        except TimeoutError as e:
            raise RigError(f"{e}; log so far:\n{last['text']}") from None

    # -- QEMU monitor ------------------------------------------------------

    def hmp(self, command: str, timeout: float = 10.0) -> str:
        """Run a human-monitor command (e.g. "info network") through QMP."""
        if not self.qmp_path:
            raise RigError("guest started without qmp")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")

            def call(obj):
                f.write(json.dumps(obj).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        raise RigError("QMP connection closed")
                    msg = json.loads(line)
                    if "return" in msg:
                        return msg["return"]
                    if "error" in msg:
                        raise RigError(f"QMP error: {msg['error']}")

            json.loads(f.readline())  # greeting
            call({"execute": "qmp_capabilities"})
            return call({"execute": "human-monitor-command", "arguments": {"command-line": command}})


def parse_lease(text: str) -> dict[str, str]:
    """Parse 'ip=.. mask=.. router=..' into a dict."""
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def shlex_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------
# vnet itself


def tshark(*args) -> str:
    """Runs tshark (installed by scripts/test) and returns its stdout; a missing tshark, a non-zero exit or any
    stderr line other than its warning about running as root fails the calling test."""
    if shutil.which("tshark") is None:
        raise RigError("tshark not found: apt-get install tshark (scripts/test installs it)")
    r = subprocess.run(["tshark", *map(str, args)], capture_output=True, text=True, timeout=60)
    complaints = [l for l in r.stderr.splitlines()
                  if l.strip() and "Running as user" not in l and "could be dangerous" not in l]
    if r.returncode != 0 or complaints:
        raise RigError(f"tshark {args}: rc={r.returncode}\n{r.stderr}")
    return r.stdout


def vnet_binary() -> Path:
    return Path(os.environ.get("VNET_BIN") or REPO_ROOT / ".build" / "debug" / "vnet")


class VnetProcess:
    """The vnet binary under test, started with `args`.

    `start()` waits (deadline) for a stdout line containing "vnet: ready" and
    fails with the log tails if vnet exits first. stdout/stderr are kept in
    <log_dir>/<name>.stdout.log / .stderr.log. Use as a context manager.
    """

    READY = "vnet: ready"

    def __init__(self, args: Sequence[str], *, log_dir: Path, name: str = "vnet",
                 binary: Path | str | None = None, ready_timeout: float = 30.0,
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.binary = Path(binary) if binary else vnet_binary()
        self.args = [str(a) for a in args]
        self.name = name
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_log = self.log_dir / f"{name}.stdout.log"
        self.stderr_log = self.log_dir / f"{name}.stderr.log"
        self.ready_timeout = ready_timeout
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.stdout: OutputCollector | None = None
        self.stderr: OutputCollector | None = None

    def start(self) -> "VnetProcess":
        if not self.binary.exists():
            raise RigError(f"vnet binary not found at {self.binary}: build it (swift build) or set VNET_BIN")
        env = dict(os.environ, **(self.env or {}))
        for log in (self.stdout_log, self.stderr_log):
            log.write_bytes(b"")
        self.proc = subprocess.Popen([str(self.binary), *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     cwd=self.cwd, preexec_fn=_die_with_parent)
        _track(self.proc.pid)
        self.stdout = OutputCollector(self.proc.stdout, self.stdout_log, f"{self.name} stdout")
        self.stderr = OutputCollector(self.proc.stderr, self.stderr_log, f"{self.name} stderr")
        try:
            self.stdout.wait_for(re.escape(self.READY), self.ready_timeout, describe=self.describe)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "VnetProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def describe(self) -> str:
        status = "not started"
        if self.proc is not None:
            if self.stdout and self.stdout.eof:
                # stdout closed: let vnet finish exiting so its status and stderr are complete.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
                if self.stderr:
                    self.stderr.join(5)
            rc = self.proc.poll()
            status = f"pid {self.proc.pid} " + ("running" if rc is None else f"exited with {rc}")
        return (f"--- {self.name} ({self.binary} {' '.join(self.args)}): {status} ---\n"
                f"--- tail of {self.stdout_log} ---\n{tail(self.stdout_log, 30)}\n"
                f"--- tail of {self.stderr_log} ---\n{tail(self.stderr_log, 30)}")

    def wait_for_line(self, pattern: str, timeout: float = 10.0, stream: str = "stdout",
                      start: int = 0) -> re.Match:
        """Wait for a line on vnet's stdout (or stderr) matching `pattern`."""
        collector = self.stdout if stream == "stdout" else self.stderr
        return wait_for_line(collector, pattern, timeout, start)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL (all by pid)."""
        if self.proc is None:
            return None
        rc = _kill_process(self.proc, term_timeout=timeout)
        for c in (self.stdout, self.stderr):
            if c:
                c.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                pipe.close()
        return rc


# --------------------------------------------------------------------------
# Host-side servers (all on loopback by default)


class _ThreadedServer:
    """Base: a daemon thread running `_serve()` until `stop()`."""

    def __init__(self):
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def _start_thread(self, name: str) -> None:
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread:
            self._thread.join(10)
        self._close_sockets()
        self._wake_r.close()
        self._wake_w.close()

    def _close_sockets(self) -> None:
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class DnsQuery:
    proto: str  # "udp" or "tcp"
    name: str
    qtype: int
    client: tuple


class DnsServer(_ThreadedServer):
    """A tiny authoritative DNS server for tests, on UDP and TCP, same port.

    `records` maps names (case-insensitive, no trailing dot) to an IPv4
    address or a list of them (A records); `aaaa` likewise for AAAA. Both
    dicts may be changed while the server runs. Names in neither dict get
    NXDOMAIN; a known name asked for another type gets NOERROR with no answer.
    Knobs: `truncate_udp` (answer UDP with TC=1 and no records, forcing TCP),
    `drop` (answer nothing), `ttl`. Every query is recorded in `queries`.
    """

    def __init__(self, records: dict[str, str | list[str]] | None = None, *,
                 aaaa: dict[str, str | list[str]] | None = None,
                 host: str = "127.0.0.1", port: int = 0, ttl: int = 60):
        super().__init__()
        self.records = dict(records or {})
        self.aaaa = dict(aaaa or {})
        self.host = host
        self.port = port
        self.ttl = ttl
        self.truncate_udp = False
        self.drop = False
        self.queries: list[DnsQuery] = []
        self._qlock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._conns: set[socket.socket] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def query_count(self) -> int:
        with self._qlock:
            return len(self.queries)

    def count(self, proto: str | None = None, name: str | None = None) -> int:
        with self._qlock:
            return sum(1 for q in self.queries
                       if (proto is None or q.proto == proto) and (name is None or q.name == name.lower()))

    def start(self) -> "DnsServer":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(20):  # UDP and TCP must share a port: retry on a clash
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            tcp.listen(64)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise RigError("could not bind a DNS server port for both UDP and TCP")
        self._start_thread(f"dns-{self.port}")
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            sel.register(self._udp, selectors.EVENT_READ, "udp")
            sel.register(self._tcp, selectors.EVENT_READ, "tcp")
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "udp":
                        with contextlib.suppress(OSError):
                            data, peer = self._udp.recvfrom(65535)
                            reply = self._answer(data, "udp", peer)
                            if reply is not None:
                                self._udp.sendto(reply, peer)
                    else:
                        with contextlib.suppress(OSError):
                            conn, peer = self._tcp.accept()
                            self._conns.add(conn)
                            threading.Thread(target=self._tcp_conn, args=(conn, peer), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, peer) -> None:
        try:
            conn.settimeout(30)
            while True:
                hdr = _recv_exact(conn, 2)
                if hdr is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", hdr)[0])
                if data is None:
                    return
                reply = self._answer(data, "tcp", peer)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            self._conns.discard(conn)
            conn.close()

    def _close_sockets(self) -> None:
        for s in [self._udp, self._tcp, *list(self._conns)]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()

    def _answer(self, query: bytes, proto: str, peer) -> bytes | None:
        if len(query) < 12:
            return None
        qid, flags, qd = struct.unpack("!HHH", query[:6])
        if flags & 0x8000:
            return None  # a response, not a query
        rd = flags & 0x0100
        if qd != 1:
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | 1, 0, 0, 0, 0)  # FORMERR
        labels, off = [], 12
        try:
            while True:
                n = query[off]
                if n == 0:
                    off += 1
                    break
                if n & 0xC0:
                    raise ValueError("compressed question")
                labels.append(query[off + 1:off + 1 + n].decode("ascii", "replace"))
                off += 1 + n
            qtype, qclass = struct.unpack("!HH", query[off:off + 4])
        except (IndexError, ValueError, struct.error):
            return struct.pack("!HHHHHH", qid, 0x8000 | rd | 1, 0, 0, 0, 0)
        question = query[12:off + 4]
        name = ".".join(labels).lower().rstrip(".")
        with self._qlock:
            self.queries.append(DnsQuery(proto, name, qtype, peer))
        if self.drop:
            return None
        rflags = 0x8000 | 0x0400 | rd | 0x0080  # QR AA RD RA
        if proto == "udp" and self.truncate_udp:
            return struct.pack("!HHHHHH", qid, rflags | 0x0200, 1, 0, 0, 0) + question
        records, aaaa = dict(self.records), dict(self.aaaa)
        known = {k.lower().rstrip("."): v for k, v in records.items()}
        known6 = {k.lower().rstrip("."): v for k, v in aaaa.items()}
        if name not in known and name not in known6:
            return struct.pack("!HHHHHH", qid, rflags | 3, 1, 0, 0, 0) + question  # NXDOMAIN
        answers = []
        if qtype == 1 and name in known and qclass == 1:
            for a in _as_list(known[name]):
                answers.append(struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl, 4) + socket.inet_aton(a))
        if qtype == 28 and name in known6 and qclass == 1:
            for a in _as_list(known6[name]):
                answers.append(struct.pack("!HHHIH", 0xC00C, 28, 1, self.ttl, 16)
                               + socket.inet_pton(socket.AF_INET6, a))
        return struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0) + question + b"".join(answers)


def _as_list(v: str | Iterable[str]) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class UdpEchoServer(_ThreadedServer):
    """UDP echo on `host` (default 127.0.0.1). Records each sender in `peers`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__()
        self.host, self.port = host, port
        self.peers: list[tuple] = []
        self._sock: socket.socket | None = None

    @property
    def count(self) -> int:
        return len(self.peers)

    def start(self) -> "UdpEchoServer":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((self.host, self.port))
        self.port = self._sock.getsockname()[1]
        self._start_thread(f"udpecho-{self.port}")
        return self

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            sel.register(self._sock, selectors.EVENT_READ, "udp")
            while True:
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    with contextlib.suppress(OSError):
                        data, peer = self._sock.recvfrom(65535)
                        self.peers.append(peer)
                        self._sock.sendto(data, peer)

    def _close_sockets(self) -> None:
        if self._sock:
            self._sock.close()


class _ReuseTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class TcpEchoServer:
    """TCP echo on `host` (default 127.0.0.1); each connection echoes until EOF."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.peers: list[tuple] = []
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "TcpEchoServer":
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.peers.append(self.client_address)
                with contextlib.suppress(OSError):
                    while True:
                        data = self.request.recv(65536)
                        if not data:
                            break
                        self.request.sendall(data)

        self._server = _ReuseTCPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"tcpecho-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class HttpServer:
    """HTTP/1.1 server on `host` (default 127.0.0.1) for fetch tests.

    Serves `pages` (path -> bytes, changeable at runtime) and, for any
    /bytes/<n>, n deterministic bytes (for large transfers). Records each
    request as (client address, method, path) in `requests`.
    """

    def __init__(self, pages: dict[str, bytes] | None = None, host: str = "127.0.0.1", port: int = 0):
        self.pages = dict(pages if pages is not None else {"/": b"hello from the vnet test host\n"})
        self.host, self.port = host, port
        self.requests: list[tuple] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def pattern_bytes(n: int) -> bytes:
        """The body served for /bytes/<n>."""
        block = bytes(range(256))
        return (block * (n // 256 + 1))[:n]

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def start(self) -> "HttpServer":
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.requests.append((self.client_address, "GET", self.path))
                m = re.fullmatch(r"/bytes/(\d+)", self.path)
                if m:
                    body = outer.pattern_bytes(int(m.group(1)))
                elif self.path in outer.pages:
                    body = outer.pages[self.path]
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            address_family = socket.AF_INET6 if ":" in outer.host else socket.AF_INET

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def read_counters(vnet) -> dict[str, int]:
    """Asks vnet for its counters (SIGUSR1) and parses the block it prints on stderr."""
    start = len(vnet.stderr)
    os.kill(vnet.pid, signal.SIGUSR1)
    vnet.wait_for_line(r"^vnet: end of counters$", stream="stderr", start=start)
    block = vnet.stderr.text[start:].split("vnet: counters\n", 1)[1]
    out = {}
    for line in block.splitlines():
        m = re.match(r"^  (\S+) (\d+)$", line)
        if not m:
            break
        out[m.group(1)] = int(m.group(2))
    return out
