"""The strict-skip mode itself (conftest.py + skip_allowlist.py), run on small throwaway test files.

Each case runs a real pytest in a subprocess with this directory's conftest loaded as a plugin and checks its
exit status and summary: an unlisted skip fails, a listed skip with its captured error passes (and is printed),
a listed test whose skip says something else fails, and a malformed list stops the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import skip_allowlist

E2E = Path(__file__).resolve().parent

CASES = '''
import pytest

def test_passes():
    pass

def test_tool_missing():
    pytest.skip("frobtool: cannot open /dev/frob: No such device")

@pytest.fixture
def needs_thing():
    pytest.skip("thing: unavailable here")

def test_fixture_skips(needs_thing):
    pass
'''


def run_pytest(workdir: Path, allowlist: str | None, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    tests = workdir / "test_cases.py"
    tests.write_text(CASES)
    # The conftest under test, loaded by path as a plugin (its module name must not clash with this one).
    (workdir / "conftest.py").write_text(
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(E2E)!r})\n"
        f"spec = importlib.util.spec_from_file_location('vnet_e2e_conftest', {str(E2E / 'conftest.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "globals().update({k: v for k, v in vars(m).items() if k.startswith('pytest_')})\n")
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")   # only the conftest under test (and a quick start)
    env.pop("VNET_STRICT_SKIPS", None)
    if allowlist is not None:
        (workdir / "ALLOW").write_text(allowlist)
        env[skip_allowlist.ALLOWLIST_ENV] = str(workdir / "ALLOW")
    else:
        env[skip_allowlist.ALLOWLIST_ENV] = str(workdir / "no-such-file")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", str(tests), *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def test_without_strict_mode_skips_are_only_reported(workdir):
    r = run_pytest(Path(workdir), None)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 2 skipped" in r.stdout, r.stdout


def test_an_unlisted_skip_fails_the_run(workdir):
    r = run_pytest(Path(workdir), None, "--strict-skips")
    assert r.returncode == 1, r.stdout + r.stderr
    # A skip in the test body fails the test; a skip in a fixture fails its setup (an error).
    assert "1 failed, 1 passed, 1 error" in r.stdout, r.stdout
    assert "REFUSED test_cases.py::test_tool_missing: Skipped: frobtool: cannot open /dev/frob" in r.stdout, r.stdout
    assert "REFUSED test_cases.py::test_fixture_skips" in r.stdout, r.stdout
    assert "strict skips: 0 allowed, 2 refused" in r.stdout, r.stdout


def test_the_environment_variable_turns_strict_mode_on(workdir):
    r = run_pytest(Path(workdir), None, env_extra={"VNET_STRICT_SKIPS": "1"})
    assert r.returncode == 1 and "1 failed, 1 passed, 1 error" in r.stdout, r.stdout


def test_a_listed_skip_with_its_captured_error_passes_and_is_printed(workdir):
    allow = ("# test list\n"
             "test: test_cases.py::test_tool_missing\n"
             "reason: the frob device cannot exist in this container\n"
             "error: cannot open /dev/frob: No such device\n\n"
             "test: test_cases.py::test_fixture_skips\n"
             "reason: no thing here\n"
             "error: thing: unavailable here\n")
    r = run_pytest(Path(workdir), allow, "--strict-skips")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 2 skipped" in r.stdout, r.stdout
    assert ("test_cases.py::test_tool_missing: SKIPPED (allowed); reason: the frob device cannot exist in this "
            "container; error: cannot open /dev/frob: No such device") in r.stdout, r.stdout
    assert "strict skips: 2 allowed, 0 refused" in r.stdout, r.stdout


def test_a_listed_test_that_skips_for_another_reason_fails(workdir):
    allow = ("test: test_cases.py::test_tool_missing\n"
             "reason: the frob device cannot exist in this container\n"
             "error: permission denied\n")
    r = run_pytest(Path(workdir), allow, "--strict-skips")
    assert r.returncode == 1, r.stdout
    assert "its allow-list entry expects the error 'permission denied'" in r.stdout, r.stdout


@pytest.mark.parametrize("text, message", [
    ("test: a.py::t\nreason: r\n", "entry lacks error"),
    ("test: a.py::t\nreason: r\nerror: e\n\ntest: a.py::t\nreason: r\nerror: e\n", "listed twice"),
    ("test: a.py::t\nwhy: r\n", "expected one of"),
])
def test_a_malformed_list_is_refused(text, message):
    with pytest.raises(skip_allowlist.AllowListError, match=message):
        skip_allowlist.parse(text)


def test_the_repository_list_parses_and_names_real_tests():
    entries = skip_allowlist.load(skip_allowlist.ALLOWLIST_PATH)
    assert len(entries) <= 5, "keep the allow-list short"
    for e in entries:
        path, _, name = e.test.partition("::")
        source = (E2E / path).read_text()
        assert f"def {name.split('[')[0]}(" in source, e
        assert e.error in source, f"{e.test}: the captured error is not what the test's skip says"
