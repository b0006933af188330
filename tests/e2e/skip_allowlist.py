"""The e2e suite's skip allow-list and the strict-skip judge (used by conftest.py).

In strict mode a skipped test (or module) is turned into a failure unless
tests/e2e/SKIP-ALLOWLIST has an entry for it whose captured error appears in
the skip's message. An xfail counts as a skip (a test that cannot fail proves
nothing); a module skipped at collection becomes a collection error (scripts/test
passes --continue-on-collection-errors so the other modules still run). The file is a list of blank-line separated stanzas; lines
starting with '#' are comments:

    test: test_file.py::test_name          (the pytest node id, without its directory)
    reason: why this test cannot run where it is allowed to skip
    error: the error text the skip reports (what the tool that cannot run said)

Every key is required and each test appears once: a stanza that is incomplete
or repeated is an error that stops the run, so the list stays short and honest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ALLOWLIST_PATH = Path(__file__).resolve().parent / "SKIP-ALLOWLIST"
ALLOWLIST_ENV = "VNET_SKIP_ALLOWLIST"   # another file instead (tests of this module use it)
KEYS = ("test", "reason", "error")


@dataclass(frozen=True)
class Entry:
    test: str
    reason: str
    error: str


class AllowListError(Exception):
    pass


def parse(text: str, source: str = "SKIP-ALLOWLIST") -> list[Entry]:
    entries: list[Entry] = []
    stanza: dict[str, str] = {}
    start = 0

    def close(line_no: int) -> None:
        nonlocal stanza
        if not stanza:
            return
        missing = [k for k in KEYS if not stanza.get(k)]
        if missing:
            raise AllowListError(f"{source}:{start}: entry lacks {', '.join(missing)}")
        if any(e.test == stanza["test"] for e in entries):
            raise AllowListError(f"{source}:{start}: {stanza['test']} is listed twice")
        entries.append(Entry(stanza["test"], stanza["reason"], stanza["error"]))
        stanza = {}

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line:
            close(n)
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in KEYS:
            raise AllowListError(f"{source}:{n}: expected one of {', '.join(k + ':' for k in KEYS)}, got {line!r}")
        if key in stanza:
            raise AllowListError(f"{source}:{n}: {key} given twice in one entry")
        if not stanza:
            start = n
        stanza[key] = value.strip()
    close(len(text.splitlines()) + 1)
    return entries


def load(path: Path | None = None) -> list[Entry]:
    path = path or Path(os.environ.get(ALLOWLIST_ENV) or ALLOWLIST_PATH)
    if not path.exists():
        return []
    return parse(path.read_text(), source=str(path.name))


def short_id(nodeid: str) -> str:
    """'tests/e2e/test_x.py::test_y[p]' -> 'test_x.py::test_y[p]' (independent of where pytest ran)."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1] + sep + rest


def skip_message(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    wasxfail = getattr(report, "wasxfail", None)
    if wasxfail is not None:
        return f"xfail: {wasxfail}"
    return str(longrepr)


@dataclass
class StrictSkips:
    entries: list[Entry]
    allowed: list[tuple[str, Entry]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)

    def entry_for(self, nodeid: str) -> Entry | None:
        sid = short_id(nodeid)
        return next((e for e in self.entries if e.test == sid), None)

    def judge(self, report) -> None:
        """Turns a skipped report into a failure unless the allow-list covers it."""
        if report.outcome != "skipped":
            return
        message = skip_message(report)
        entry = self.entry_for(report.nodeid)
        if entry is not None and entry.error in message:
            self.allowed.append((report.nodeid, entry))
            return
        if entry is None:
            why = "it is not on tests/e2e/SKIP-ALLOWLIST"
        else:
            why = f"its allow-list entry expects the error {entry.error!r}"
        report.outcome = "failed"
        report.longrepr = (f"strict skips: {report.nodeid} skipped ({message}) and {why}; "
                           "fix what is missing, or add an entry with the reason and the captured error")
        if hasattr(report, "wasxfail"):
            del report.wasxfail
        self.refused.append((report.nodeid, message))

    def summary_lines(self) -> list[str]:
        lines = [f"strict skips: {len(self.entries)} allow-listed test(s) in tests/e2e/SKIP-ALLOWLIST"]
        used = {e.test for _, e in self.allowed}
        for e in self.entries:
            state = "SKIPPED (allowed)" if e.test in used else "not skipped"
            lines.append(f"  {e.test}: {state}; reason: {e.reason}; error: {e.error}")
        for nodeid, message in self.refused:
            lines.append(f"  REFUSED {nodeid}: {message}")
        lines.append(f"strict skips: {len(self.allowed)} allowed, {len(self.refused)} refused (a refused skip fails the run)")
        return lines
