"""Run a HumanEval completion against its tests, confined (``layerskip.evaluation.sandbox``).

Only called when the user passes ``--allow_code_execution``: model-written code is untrusted.
A completion passes only when the problem's ``check()`` ran to its end inside the sandbox.
"""

from __future__ import annotations

from typing import Any

from layerskip.evaluation.sandbox import run_sandboxed


def check_program(problem: dict[str, Any], completion: str) -> str:
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_tests(problem: dict[str, Any], completion: str, timeout: float = 5.0) -> dict[str, Any]:
    """``{"passed": bool, "result": "passed" | "timed out" | "failed: ..."}``.

    Raises ``LayerskipError`` (one line) where the sandbox cannot be built on this machine.
    """
    result = run_sandboxed(check_program(problem, completion), timeout)
    if result.timed_out:
        return {"passed": False, "result": "timed out"}
    if result.completed:
        return {"passed": True, "result": "passed"}
    last = (result.stderr.splitlines() or [f"exit status {result.returncode} before the tests finished"])[-1]
    return {"passed": False, "result": f"failed: {last[:200]}"}


#: Codex/HumanEval stop sequences: a completion ends where the model starts a new top-level block.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def truncate_completion(text: str) -> str:
    """The function body only: cut at the first top-level stop sequence."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]
