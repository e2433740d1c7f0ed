"""Run untrusted Python (model-written code) confined, or refuse to run it at all.

The program runs under ``unshare --net --pid --fork --mount --mount-proc --kill-child`` with
``layerskip.evaluation.sandbox_init`` as PID 1 of the new namespaces. What it gets:

- **no network**: a new network namespace with no interface up (not even loopback);
- **no view of the host's processes**: a new PID namespace and its own /proc; the environment is
  replaced by a fixed minimal one;
- **a read-only filesystem** but for its working directory, a 16 MiB tmpfs that vanishes with it;
- **an unprivileged user id of its own** (random, above 2^20) with no capabilities and
  ``no_new_privs``, so it cannot remount, read other users' /proc entries or regain privileges;
- **a bounded number of processes**: ``RLIMIT_NPROC`` (``MAX_PROCESSES``), which the kernel
  enforces for non-root ids; since the id is unique to the run, the bound is per sandbox. Plus
  limits on CPU time, address space per process, file size and open files;
- **the whole process tree ends with it**: when PID 1 exits, or is killed on a timeout (the
  parent kills ``unshare``, whose ``--kill-child`` kills PID 1), the kernel kills every process
  of the namespace, including detached ``setsid`` grandchildren;
- **success only from the end of the program**: a random token goes to the program on stdin and
  the harness writes it back as the last line of stdout after the program (the tests) ran, so an
  early ``os._exit(0)``/``sys.exit(0)`` or a printed "passed" does not count. The token lives only
  in the interpreter's memory, so code that introspects the interpreter could still fake it, as it
  could fake a test (an object whose ``__eq__`` is always true): the sandbox contains code, it
  does not make a malicious program's own verdict trustworthy.

It needs Linux, root and util-linux's ``unshare``; without them ``require_sandbox`` raises one
``LayerskipError`` line naming what is missing, and nothing runs unconfined.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layerskip.errors import LayerskipError

MAX_PROCESSES = 16
MEMORY_LIMIT = 1 << 30  # address space per process
FILE_LIMIT = 1 << 20  # largest file (stdout and stderr included)
TMPFS_LIMIT = 16 << 20
SETUP_FAILED = 125  # sandbox_init's status when it could not build the sandbox
INIT = Path(__file__).with_name("sandbox_init.py")
NAMESPACES = ("--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child")
HARNESS = """import os as _os, sys as _sys
def _run(token, source):
    exec(compile(source, "solution.py", "exec"), {{"__name__": "__main__"}})
    _sys.stdout.flush()
    _os.write(1, ("\\n" + token + "\\n").encode())
_run(_sys.stdin.readline().strip(), {source!r})
"""


@dataclass(frozen=True)
class SandboxResult:
    completed: bool  # the program ran to its end and exited 0
    timed_out: bool
    returncode: int | None
    stderr: str  # its tail


def _unshare() -> str | None:
    return shutil.which("unshare", path=os.pathsep.join(["/usr/bin", "/bin", os.environ.get("PATH", "")]))


@functools.cache
def missing_mechanism() -> str | None:
    """What this machine lacks to run the sandbox (None when it has everything)."""
    if not sys.platform.startswith("linux"):
        return f"Linux namespaces (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"root, to mount and switch user ids inside new namespaces (running as uid {os.geteuid()})"
    unshare = _unshare()
    if unshare is None:
        return "util-linux's unshare on PATH"
    try:
        probe = subprocess.run([unshare, *NAMESPACES, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"working network, PID and mount namespaces ({exc})"
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return f"network, PID and mount namespaces ({reason})"
    return None


def require_sandbox() -> None:
    """One error line when model-written code cannot be confined here."""
    missing = missing_mechanism()
    if missing:
        raise LayerskipError(f"`allow_code_execution`: refusing to run model-written code unconfined; the sandbox needs {missing}")


def _tail(path: Path, limit: int = 4096) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace")


def run_sandboxed(source: str, timeout: float) -> SandboxResult:
    """Run the Python ``source`` confined (see the module docstring) for at most ``timeout`` seconds."""
    require_sandbox()
    token = secrets.token_hex(16)
    uid = (1 << 20) + secrets.randbelow(1 << 30)
    with tempfile.TemporaryDirectory(prefix="layerskip-sandbox-") as root:
        os.chmod(root, 0o711)  # the worker's id must reach its working directory
        workdir = Path(root) / "work"
        workdir.mkdir()
        (workdir / "program.py").write_text(HARNESS.format(source=source), encoding="utf-8")
        stdout, stderr = Path(root) / "stdout", Path(root) / "stderr"
        command = [_unshare(), *NAMESPACES, sys.executable, "-I", "-S", str(INIT), str(workdir), str(uid),
                   str(MAX_PROCESSES), str(int(timeout) + 1), str(MEMORY_LIMIT), str(FILE_LIMIT), str(TMPFS_LIMIT)]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=root,
                                    env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        try:
            proc.stdin.write((token + "\n").encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # unshare: --kill-child takes PID 1, and the kernel the rest of the namespace
            proc.wait()
            timed_out = True
        lines = _tail(stdout).splitlines()
        error = _tail(stderr).strip()
    if proc.returncode == SETUP_FAILED and error.startswith("sandbox:"):
        raise LayerskipError(f"`allow_code_execution`: {error.splitlines()[-1]}")
    completed = not timed_out and proc.returncode == 0 and bool(lines) and lines[-1] == token
    return SandboxResult(completed, timed_out, None if timed_out else proc.returncode, error)
