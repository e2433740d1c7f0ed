"""Hostile HumanEval completions through ``run_tests``: each must be contained.

Each hostile completion attempts its attack and reports what it got; the problem's ``check``
asserts it got nothing, so a pass means "ran, and was contained" (a sandbox that ran nothing
would fail these tests, not pass them).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from pathlib import Path

import pytest

from layerskip.errors import LayerskipError
from layerskip.evaluation import sandbox
from layerskip.evaluation.execution import run_tests

MISSING = sandbox.missing_mechanism()
needs_sandbox = pytest.mark.skipif(MISSING is not None, reason=f"this machine lacks {MISSING}")


def problem(expected: str) -> dict:
    """``def f()`` whose check asserts that ``f()`` returns ``expected`` (a Python literal)."""
    return {"prompt": "def f():\n", "entry_point": "f",
            "test": f"def check(candidate):\n    assert candidate() == {expected}, candidate()\n"}


def body(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.strip("\n").splitlines())


@needs_sandbox
def test_correct_wrong_and_timeout():
    assert run_tests(problem("1"), body("return 1")) == {"passed": True, "result": "passed"}
    wrong = run_tests(problem("1"), body("return 2"))
    assert not wrong["passed"] and "AssertionError" in wrong["result"]
    assert run_tests(problem("1"), body("while True:\n    pass"), timeout=1.0)["result"] == "timed out"


@needs_sandbox
@pytest.mark.parametrize("code", [
    "import os\nos._exit(0)",
    "import sys\nsys.exit(0)",
    "import os\nprint('passed')\nos._exit(0)",
    "raise SystemExit",
])
def test_exiting_before_the_tests_is_not_a_pass(code):
    result = run_tests(problem("1"), body(code) + body("return 1"))
    assert not result["passed"] and result["result"].startswith("failed")


@needs_sandbox
def test_no_network_even_to_a_local_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
except OSError:
    return "blocked"
return "connected"
"""
        assert run_tests(problem("'blocked'"), body(code))["passed"]
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()


@needs_sandbox
def test_no_view_of_the_parents_processes_environment_or_cwd(monkeypatch):
    secret = secrets.token_hex(8)
    monkeypatch.setenv("LAYERSKIP_TEST_SECRET", secret)
    code = f"""
import os
leaks = [k for k, v in os.environ.items() if "{secret}" in v]
pids = [p for p in os.listdir("/proc") if p.isdigit()] + [str(os.getppid())]
for pid in pids:
    try:
        if b"{secret}" in open(f"/proc/{{pid}}/environ", "rb").read():
            leaks.append("environ " + pid)
    except OSError:
        pass
    try:
        if os.readlink(f"/proc/{{pid}}/cwd") == {os.getcwd()!r}:
            leaks.append("cwd " + pid)
    except OSError:
        pass
if len(pids) > {sandbox.MAX_PROCESSES + 2}:
    leaks.append(f"sees {{len(pids)}} processes")
return leaks
"""
    result = run_tests(problem("[]"), body(code))
    assert result["passed"], result


@needs_sandbox
def test_only_its_own_directory_is_writable(tmp_path):
    targets = [str(tmp_path / "escape.txt"), f"/tmp/layerskip-escape-{secrets.token_hex(4)}",
               str(Path.cwd() / f"escape-{secrets.token_hex(4)}"), "/dev/shm/escape"]
    code = f"""
import os
written = []
for path in {targets!r}:
    try:
        with open(path, "w") as handle:
            handle.write("x")
        written.append(path)
    except OSError:
        pass
with open("own.txt", "w") as handle:  # its working directory is writable
    handle.write("ok")
return written
"""
    result = run_tests(problem("[]"), body(code))
    assert result["passed"], result
    assert not [t for t in targets if os.path.exists(t)]


@needs_sandbox
def test_a_fork_storm_is_bounded():
    code = """
import os, time
started = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    started += 1
return started < 200
"""
    result = run_tests(problem("True"), body(code), timeout=20)
    assert result["passed"], result


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@needs_sandbox
def test_a_detached_grandchild_is_killed_at_the_timeout():
    marker = f"{4000 + secrets.randbelow(1000)}.{secrets.randbelow(10 ** 6):06d}"  # a sleep duration no one else uses
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sleep", ["sleep", "{marker}"])
    os._exit(0)
time.sleep(600)
"""
    results: list[dict] = []
    runner = threading.Thread(target=lambda: results.append(run_tests(problem("None"), body(code), timeout=4)))
    runner.start()
    seen = False
    while runner.is_alive() and not seen:
        seen = bool(_processes_with(marker))
    runner.join()
    assert results == [{"passed": False, "result": "timed out"}]
    assert seen, "the grandchild never started"
    assert _processes_with(marker) == []


def test_refuses_instead_of_running_unconfined(monkeypatch):
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    sandbox.missing_mechanism.cache_clear()
    try:
        with pytest.raises(LayerskipError, match="refusing to run model-written code unconfined.*root"):
            run_tests(problem("1"), body("return 1"))
    finally:
        monkeypatch.undo()
        sandbox.missing_mechanism.cache_clear()
