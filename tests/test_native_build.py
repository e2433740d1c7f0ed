"""The native kernels' build (layerskip.kernels.native): one build per machine shared by installs, no hang after
a killed build or a dead process's lock, one build when processes start together, one line and the
fallback when a build fails, times out or stays locked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerskip.kernels import native, policy
from layerskip.kernels.native import Build, BuildError

needs_buildable = pytest.mark.skipif(
    not policy.probe().native_isa or policy.cpu_compiler_problem() is not None, reason="the kernels cannot be built here")

LOAD = ("from layerskip.kernels import policy; p = policy.native_kernels_problem(); "
        "print('LOADED' if p is None else 'PROBLEM ' + p)")


def start(root: Path, code: str = LOAD) -> subprocess.Popen:
    env = dict(os.environ, LAYERSKIP_KERNELS=str(root))
    env.pop("LAYERSKIP_NATIVE", None)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("a command waited on the kernel build past its bound")


@needs_buildable
def test_a_build_killed_midway_then_two_processes_at_once_build_once_and_load(tmp_path) -> None:
    root = tmp_path / "kernels"
    first = start(root)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".") and "partial" in p.name for p in root.glob("*")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no build started"
        time.sleep(0.1)
    time.sleep(1.0)  # the compiler is running
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert not [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]  # nothing that looks finished

    both = [start(root), start(root)]
    results = [finish(p) for p in both]
    assert all(out.strip() == "LOADED" for out, _ in results), results
    builds = sum("building layerskip's CPU kernels" in err for _, err in results)
    assert builds == 1, results
    assert sum(d.is_dir() and not d.name.startswith(".") for d in root.iterdir()) == 1


@needs_buildable
def test_a_second_environment_with_the_same_torch_uses_the_same_build(tmp_path) -> None:
    """Another virtual environment (its own interpreter path and prefix, the same torch) finds this
    machine's build: it compiles nothing."""
    assert policy.native_kernels()  # this environment's build exists
    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True, timeout=120)
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and (Path(p) / "torch").is_dir())
    other_site = next((other / "lib").glob("python3*/site-packages"))
    (other_site / "shared.pth").write_text(f"{site}\n{Path(native.__file__).parents[1]}\n")
    code = LOAD + "; from layerskip.kernels import native; print(native.current_build(policy.probe().cpu_flags).key)"
    env = dict(os.environ, LAYERSKIP_KERNELS=str(native.kernels_root()))
    env.pop("LAYERSKIP_NATIVE", None)
    done = subprocess.run([str(other / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.split() == ["LOADED", native.current_build(policy.probe().cpu_flags).key], done.stderr
    assert "building" not in done.stderr


def holder(lock: Path) -> subprocess.Popen:
    """A process holding ``lock`` (flock) until it is killed."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def fake_compile(calls: list[Path]):
    def compile_into(directory: Path) -> None:
        calls.append(directory)
        (directory / f"{native.LIBRARY}.so").write_bytes(b"built")
    return compile_into


def test_the_lock_of_a_dead_process_is_free_at_once(tmp_path, monkeypatch) -> None:
    build = Build("k", tmp_path / "k")
    process = holder(build.lock)
    process.kill()
    process.wait(timeout=30)
    assert build.lock.exists()  # the file stays behind, its lock does not
    calls: list[Path] = []
    monkeypatch.setattr(native, "_compile", fake_compile(calls))
    began = time.monotonic()
    native.ensure_built(build, wait_s=60)
    assert time.monotonic() - began < 30 and len(calls) == 1 and build.library.read_bytes() == b"built"


def test_a_build_locked_past_the_wait_is_a_reason_and_the_fallback(tmp_path, monkeypatch, capsys) -> None:
    build = Build("k", tmp_path / "k")
    process = holder(build.lock)
    try:
        monkeypatch.setattr(native, "LOCK_WAIT_S", 0.5)
        monkeypatch.setattr(native, "_compile", fake_compile([]))
        problem = native.load(build)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert problem is not None and "another process has been building them" in problem
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"layerskip: native CPU kernels unavailable ({problem}); {native.FALLBACK}"
    assert not build.directory.exists()


def test_a_waiting_process_loads_what_the_holder_built(tmp_path, monkeypatch) -> None:
    build = Build("k", tmp_path / "k")
    process = holder(build.lock)
    calls: list[Path] = []
    monkeypatch.setattr(native, "_compile", fake_compile(calls))
    try:
        build.directory.mkdir()
        (build.directory / f"{native.LIBRARY}.so").write_bytes(b"theirs")
        process.kill()  # the holder finishes (its lock goes with it)
        native.ensure_built(build, wait_s=60)
    finally:
        process.wait(timeout=30)
    assert calls == [] and build.library.read_bytes() == b"theirs"


def test_a_build_that_times_out_or_fails_is_one_line(tmp_path, monkeypatch) -> None:
    build = Build("k", tmp_path / "k")
    monkeypatch.setattr(native, "_BUILD_SCRIPT", "import time; time.sleep(60)")
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 1.0)
    began = time.monotonic()
    with pytest.raises(BuildError, match="longer than 1 s"):
        native.ensure_built(build)
    assert time.monotonic() - began < 30
    monkeypatch.setattr(native, "_BUILD_SCRIPT", "raise SystemExit('x.cpp:3:1: error: expected a declaration')")
    with pytest.raises(BuildError, match=r"^building layerskip/kernels/csrc failed: x\.cpp:3:1: error: expected a declaration$"):
        native.ensure_built(build)
    assert not build.directory.exists() and not list(tmp_path.glob(".k.partial-*"))  # nothing half-written kept


def test_rebuild_replaces_an_existing_build(tmp_path, monkeypatch) -> None:
    build = Build("k", tmp_path / "k")
    calls: list[Path] = []
    monkeypatch.setattr(native, "_compile", fake_compile(calls))
    native.ensure_built(build)
    native.ensure_built(build)
    assert len(calls) == 1
    native.remove(build)
    assert not build.directory.exists()
    native.ensure_built(build)
    assert len(calls) == 2 and build.library.is_file()


def test_the_key_follows_what_makes_the_binary(monkeypatch) -> None:
    flags = frozenset({"avx512_bf16", "avx512bw"})
    key = native.build_key("c++", flags)
    assert native.build_key("c++", flags | {"amx_bf16"}) != key
    monkeypatch.setattr(native, "CFLAGS", (*native.CFLAGS, "-g"))
    assert native.build_key("c++", flags) != key
    monkeypatch.undo()
    monkeypatch.setattr(native, "source_digest", lambda: "0" * 64)
    assert native.build_key("c++", flags) != key
    monkeypatch.undo()
    monkeypatch.setattr(sys, "executable", "/elsewhere/bin/python")
    assert native.build_key("c++", flags) == key  # not the environment's path


@pytest.mark.skipif(not policy.probe().native_isa, reason="no AVX-512 BF16: nothing to rebuild")
def test_env_rebuild_builds_once_even_when_the_build_fails(tmp_path, monkeypatch, capsys) -> None:
    """``layerskip env --rebuild True``: the old build is dropped and one build runs; a failure is its
    answer for the process (no second attempt when the decisions are printed)."""
    calls: list[Path] = []

    def failing(directory: Path) -> None:
        calls.append(directory)
        raise BuildError("building layerskip/csrc failed: x.cpp:1:1: error: nope")

    stale = native.current_build(policy.probe().cpu_flags)
    monkeypatch.setenv("LAYERSKIP_KERNELS", str(tmp_path))
    monkeypatch.delenv("LAYERSKIP_NATIVE", raising=False)
    monkeypatch.setattr(native, "_compile", failing)
    monkeypatch.setattr(policy, "cpu_compiler_problem", lambda: None)
    monkeypatch.setattr(native, "ninja", lambda: True)
    policy._native_kernels_problem.cache_clear()
    try:
        old = tmp_path / stale.key
        old.mkdir()
        (old / f"{native.LIBRARY}.so").write_bytes(b"old")
        problem = policy.rebuild_native_kernels()
        assert problem == "building layerskip/csrc failed: x.cpp:1:1: error: nope" and not old.exists()
        assert policy.native_kernels_problem() == problem and len(calls) == 1
        assert capsys.readouterr().err.count("native CPU kernels unavailable") == 1
    finally:
        monkeypatch.undo()
        policy._native_kernels_problem.cache_clear()
    policy.native_kernels_problem()  # this machine's own answer again, for the tests after this one
