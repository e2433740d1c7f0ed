"""Run a HumanEval completion against its tests in a separate, resource-limited process.

Only called when the user passes ``--allow_code_execution``: model-written code is untrusted.
Each program runs in a fresh ``python -I`` subprocess in an empty temporary directory, with a
wall-clock timeout and limits on CPU time, address space, file size and open files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

MEMORY_LIMIT = 1 << 30  # 1 GiB
FILE_LIMIT = 1 << 20


def _limits(cpu_seconds: int) -> None:  # runs in the child before exec
    import resource

    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    os.setsid()


def check_program(problem: dict[str, Any], completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_tests(problem: dict[str, Any], completion: str, timeout: float = 5.0) -> dict[str, Any]:
    """``{"passed": bool, "result": "passed" | "timed out" | "failed: ..."}``."""
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(check_program(problem, completion))
        try:
            proc = subprocess.run(
                [sys.executable, "-I", path],
                cwd=workdir,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                preexec_fn=lambda: _limits(int(timeout) + 1),
            )
        except subprocess.TimeoutExpired:
            return {"passed": False, "result": "timed out"}
    if proc.returncode == 0:
        return {"passed": True, "result": "passed"}
    last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
    return {"passed": False, "result": f"failed: {last[:200]}"}


#: Codex/HumanEval stop sequences: a completion ends where the model starts a new top-level block.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def truncate_completion(text: str) -> str:
    """The function body only: cut at the first top-level stop sequence."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]
