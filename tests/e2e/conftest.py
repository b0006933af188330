"""pytest fixtures for vnet's end-to-end tests (see scripts/guest/README.md).

Skips happen only when the environment truly cannot host the rig (not Linux:
no QEMU system emulator or TUN device can exist). Anything installable that is
missing is a loud failure naming what to install.

Strict mode (`--strict-skips` or VNET_STRICT_SKIPS=1; scripts/test turns it on):
a skip fails its test unless tests/e2e/SKIP-ALLOWLIST names that test and the
skip's message contains the entry's captured error (so an allowed skip cannot
hide a different one). The terminal summary prints the list and which entries
were used. See skip_allowlist.py for the file's format.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rig  # noqa: E402
import skip_allowlist  # noqa: E402

APT_PACKAGES = rig.REPO_ROOT / "scripts" / "guest" / "APT-PACKAGES"


def pytest_addoption(parser):
    parser.addoption("--strict-skips", action="store_true", default=False,
                     help="a skip fails its test unless tests/e2e/SKIP-ALLOWLIST allows it (VNET_STRICT_SKIPS=1)")


def _strict(config) -> bool:
    return bool(config.getoption("--strict-skips", default=False)) or os.environ.get("VNET_STRICT_SKIPS") == "1"


def pytest_configure(config):
    # Always show skip reasons in the summary, so a skipped rig is never silent.
    chars = config.option.reportchars or ""
    if "s" not in chars and "a" not in chars and "A" not in chars:
        config.option.reportchars = chars + "s"
    config._vnet_skips = skip_allowlist.StrictSkips(skip_allowlist.load()) if _strict(config) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    strict = item.config._vnet_skips
    if strict is not None:
        strict.judge(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    strict = collector.config._vnet_skips
    if strict is not None:
        strict.judge(outcome.get_result())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    strict = config._vnet_skips
    if strict is not None:
        for line in strict.summary_lines():
            terminalreporter.write_line(line)


def _qemu_blocker() -> str | None:
    """Why a QEMU guest cannot exist here, or None. Missing packages are not a reason."""
    if not sys.platform.startswith("linux"):
        return f"the guest rig needs Linux (this is {sys.platform})"
    return None


def _tun_blocker() -> str | None:
    """Why /dev/net/tun cannot exist here, or None (creating the node if needed)."""
    if not sys.platform.startswith("linux"):
        return f"TUN needs Linux (this is {sys.platform})"
    path = "/dev/net/tun"
    if not os.path.exists(path):
        try:
            os.makedirs("/dev/net", exist_ok=True)
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
        except OSError as e:
            return f"{path} is missing and cannot be created ({e})"
    try:
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return f"{path} cannot be opened ({e}): this container has no TUN device"
    return None


def _guest_image(generic: bool) -> rig.GuestImage:
    reason = _qemu_blocker()
    if reason:
        print(f"\nSKIP e2e guest tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 not found: apt-get install the packages in "
                    f"{APT_PACKAGES.relative_to(rig.REPO_ROOT)}", pytrace=False)
    try:
        return rig.build_guest_image(generic=True) if generic else rig.build_guest_image()
    except rig.RigError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def guest_image() -> rig.GuestImage:
    """Kernel + initramfs, built (or taken from cache) once per session."""
    return _guest_image(generic=False)


@pytest.fixture(scope="session")
def generic_guest_image() -> rig.GuestImage:
    """The generic-kernel image (drivers of every QEMU NIC model), built or taken from cache once per session."""
    return _guest_image(generic=True)


@pytest.fixture(scope="session")
def tun_available() -> None:
    """Skips (with the reason) only if /dev/net/tun truly cannot exist here."""
    reason = _tun_blocker()
    if reason:
        print(f"\nSKIP TUN-based e2e tests: {reason}", file=sys.stderr)
        pytest.skip(reason)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


def _log_dir_for(name: str) -> Path:
    root = Path(os.environ.get("VNET_E2E_LOGDIR") or rig.DEFAULT_LOG_ROOT)
    d = root / _safe_name(name)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def workdir():
    """A short per-test directory under /tmp (for unix sockets), removed afterwards."""
    with rig.removing(rig.short_tempdir()) as d:
        yield d


@pytest.fixture(scope="module")
def module_workdir():
    """Like `workdir`, shared by one test module (e.g. for a module-scoped guest)."""
    with rig.removing(rig.short_tempdir()) as d:
        yield d


@pytest.fixture
def log_dir(request) -> Path:
    """Per-test log directory: <repo>/.cache/e2e-logs/<test> (or $VNET_E2E_LOGDIR). Kept after the run."""
    return _log_dir_for(request.node.nodeid)


@pytest.fixture(scope="module")
def module_log_dir(request) -> Path:
    """Per-module log directory, kept after the run."""
    return _log_dir_for(request.module.__name__)


@pytest.fixture
def dns_server():
    with rig.DnsServer() as server:
        yield server


@pytest.fixture
def udp_echo():
    with rig.UdpEchoServer() as server:
        yield server


@pytest.fixture
def tcp_echo():
    with rig.TcpEchoServer() as server:
        yield server


@pytest.fixture
def http_server():
    with rig.HttpServer() as server:
        yield server
