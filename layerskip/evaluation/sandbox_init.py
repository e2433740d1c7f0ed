"""PID 1 of a code-execution sandbox (see ``layerskip.evaluation.sandbox``); standard library only.

Started by ``unshare --net --pid --fork --mount --mount-proc --kill-child`` as root, so it already
sits in fresh network, PID and mount namespaces with a /proc that shows only its own processes.
Here it:

1. mounts a small tmpfs over the work directory (the program's only writable place) and copies
   the program into it;
2. remounts every other mount point read-only;
   (the interpreter's installation is bound read-only into it, at ``.python``);
3. forks the worker, which drops to an unprivileged user id of its own (no capabilities, so it
   cannot undo the mounts, and ``RLIMIT_NPROC`` bounds its processes), sets resource limits and
   ``no_new_privs``, and execs ``python -I program.py``;
4. waits for the worker and exits with its status. When PID 1 exits, the kernel kills every
   other process of the namespace, detached or not; the parent kills PID 1 on a timeout.

Usage: ``python -I -S sandbox_init.py WORKDIR UID MAX_PROCESSES CPU_SECONDS MEMORY_BYTES FILE_BYTES TMPFS_BYTES``.
Setup failures exit with status 125 and one ``sandbox: ...`` line on stderr.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

SETUP_FAILED = 125
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_NO_NEW_PRIVS = 38
PROGRAM = "program.py"
PYTHON = ".python"  # the interpreter's installation, bound read-only into the work directory

libc = ctypes.CDLL(None, use_errno=True)


def fail(message: str) -> None:
    os.write(2, f"sandbox: {message}\n".encode())
    os._exit(SETUP_FAILED)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        fail(f"mount {target}: {os.strerror(err)}")


def mount_points() -> list[tuple[str, int]]:
    """(mount point, its per-mount flags) from /proc/self/mountinfo, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040
            flags = sum(MOUNT_FLAGS.get(option, 0) for option in fields[5].split(","))
            out.append((point, flags))
    return out


def seal_filesystem(workdir: str, tmpfs_bytes: int) -> None:
    with open(os.path.join(workdir, PROGRAM), "rb") as handle:
        program = handle.read()
    mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},nr_inodes=1024,mode=0777")
    # The worker's user id may not reach the interpreter where it is installed (e.g. under a 0700
    # /root): give it the installation at a path of its own.
    os.mkdir(os.path.join(workdir, PYTHON))
    mount(os.path.realpath(sys.base_prefix), os.path.join(workdir, PYTHON), None, MS_BIND | MS_REC)
    for point, flags in mount_points():
        if point == workdir:
            continue
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    with open(os.path.join(workdir, PROGRAM), "wb") as handle:
        handle.write(program)


def worker(workdir: str, uid: int, max_processes: int, cpu: int, memory: int, file_bytes: int) -> None:
    """The child: drop privileges, limit resources, exec the program (never returns)."""
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        for limit, value in ((resource.RLIMIT_NPROC, max_processes), (resource.RLIMIT_CPU, cpu),
                             (resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, file_bytes),
                             (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(limit, (value, value))
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            fail("prctl(no_new_privs) failed")
        os.chdir(workdir)
        python = os.path.join(workdir, PYTHON, os.path.relpath(os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)))
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "HOME": workdir, "TMPDIR": workdir,
               "LD_LIBRARY_PATH": os.path.join(workdir, PYTHON, "lib")}  # before a RUNPATH into the original place
        os.execve(python, [python, "-I", PROGRAM], env)
    except OSError as exc:
        fail(f"cannot start the program: {exc}")


def main() -> None:
    workdir = sys.argv[1]
    uid, max_processes, cpu, memory, file_bytes, tmpfs_bytes = map(int, sys.argv[2:8])
    if os.getpid() != 1:
        fail("not the init of a new PID namespace")
    seal_filesystem(workdir, tmpfs_bytes)
    child = os.fork()
    if child == 0:
        worker(workdir, uid, max_processes, cpu, memory, file_bytes)
    while True:  # reap orphans until the worker itself ends
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as shells report it


if __name__ == "__main__":
    main()
